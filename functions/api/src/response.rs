//! Building responses, and the one place where errors become HTTP.

use lambda_http::http::StatusCode;
use lambda_http::{Body, Response};
use serde_json::{json, Map, Value};
use shared::AppError;

pub fn json(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body.to_string()))
        .expect("static response parts are valid")
}

pub fn json_with_etag(status: u16, body: &Value, etag: &str) -> Response<Body> {
    let mut response = json(status, body);
    if let Ok(value) = etag.parse() {
        response.headers_mut().insert("etag", value);
    }
    response
}

/// 202 Accepted: the work is queued; `location` is where to watch it.
pub fn accepted(body: &Value, location: &str) -> Response<Body> {
    let mut response = json(202, body);
    if let Ok(value) = location.parse() {
        response.headers_mut().insert("location", value);
    }
    response
}

pub fn no_content() -> Response<Body> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::Empty)
        .expect("static response parts are valid")
}

/// `{"error": {"code", "message", "fields"}}` for every failure. Internal
/// details are logged with the request id and never sent to the client.
pub fn error(err: &AppError, request_id: &str) -> Response<Body> {
    let status = err.status_code();
    let mut fields = Map::new();
    let message = match err {
        AppError::Internal(detail) => {
            tracing::error!(request_id, error = %detail, "request failed");
            format!("internal error; quote request id {request_id} when reporting it")
        }
        AppError::Unavailable(detail) => {
            tracing::warn!(request_id, error = %detail, "dependency unavailable");
            "the service is briefly unavailable; retry the request".to_owned()
        }
        other => {
            tracing::info!(request_id, status, code = other.code(), error = %other, "request refused");
            other.to_string()
        }
    };
    match err {
        AppError::Validation(errors) => {
            for (field, problem) in errors.iter() {
                fields.insert(field.clone(), Value::String(problem.clone()));
            }
        }
        AppError::InvalidTransition { current, requested } => {
            fields.insert("currentStatus".into(), json!(current));
            fields.insert("requestedStatus".into(), json!(requested));
        }
        AppError::VersionConflict { expected, current } => {
            fields.insert("expectedVersion".into(), json!(expected));
            fields.insert("currentVersion".into(), json!(current));
        }
        AppError::QuotaExceeded { quota, limit, .. } => {
            fields.insert("quota".into(), json!(quota));
            fields.insert("limit".into(), json!(limit));
        }
        _ => {}
    }
    let body = json!({"error": {"code": err.code(), "message": message, "fields": fields}});
    let mut response = json(status, &body);
    if let AppError::MethodNotAllowed { path, .. } = err {
        // RFC 9110 §15.5.6: a 405 must say which methods the resource does support.
        let allow = crate::routes::allowed_methods(path).join(", ");
        if let Ok(value) = allow.parse() {
            response.headers_mut().insert("allow", value);
        }
    }
    if let Some(seconds) = err.retry_after_seconds() {
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}
