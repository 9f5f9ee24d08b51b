//! What DynamoDB can store of a JSON value. Map keys must not be empty and numbers must be 0
//! or have a magnitude from 1e-130 to below 1e126. The API refuses anything else with a 400
//! naming the field. Without this check the write itself would fail (a 500).

use serde_json::Value;

const SMALLEST: f64 = 1e-130;
const TOO_LARGE: f64 = 1e126;

/// `Ok` when every key and number in `value` can be stored; otherwise what and where.
pub fn check(value: &Value) -> Result<(), String> {
    walk(value, "")
}

/// [`check`] for an object already taken apart, such as a task's metadata.
pub fn check_object(map: &serde_json::Map<String, Value>) -> Result<(), String> {
    walk_object(map, "")
}

/// Why an executor's result cannot be recorded on its task or step, if it cannot.
pub fn result_problem(result: &Value) -> Option<String> {
    use super::limits::MAX_RESULT_BYTES;
    let size = serde_json::to_vec(result)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_RESULT_BYTES {
        return Some(format!(
            "result is {size} bytes; the limit is {MAX_RESULT_BYTES}"
        ));
    }
    check(result)
        .err()
        .map(|problem| format!("result {problem}"))
}

fn walk(value: &Value, at: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => walk_object(map, at),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, inner)| walk(inner, &format!("{at}[{i}]"))),
        Value::Number(n) => {
            let magnitude = n.as_f64().unwrap_or(0.0).abs();
            if magnitude != 0.0 && !(SMALLEST..TOO_LARGE).contains(&magnitude) {
                return Err(format!(
                    "has the number {n} at {}; numbers must be 0 or from 1e-130 to 1e125 in magnitude",
                    place(at)
                ));
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

fn walk_object(map: &serde_json::Map<String, Value>, at: &str) -> Result<(), String> {
    map.iter().try_for_each(|(key, inner)| {
        if key.is_empty() {
            return Err(format!("has an empty key at {}", place(at)));
        }
        walk(inner, &format!("{at}.{key}"))
    })
}

fn place(at: &str) -> &str {
    if at.is_empty() {
        "the top level"
    } else {
        at.trim_start_matches('.')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ordinary_json_is_storable() {
        let value = json!({"a": [1, -2.5, 0, 1e125, -1e-130, null, true, "x"], "b": {"c": {}}});
        assert_eq!(check(&value), Ok(()));
        assert_eq!(check(&json!(0.0)), Ok(()));
    }

    #[test]
    fn empty_keys_and_numbers_out_of_range_are_named() {
        let nested_key = check(&json!({"a": {"b": [{"": 1}]}})).unwrap_err();
        assert!(nested_key.contains("empty key at a.b[0]"), "{nested_key}");
        let top_key = check(&json!({"": 1})).unwrap_err();
        assert!(top_key.contains("the top level"), "{top_key}");
        let tiny = check(&json!({"x": [-1.1125369292536007e-306]})).unwrap_err();
        assert!(tiny.contains("at x[0]"), "{tiny}");
        assert!(check(&json!(1e126)).is_err());
        assert!(check(&json!(-1e200)).is_err());
    }
}
