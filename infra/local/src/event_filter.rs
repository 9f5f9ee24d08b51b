//! Lambda event filtering (`FilterCriteria`) for the local stream mapping: the subset of
//! EventBridge pattern syntax the template uses, evaluated on a record as Lambda sees it.
//!
//! A pattern is an object whose leaves are arrays of matchers; a record matches when every
//! key of the pattern matches (an object key recursively, an array leaf when any matcher
//! matches the value there). Matchers: a literal (string, number, boolean, null),
//! `{"anything-but": literal | [literals]}`, `{"prefix": "…"}`, `{"exists": bool}`.
//! A record matches the criteria when any filter matches; no filters means every record.

use serde_json::Value;

/// Whether `record` passes `filters` (any of them; all when there are none).
pub fn passes(filters: &[Value], record: &Value) -> bool {
    filters.is_empty() || filters.iter().any(|f| matches(f, Some(record)))
}

fn matches(pattern: &Value, value: Option<&Value>) -> bool {
    match pattern {
        Value::Object(fields) => fields
            .iter()
            .all(|(key, sub)| matches(sub, value.and_then(|v| v.get(key)))),
        Value::Array(matchers) => matchers.iter().any(|m| leaf(m, value)),
        // A bare literal is not valid pattern syntax: nothing matches it.
        _ => false,
    }
}

fn leaf(matcher: &Value, value: Option<&Value>) -> bool {
    match matcher {
        Value::Object(op) => {
            if let Some(exists) = op.get("exists").and_then(Value::as_bool) {
                return value.is_some() == exists;
            }
            let Some(value) = value else {
                return false;
            };
            if let Some(excluded) = op.get("anything-but") {
                return match excluded {
                    Value::Array(list) => !list.contains(value),
                    single => single != value,
                };
            }
            if let Some(prefix) = op.get("prefix").and_then(Value::as_str) {
                return value.as_str().is_some_and(|s| s.starts_with(prefix));
            }
            false
        }
        literal => value == Some(literal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(event: &str, old: Option<&str>, new: &str) -> Value {
        let mut dynamodb = json!({"NewImage": {"entity": {"S": "task"}, "status": {"S": new}}});
        if let Some(old) = old {
            dynamodb["OldImage"] = json!({"entity": {"S": "task"}, "status": {"S": old}});
        }
        json!({"eventName": event, "dynamodb": dynamodb})
    }

    #[test]
    fn literals_anything_but_prefix_and_exists() {
        let changed = vec![json!({"eventName": ["MODIFY"], "dynamodb": {
            "NewImage": {"status": {"S": ["queued"]}},
            "OldImage": {"status": {"S": [{"anything-but": ["queued"]}]}}}})];
        assert!(passes(
            &changed,
            &record("MODIFY", Some("pending"), "queued")
        ));
        assert!(!passes(
            &changed,
            &record("MODIFY", Some("queued"), "queued")
        ));
        assert!(!passes(&changed, &record("INSERT", None, "queued")));
        assert!(!passes(
            &changed,
            &record("MODIFY", Some("pending"), "running")
        ));

        let prefix = json!({"dynamodb": {"NewImage": {"status": {"S": [{"prefix": "que"}]}}}});
        assert!(passes(&[prefix], &record("INSERT", None, "queued")));
        let absent = vec![json!({"dynamodb": {"OldImage": [{"exists": false}]}})];
        assert!(passes(&absent, &record("INSERT", None, "queued")));
        assert!(!passes(&absent, &record("MODIFY", Some("a"), "queued")));
        let single = json!({"eventName": [{"anything-but": "REMOVE"}]});
        assert!(passes(&[single], &record("INSERT", None, "x")));
    }

    #[test]
    fn any_filter_passes_and_none_means_all() {
        let insert = json!({"eventName": ["INSERT"]});
        let remove = json!({"eventName": ["REMOVE"]});
        assert!(passes(
            &[remove.clone(), insert],
            &record("INSERT", None, "x")
        ));
        assert!(!passes(&[remove], &record("INSERT", None, "x")));
        assert!(passes(&[], &record("MODIFY", Some("x"), "x")));
    }
}
