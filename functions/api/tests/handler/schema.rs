//! JSON Schema validation against openapi.json (the `jsonschema` crate,
//! draft 2020-12 as OpenAPI 3.1 uses), plus helpers to find operations and
//! responses in the document.

use jsonschema::{Draft, Registry, Validator};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The URI the document is registered under; its local `$ref`s are rewritten
/// to point into it, so a schema taken from anywhere in the document resolves.
const DOC_URI: &str = "urn:taskflow:openapi";

/// Every keyword the document may use: draft 2020-12's and OpenAPI's own
/// annotations. A misspelt keyword would otherwise be silently ignored.
const KEYWORDS: &[&str] = &[
    "$ref",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "dependentRequired",
    "items",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "maxProperties",
    "minProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "pattern",
    "format",
    "not",
    "oneOf",
    "anyOf",
    "allOf",
    "if",
    "then",
    "else",
    "description",
    "examples",
    "default",
    "deprecated",
];
/// Keywords whose value is one schema.
const SUBSCHEMA: &[&str] = &["items", "not", "propertyNames", "if", "then", "else"];
/// Keywords whose value is a list of schemas.
const SUBSCHEMA_LISTS: &[&str] = &["oneOf", "anyOf", "allOf"];

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

fn registry() -> &'static Registry<'static> {
    static REGISTRY: OnceLock<Registry<'static>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::new()
            .draft(Draft::Draft202012)
            .add(DOC_URI, doc())
            .and_then(|builder| builder.prepare())
            .expect("openapi.json registers as a JSON Schema resource")
    })
}

/// `schema` with every local `$ref` pointing into the registered document.
fn anchored(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| match (key.as_str(), value) {
                ("$ref", Value::String(r)) if r.starts_with('#') => {
                    (key.clone(), Value::String(format!("{DOC_URI}{r}")))
                }
                _ => (key.clone(), anchored(value)),
            })
            .collect(),
        Value::Array(items) => items.iter().map(anchored).collect(),
        other => other.clone(),
    }
}

/// A validator for `schema` (a part of the document, or one built from its
/// parts), compiled once: formats are asserted, unknown formats are errors.
pub fn validator(schema: &Value) -> Arc<Validator> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Validator>>>> = OnceLock::new();
    let key = schema.to_string();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().expect("cache lock").get(&key) {
        return found.clone();
    }
    let built = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(registry())
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .build(&anchored(schema))
        .unwrap_or_else(|e| panic!("schema does not compile: {e}\nschema: {schema:#}"));
    let built = Arc::new(built);
    cache.lock().expect("cache lock").insert(key, built.clone());
    built
}

/// Every problem of `instance` against `schema`; empty when it conforms.
pub fn problems(schema: &Value, instance: &Value) -> Vec<String> {
    validator(schema)
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[track_caller]
pub fn assert_valid(schema: &Value, instance: &Value, what: &str) {
    let found = problems(schema, instance);
    assert!(
        found.is_empty(),
        "{what} does not match its schema:\n  {}\ninstance: {instance:#}",
        found.join("\n  ")
    );
}

/// Walks a schema as written, failing on keywords outside `KEYWORDS` and on
/// dangling references, and compiles it; returns the number of schemas visited.
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
            KEYWORDS.contains(&key.as_str()),
            "{at}: keyword {key} is not one the document uses; a typo?"
        );
        match key.as_str() {
            "properties" => {
                for (name, property) in value.as_object().expect("properties is an object") {
                    visited += lint(root, property, &format!("{at}.{name}"));
                }
            }
            "additionalProperties" if value.is_object() => {
                visited += lint(root, value, &format!("{at}.*"))
            }
            k if SUBSCHEMA.contains(&k) => visited += lint(root, value, &format!("{at}/{k}")),
            k if SUBSCHEMA_LISTS.contains(&k) => {
                for (i, branch) in value
                    .as_array()
                    .expect("a list of schemas")
                    .iter()
                    .enumerate()
                {
                    visited += lint(root, branch, &format!("{at}/{k}/{i}"));
                }
            }
            _ => {}
        }
    }
    let _ = validator(schema);
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
