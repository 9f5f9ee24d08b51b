use super::{number, only_fields, ExecError, Executor, Job, Outcome, WorkUnit};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;

const DEFAULT_TIMEOUT_SECONDS: f64 = 10.0;
const MAX_TIMEOUT_SECONDS: f64 = 60.0;
/// Larger responses would not fit on the task item.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// POSTs `{"taskId", "attempt", "input"}` to `config.url`, plus what part of the task runs:
/// `dispatchId` for a whole task, `step` for a chain step, `itemIndex` for a batch item.
/// 2xx: the response body is the result. 5xx, timeouts and connection errors are retried;
/// 4xx are not.
pub struct Http {
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self { client }
    }
}

fn settings(config: &Value) -> Result<(reqwest::Url, Duration), String> {
    only_fields(config, &["url", "timeoutSeconds"])?;
    let raw = config
        .get("url")
        .and_then(Value::as_str)
        .ok_or("url is required (an http or https URL)")?;
    let url = reqwest::Url::parse(raw).map_err(|_| format!("url '{raw}' is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url must be http or https, not '{}'", url.scheme()));
    }
    let timeout = number(config, "timeoutSeconds")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(0.1..=MAX_TIMEOUT_SECONDS).contains(&timeout) {
        return Err(format!(
            "timeoutSeconds must be from 0.1 to {MAX_TIMEOUT_SECONDS}"
        ));
    }
    Ok((url, Duration::from_secs_f64(timeout)))
}

/// The request body: the run's identity and its input.
fn payload(job: &Job<'_>) -> Value {
    let mut payload = json!({"taskId": job.task_id, "attempt": job.attempt, "input": job.input});
    let (field, unit) = match job.unit {
        WorkUnit::Task { dispatch_id } => ("dispatchId", json!(dispatch_id)),
        WorkUnit::Step { name } => ("step", json!(name)),
        WorkUnit::Item { index } => ("itemIndex", json!(index)),
    };
    payload[field] = unit;
    payload
}

#[async_trait]
impl Executor for Http {
    fn validate(&self, config: &Value) -> Result<(), String> {
        settings(config).map(|_| ())
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        let (url, timeout) = settings(job.config).map_err(ExecError::Permanent)?;
        let payload = payload(job);
        let response = self
            .client
            .post(url.clone())
            .timeout(timeout)
            .json(&payload)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                ExecError::Retryable(format!("POST {url} {what}: {e}"))
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ExecError::Retryable(format!("reading the response of {url}: {e}")))?;
        if status.is_server_error() {
            return Err(ExecError::Retryable(format!(
                "POST {url} returned {status}"
            )));
        }
        if !status.is_success() {
            let excerpt: String = String::from_utf8_lossy(&body).chars().take(200).collect();
            return Err(ExecError::Permanent(format!(
                "POST {url} returned {status}: {excerpt}"
            )));
        }
        if body.len() > MAX_RESPONSE_BYTES {
            return Err(ExecError::Permanent(format!(
                "POST {url} returned {} bytes; results are limited to {MAX_RESPONSE_BYTES}",
                body.len()
            )));
        }
        let result = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Outcome::Done(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

    #[test]
    fn the_payload_names_the_unit_of_work() {
        let task_id = TaskId::generate();
        let input = json!({"n": 1});
        let job = |unit| Job {
            task_id,
            unit,
            config: &Value::Null,
            input: &input,
            attempt: 2,
        };
        let body = payload(&job(WorkUnit::Task { dispatch_id: "d-1" }));
        assert_eq!(
            body,
            json!({"taskId": task_id, "attempt": 2, "input": {"n": 1}, "dispatchId": "d-1"})
        );
        assert_eq!(
            payload(&job(WorkUnit::Step { name: "sign" }))["step"],
            "sign"
        );
        assert_eq!(payload(&job(WorkUnit::Item { index: 7 }))["itemIndex"], 7);
    }
}
