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

    /// Only an explicit timeoutSeconds: the 10 s default fits any lease a deployment uses
    /// (test stacks run with 10 s leases and rely on quick receivers).
    fn max_run(&self, config: &Value) -> Option<(&'static str, Duration)> {
        config.get("timeoutSeconds").filter(|v| !v.is_null())?;
        let (_, timeout) = settings(config).ok()?;
        Some(("timeoutSeconds", timeout))
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
        if status.is_server_error() {
            return Err(ExecError::Retryable(format!(
                "POST {url} returned {status}"
            )));
        }
        let body = read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| ExecError::Retryable(format!("reading the response of {url}: {e}")))?;
        if !status.is_success() {
            let excerpt: String = String::from_utf8_lossy(body.bytes())
                .chars()
                .take(200)
                .collect();
            return Err(ExecError::Permanent(format!(
                "POST {url} returned {status}: {excerpt}"
            )));
        }
        let Capped::Whole(body) = body else {
            return Err(ExecError::Permanent(format!(
                "POST {url} returned more than {MAX_RESPONSE_BYTES} bytes (64 KiB); \
                 results are limited to {MAX_RESPONSE_BYTES} bytes"
            )));
        };
        let result = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Outcome::Done(result))
    }
}

/// A response body read up to a limit.
enum Capped {
    Whole(Vec<u8>),
    /// The body is longer than the limit: these are its first bytes, and the rest was never read.
    Cut(Vec<u8>),
}

impl Capped {
    fn bytes(&self) -> &[u8] {
        match self {
            Capped::Whole(bytes) | Capped::Cut(bytes) => bytes,
        }
    }
}

/// Reads at most `limit` bytes of the body. A receiver may answer with any length, or without
/// end, so the body is never read whole first: reading stops, and the connection is dropped, at
/// the first chunk that passes the limit.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Capped, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Cut(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(body))
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

    /// What the loopback receiver answers.
    enum Answer {
        /// This status and body, with its Content-Length.
        Fixed(u16, Vec<u8>),
        /// This status and a chunked body that never ends.
        Endless(u16),
    }

    /// A one-request receiver on 127.0.0.1. The handle yields how many body bytes it wrote
    /// before the client went away.
    async fn receiver(answer: Answer) -> (String, tokio::task::JoinHandle<u64>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            // Read the whole request first, so closing never resets it unread.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let head_end = loop {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before sending its request");
                request.extend_from_slice(&buf[..n]);
                if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while request.len() < head_end + length {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0);
                request.extend_from_slice(&buf[..n]);
            }
            match answer {
                Answer::Fixed(status, body) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    socket.write_all(head.as_bytes()).await.unwrap();
                    let _ = socket.write_all(&body).await;
                    body.len() as u64
                }
                Answer::Endless(status) => {
                    let head = format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n");
                    socket.write_all(head.as_bytes()).await.unwrap();
                    let chunk = [
                        format!("{:x}\r\n", 16 * 1024).into_bytes(),
                        vec![b'x'; 16 * 1024],
                        b"\r\n".to_vec(),
                    ]
                    .concat();
                    let mut written = 0u64;
                    // Writing fails once the client has dropped the connection.
                    while socket.write_all(&chunk).await.is_ok() {
                        written += 16 * 1024;
                    }
                    written
                }
            }
        });
        (url, server)
    }

    async fn post(url: &str) -> Result<Outcome, ExecError> {
        let config = json!({"url": url, "timeoutSeconds": 30});
        let input = json!({});
        let job = Job {
            task_id: TaskId::generate(),
            unit: WorkUnit::Task { dispatch_id: "d-1" },
            config: &config,
            input: &input,
            attempt: 1,
        };
        Http::new().run(&job).await
    }

    #[tokio::test]
    async fn an_endless_body_fails_the_run_at_the_limit_without_being_read() {
        let (url, server) = receiver(Answer::Endless(200)).await;
        // Read whole, this body would only end at the 30 s request timeout, as a retryable error.
        let outcome = post(&url).await;
        let Err(ExecError::Permanent(error)) = outcome else {
            panic!("expected a permanent error, got {outcome:?}");
        };
        assert!(
            error.contains("more than 65536 bytes") && error.contains("64 KiB"),
            "the error names the limit: {error}"
        );
        // The client dropped the connection: the receiver stopped with what the socket buffers
        // took, nowhere near what 30 s of loopback would carry.
        let written = server.await.unwrap();
        assert!(written < 64 * 1024 * 1024, "{written} bytes were sent");
    }

    #[tokio::test]
    async fn a_body_at_the_limit_is_the_result_and_one_byte_more_is_refused() {
        let (url, _server) = receiver(Answer::Fixed(200, vec![b'a'; MAX_RESPONSE_BYTES])).await;
        let Ok(Outcome::Done(Value::String(result))) = post(&url).await else {
            panic!("a 64 KiB body is a result");
        };
        assert_eq!(result.len(), MAX_RESPONSE_BYTES);

        let (url, _server) = receiver(Answer::Fixed(200, vec![b'a'; MAX_RESPONSE_BYTES + 1])).await;
        let outcome = post(&url).await;
        assert!(
            matches!(&outcome, Err(ExecError::Permanent(e)) if e.contains("limited to 65536 bytes")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_refusal_with_an_endless_body_gives_an_excerpt() {
        let (url, _server) = receiver(Answer::Endless(422)).await;
        let outcome = post(&url).await;
        let Err(ExecError::Permanent(error)) = outcome else {
            panic!("expected a permanent error, got {outcome:?}");
        };
        assert!(error.contains("422"), "{error}");
        assert!(error.ends_with(&"x".repeat(200)), "{error}");
    }

    #[tokio::test]
    async fn a_server_error_is_retried_without_reading_its_body() {
        let (url, _server) = receiver(Answer::Endless(503)).await;
        let outcome = post(&url).await;
        assert!(
            matches!(&outcome, Err(ExecError::Retryable(e)) if e.contains("503")),
            "{outcome:?}"
        );
    }
}
