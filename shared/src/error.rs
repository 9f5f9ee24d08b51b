//! Typed errors for everything the domain can refuse. Each variant knows its
//! HTTP status and stable error code; the API maps them to responses in one place.

use std::collections::BTreeMap;
use std::fmt;

/// Field name -> what is wrong with it. Ordered so messages are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(BTreeMap<String, String>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.0.entry(field.into()).or_insert_with(|| problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// Collects the error of a parse result under `field`, returning the value if it parsed.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problem) => {
                self.add(field, problem);
                None
            }
        }
    }

    /// `Ok(())` when nothing was collected, otherwise a validation error naming every field.
    pub fn into_result(self) -> Result<(), AppError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self))
        }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        f.write_str(&parts.join("; "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("validation failed: {0}")]
    Validation(FieldErrors),
    #[error("missing or invalid identity")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("cannot move task from '{current}' to '{requested}'")]
    InvalidTransition { current: String, requested: String },
    #[error("{0}")]
    Conflict(String),
    #[error("the task was changed by someone else (expected version {expected}, current version {current})")]
    VersionConflict { expected: u64, current: u64 },
    #[error("Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("request body is {size} bytes; the limit is {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("content type must be application/json, got '{0}'")]
    UnsupportedMediaType(String),
    /// Something outside the caller's control failed (AWS, a bug). Never shown to clients.
    #[error("internal error: {0}")]
    Internal(String),
    /// A dependency is briefly unavailable; the request can be retried as is.
    #[error("service temporarily unavailable: {0}")]
    Unavailable(String),
    /// The agency used up one of its quotas; the same request may pass after `retry_after_seconds`.
    #[error("{detail}")]
    QuotaExceeded {
        /// The quota's stable name (`requestRate`, `batchItemsPerDay`).
        quota: &'static str,
        limit: u64,
        retry_after_seconds: u64,
        detail: String,
    },
}

impl AppError {
    pub fn internal(context: impl fmt::Display) -> Self {
        AppError::Internal(context.to_string())
    }

    pub fn status_code(&self) -> u16 {
        match self {
            AppError::MalformedJson(_) | AppError::Validation(_) => 400,
            AppError::Unauthorized => 401,
            AppError::Forbidden(_) => 403,
            AppError::NotFound { .. } | AppError::NoRoute { .. } => 404,
            AppError::MethodNotAllowed { .. } => 405,
            AppError::InvalidTransition { .. }
            | AppError::Conflict(_)
            | AppError::VersionConflict { .. } => 409,
            AppError::PayloadTooLarge { .. } => 413,
            AppError::UnsupportedMediaType(_) => 415,
            AppError::IdempotencyKeyReused => 422,
            AppError::QuotaExceeded { .. } => 429,
            AppError::Internal(_) => 500,
            AppError::Unavailable(_) => 503,
        }
    }

    /// Stable, machine-readable code for the `error.code` field.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::MalformedJson(_) => "malformed_json",
            AppError::Validation(_) => "validation_failed",
            AppError::Unauthorized => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound { .. } => "not_found",
            AppError::NoRoute { .. } => "no_route",
            AppError::MethodNotAllowed { .. } => "method_not_allowed",
            AppError::InvalidTransition { .. } => "invalid_transition",
            AppError::Conflict(_) => "conflict",
            AppError::VersionConflict { .. } => "version_conflict",
            AppError::IdempotencyKeyReused => "idempotency_key_reused",
            AppError::PayloadTooLarge { .. } => "payload_too_large",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::QuotaExceeded { .. } => "quota_exceeded",
            AppError::Internal(_) => "internal_error",
            AppError::Unavailable(_) => "service_unavailable",
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AppError::Unavailable(_))
    }

    /// Seconds a client should wait before trying again, when waiting helps.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        match self {
            AppError::Unavailable(_) => Some(1),
            AppError::QuotaExceeded {
                retry_after_seconds,
                ..
            } => Some((*retry_after_seconds).max(1)),
            _ => None,
        }
    }
}
