//! Batch parameters, read from a request body or from an upload's object metadata, with
//! every problem collected and named.

use super::{DEFAULT_ITEMS_PER_BATCH, DEFAULT_PARALLELISM, MAX_ITEMS_PER_BATCH, MAX_PARALLELISM};
use crate::domain::{ExecutorSpec, Priority, Title};
use crate::error::FieldErrors;
use serde_json::{json, Value};

/// Batch parameters, from a request body or from object metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchParams {
    pub title: Option<String>,
    pub parallelism: u32,
    pub tolerated_failure_percentage: f64,
    pub priority: Priority,
    pub executor: ExecutorSpec,
    pub items_per_batch: u32,
}

impl Default for BatchParams {
    fn default() -> Self {
        Self {
            title: None,
            parallelism: DEFAULT_PARALLELISM,
            tolerated_failure_percentage: 0.0,
            priority: Priority::Background,
            executor: ExecutorSpec {
                kind: "echo".into(),
                config: json!({}),
            },
            items_per_batch: DEFAULT_ITEMS_PER_BATCH,
        }
    }
}

/// Where batch parameters come from: a JSON body, or S3 object metadata (text only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ParamSource {
    Body,
    Metadata,
}

/// Reads the parameters, collecting problems. Metadata values are text: numbers are numeric
/// strings and `executor` is JSON text. A body must use JSON numbers and an object.
pub(super) fn read_params(
    get: &dyn Fn(&str) -> Option<Value>,
    errors: &mut FieldErrors,
    names: &dyn Fn(&str) -> String,
    source: ParamSource,
) -> BatchParams {
    let mut params = BatchParams::default();
    let number = |v: &Value| match source {
        ParamSource::Body => v.as_f64(),
        ParamSource::Metadata => v.as_str().and_then(|s| s.trim().parse().ok()),
    };
    if let Some(v) = get("title") {
        match v.as_str().map(Title::parse) {
            Some(Ok(t)) => params.title = Some(t.as_str().to_owned()),
            _ => errors.add(names("title"), "must be 1–200 characters"),
        }
    }
    if let Some(v) = get("parallelism") {
        match number(&v) {
            Some(n) if n.fract() == 0.0 && (1.0..=f64::from(MAX_PARALLELISM)).contains(&n) => {
                params.parallelism = n as u32
            }
            _ => errors.add(
                names("parallelism"),
                format!("must be a whole number from 1 to {MAX_PARALLELISM}"),
            ),
        }
    }
    if let Some(v) = get("toleratedFailurePercentage") {
        match number(&v) {
            // Stored on the batch: DynamoDB holds no magnitude below 1e-130.
            Some(n) if (0.0..=100.0).contains(&n) && (n == 0.0 || n >= 1e-130) => {
                params.tolerated_failure_percentage = n
            }
            _ => errors.add(
                names("toleratedFailurePercentage"),
                "must be a number from 0 to 100 (0, or at least 1e-130)",
            ),
        }
    }
    if let Some(v) = get("itemsPerBatch") {
        match number(&v) {
            Some(n) if n.fract() == 0.0 && (1.0..=f64::from(MAX_ITEMS_PER_BATCH)).contains(&n) => {
                params.items_per_batch = n as u32
            }
            _ => errors.add(
                names("itemsPerBatch"),
                format!("must be a whole number from 1 to {MAX_ITEMS_PER_BATCH}"),
            ),
        }
    }
    if let Some(v) = get("priority") {
        match v.as_str().map(str::parse::<Priority>) {
            Some(Ok(p)) => params.priority = p,
            Some(Err(e)) => errors.add(names("priority"), e),
            None => errors.add(names("priority"), "must be a string"),
        }
    }
    if let Some(v) = get("executor") {
        let v = match (source, v) {
            (ParamSource::Metadata, Value::String(text)) => {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            (_, other) => other,
        };
        match crate::service::input::parse_executor(&v) {
            Ok(spec) => params.executor = spec,
            Err(problem) if problem.starts_with("config ") => {
                errors.add(names("executor"), problem)
            }
            Err(_) => errors.add(
                names("executor"),
                "must be {\"type\": \"echo|http|sleep\", \"config\": {…}} and nothing else",
            ),
        }
    }
    params
}
