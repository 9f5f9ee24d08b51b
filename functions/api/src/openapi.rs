//! The OpenAPI 3.1 document, served at `GET /api/openapi.json`.

use serde_json::Value;
use std::sync::OnceLock;

const SOURCE: &str = include_str!("../openapi.json");

pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::from_str(SOURCE).expect("openapi.json is valid JSON (checked by tests)")
    })
}
