//! A small checker for the subset of JSON Schema that openapi.json uses, plus
//! helpers to find operations and responses in the document. A keyword the
//! checker does not know fails the test instead of being silently ignored.

use serde_json::Value;

/// Keywords `validate` enforces.
const CHECKED: &[&str] = &[
    "$ref",
    "type",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "maxLength",
    "minLength",
    "maxItems",
    "maxProperties",
    "minProperties",
    "minimum",
    "maximum",
    "pattern",
    "format",
    "not",
];
/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["description", "examples", "default", "deprecated"];

/// The OpenAPI document the API serves.
pub fn doc() -> &'static Value {
    api::openapi::document()
}

/// Follows `$ref`s (local JSON pointers only) to the value they name.
pub fn resolve<'a>(root: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let object = value.as_object().expect("a $ref lives in an object");
        assert_eq!(
            object.len(),
            1,
            "{reference}: siblings of $ref are not used"
        );
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference}: only local references are used"));
        value = root
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
    }
    value
}

/// `components.schemas.NAME`.
pub fn component(name: &str) -> &'static Value {
    doc()
        .pointer(&format!("/components/schemas/{name}"))
        .unwrap_or_else(|| panic!("no schema {name}"))
}

/// Every problem of `instance` against `schema`; empty when it conforms.
pub fn problems(root: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let mut out = Vec::new();
    validate(root, schema, instance, "$", &mut out);
    out
}

#[track_caller]
pub fn assert_valid(schema: &Value, instance: &Value, what: &str) {
    let found = problems(doc(), schema, instance);
    assert!(
        found.is_empty(),
        "{what} does not match its schema:\n  {}\ninstance: {instance:#}",
        found.join("\n  ")
    );
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        other => panic!("unknown type {other}"),
    }
}

/// The patterns the document uses, written out (no regex engine needed).
fn pattern_matches(pattern: &str, s: &str) -> bool {
    let token = |t: &str| {
        (1..=127).contains(&t.len())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    match pattern {
        "^[0-9A-HJKMNP-TV-Z]{26}$" => {
            s.len() == 26
                && s.chars()
                    .all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c))
        }
        "^[A-Za-z0-9._@:-]+$" => {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._@:-".contains(c))
        }
        "\\S" => s.chars().any(|c| !c.is_whitespace()),
        "^[A-Za-z0-9._:-]+$" => {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
        }
        "^(\\*|(W/)?\"[0-9]{1,19}\"|[0-9]{1,19})$" => {
            let digits =
                |d: &str| (1..=19).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit());
            let quoted = |q: &str| {
                q.strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .is_some_and(digits)
            };
            s == "*" || digits(s) || quoted(s.strip_prefix("W/").unwrap_or(s))
        }
        "^[^/\\\\]+$" => !s.is_empty() && !s.contains(['/', '\\']),
        "^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}$" => {
            matches!(s.split_once('/'), Some((a, b)) if token(a) && token(b))
        }
        "^\"[0-9]+\"$" => s
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())),
        other => panic!("pattern {other} has no check here; add one"),
    }
}

fn format_matches(format: &str, s: &str) -> bool {
    match format {
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "uri" => s
            .split_once(':')
            .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty()),
        other => panic!("format {other} has no check here; add one"),
    }
}

