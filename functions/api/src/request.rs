//! Reading what a request carries: JSON bodies (with size and content-type
//! checks), conditional headers, idempotency keys and query strings.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};
use serde_json::Value;
use shared::domain::limits::{MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY_CHARS};
use shared::{AppError, FieldErrors};
use std::collections::HashMap;

pub fn request_id(request: &Request) -> String {
    match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.request_id.clone(),
        _ => None,
    }
    .or_else(|| request.lambda_context_ref().map(|c| c.request_id.clone()))
    .unwrap_or_else(|| "unknown".to_owned())
}

/// The JSON body; an empty body reads as `{}` where `empty_is_object` allows it.
pub fn json_body(request: &Request, empty_is_object: bool) -> Result<Value, AppError> {
    let bytes: &[u8] = request.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(AppError::PayloadTooLarge {
            size: bytes.len(),
            limit: MAX_BODY_BYTES,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if empty_is_object {
            return Ok(Value::Object(Default::default()));
        }
        let mut errors = FieldErrors::new();
        errors.add("body", "a JSON object is required");
        return Err(AppError::Validation(errors));
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(AppError::UnsupportedMediaType(content_type.to_owned()));
    }
    let mut body: Value =
        serde_json::from_slice(bytes).map_err(|e| AppError::MalformedJson(e.to_string()))?;
    whole_numbers_as_integers(&mut body);
    Ok(body)
}

/// JSON does not tell 2 from 2.0, and the document's `integer` fields take both (JSON Schema
/// counts a number without a fraction as an integer), while the parsers read integers. So a
/// whole number written with a fraction becomes an integer here, once, for every field. Past
/// 2^53 a float is not exact, and stays as it is (every integer field is bounded far below).
fn whole_numbers_as_integers(value: &mut Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match value {
        Value::Number(number) if number.is_f64() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            if float.fract() == 0.0 && float.abs() < EXACT {
                *value = if float >= 0.0 {
                    Value::from(float as u64)
                } else {
                    Value::from(float as i64)
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// `If-Match: "3"` → Some(3). `*` or no header → None. Anything else is a 400.
pub fn if_match(request: &Request) -> Result<Option<u64>, AppError> {
    let Some(raw) = request.headers().get("if-match") else {
        return Ok(None);
    };
    let raw = raw.to_str().unwrap_or("").trim();
    if raw == "*" {
        return Ok(None);
    }
    // `"3"` and `W/"3"` as sent back from an ETag, or a bare `3` typed by hand.
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    let version = if digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<u64>().ok()
    } else {
        None
    };
    version.map(Some).ok_or_else(|| {
        let mut errors = FieldErrors::new();
        errors.add(
            "If-Match",
            "must be an ETag returned by this API, e.g. \"3\"",
        );
        AppError::Validation(errors)
    })
}

pub fn idempotency_key(request: &Request) -> Result<Option<String>, AppError> {
    let Some(raw) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_CHARS => {
            Ok(Some(key.to_owned()))
        }
        _ => {
            let mut errors = FieldErrors::new();
            errors.add(
                "Idempotency-Key",
                format!("must be 1–{MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"),
            );
            Err(AppError::Validation(errors))
        }
    }
}

pub fn query_params(request: &Request) -> HashMap<String, String> {
    request
        .query_string_parameters_ref()
        .map(|q| {
            q.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}