fn validate(root: &Value, schema: &Value, instance: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(root, schema);
    let Some(keywords) = schema.as_object() else {
        panic!("{at}: schema is not an object: {schema}");
    };
    for key in keywords.keys() {
        assert!(
            CHECKED.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str()),
            "{at}: keyword {key} is not supported by this checker"
        );
    }
    if let Some(forbidden) = schema.get("not") {
        if problems(root, forbidden, instance).is_empty() {
            out.push(format!(
                "{at}: {instance} matches a schema it must not (`not`)"
            ));
        }
    }
    let mut fail = |problem: String| out.push(format!("{at}: {problem}"));
    if let Some(types) = schema.get("type") {
        let names: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("{at}: bad type {other}"),
        };
        if !names.iter().any(|t| type_matches(t, instance)) {
            fail(format!("expected type {types}, got {instance}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(instance) {
            fail(format!("{instance} is not one of {allowed:?}"));
        }
    }
    let number = |k: &str| schema.get(k).and_then(Value::as_f64);
    let size = |k: &str| number(k).map(|n| n as usize);
    match instance {
        Value::String(s) => {
            let chars = s.chars().count();
            if size("maxLength").is_some_and(|max| chars > max) {
                fail(format!("{chars} characters is over maxLength"));
            }
            if size("minLength").is_some_and(|min| chars < min) {
                fail(format!("{chars} characters is under minLength"));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if !pattern_matches(p, s) {
                    fail(format!("{s:?} does not match {p}"));
                }
            }
            if let Some(f) = schema.get("format").and_then(Value::as_str) {
                if !format_matches(f, s) {
                    fail(format!("{s:?} is not a {f}"));
                }
            }
        }
        Value::Number(n) => {
            let n = n.as_f64().expect("finite");
            if number("minimum").is_some_and(|min| n < min) {
                fail(format!("{n} is under the minimum"));
            }
            if number("maximum").is_some_and(|max| n > max) {
                fail(format!("{n} is over the maximum"));
            }
        }
        Value::Array(items) => {
            if size("maxItems").is_some_and(|max| items.len() > max) {
                fail(format!("{} items is over maxItems", items.len()));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(root, item_schema, item, &format!("{at}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => {
            if size("maxProperties").is_some_and(|max| map.len() > max) {
                fail(format!("{} properties is over maxProperties", map.len()));
            }
            if size("minProperties").is_some_and(|min| map.len() < min) {
                fail(format!("{} properties is under minProperties", map.len()));
            }
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = name.as_str().expect("required names are strings");
                if !map.contains_key(name) {
                    fail(format!("required property {name} is missing"));
                }
            }
            let declared = schema.get("properties").and_then(Value::as_object);
            for (name, value) in map {
                let here = format!("{at}.{name}");
                match declared.and_then(|d| d.get(name)) {
                    Some(property) => validate(root, property, value, &here, out),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            out.push(format!("{here}: property is not declared"))
                        }
                        Some(Value::Bool(true)) | None => {}
                        Some(extra) => validate(root, extra, value, &here, out),
                    },
                }
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// Walks a schema as written, failing on keywords the checker does not know
/// and on dangling references; returns the number of schemas visited.
pub fn lint(root: &Value, schema: &Value, at: &str) -> usize {
    if let Some(reference) = schema.get("$ref") {
        let _ = resolve(root, schema);
        assert!(reference.is_string(), "{at}: $ref must be a string");
        return 1;
    }
    let keywords = schema
        .as_object()
        .unwrap_or_else(|| panic!("{at}: schema is not an object"));
    let mut visited = 1;
    for (key, value) in keywords {
        assert!(
            CHECKED.contains(&key.as_str()) || ANNOTATIONS.contains(&key.as_str()),
            "{at}: keyword {key} is not supported by the test's checker"
        );
        match key.as_str() {
            "properties" => {
                for (name, property) in value.as_object().expect("properties is an object") {
                    visited += lint(root, property, &format!("{at}.{name}"));
                }
            }
            "items" => visited += lint(root, value, &format!("{at}[]")),
            "not" => visited += lint(root, value, &format!("{at}!")),
            "additionalProperties" if value.is_object() => {
                visited += lint(root, value, &format!("{at}.*"))
            }
            "pattern" => {
                // Panics for a pattern without a check.
                pattern_matches(value.as_str().expect("pattern is a string"), "");
            }
            "format" => {
                format_matches(value.as_str().expect("format is a string"), "");
            }
            _ => {}
        }
    }
    visited
}

/// Every operation: (METHOD, path template, operation object).
pub fn operations(root: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in root["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if matches!(method.as_str(), "parameters" | "summary" | "description") {
                continue;
            }
            out.push((method.to_ascii_uppercase(), path.clone(), op));
        }
    }
    out
}

/// The path template a concrete path belongs to, if the document has one.
pub fn template_for(root: &Value, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    root["paths"].as_object()?.keys().find_map(|template| {
        let parts: Vec<&str> = template.split('/').collect();
        let fits = parts.len() == segments.len()
            && parts
                .iter()
                .zip(&segments)
                .all(|(p, s)| p.starts_with('{') || p == s);
        fits.then(|| template.clone())
    })
}

/// The operation serving `method` on a concrete path.
pub fn operation_for(method: &str, path: &str) -> Option<(String, &'static Value)> {
    let template = template_for(doc(), path)?;
    let op = doc()["paths"][&template].get(method.to_ascii_lowercase())?;
    Some((template, op))
}

/// The parameters that apply to an operation (path-level and its own), resolved.
pub fn parameters<'a>(root: &'a Value, template: &str, op: &'a Value) -> Vec<&'a Value> {
    let shared = root["paths"][template].get("parameters");
    shared
        .into_iter()
        .chain(op.get("parameters"))
        .flat_map(|list| list.as_array().expect("parameters is an array"))
        .map(|p| resolve(root, p))
        .collect()
}
