//! Cold start: each function's release binary started under a minimal local Lambda
//! Runtime API emulator, timed from process start to its first invocation answered.
//!
//! The emulator (the `runtime` module below) speaks the part of the Runtime API that
//! `lambda_runtime` 1.5 uses: `GET /2018-06-01/runtime/invocation/next` hands out one event
//! with the headers the client requires (`Lambda-Runtime-Aws-Request-Id`,
//! `Lambda-Runtime-Deadline-Ms`; also the function ARN and trace id), and the moment the
//! function posts `/invocation/{id}/response` (or `/invocation/{id}/error`) is the end of
//! the cold start. `/runtime/init/error`, or the process exiting first, is a failed
//! measurement. A second `next` poll is left pending: the process is killed once answered.
//!
//! Peak memory is `VmHWM` from `/proc/<pid>/status`, sampled while waiting (the process
//! may exit) and once more just before the kill. Binary size is the file size of the
//! (stripped, release-profile) binary.
//!
//! Function configuration: `measure` gives every variable `shared::config::Config` requires
//! a placeholder value and sets `AWS_ENDPOINT_URL` to the emulator itself, which refuses
//! every AWS call with a non-retryable `400` in microseconds; `env` (the resource names
//! and endpoints of a running local stack) overrides both. So with no stack the figures
//! exclude any backend latency; with one, the worker's first invocation includes a real
//! (cheap) DynamoDB lookup of a task that does not exist, and the sweeper's a real sweep.

use anyhow::{anyhow, bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

/// One function's cold start, medians over the runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ColdStart {
    pub function: String,
    pub binary_bytes: u64,
    pub peak_rss_kib: u64,
    pub first_response_ms: f64,
}

/// The functions measured, with the event each first invocation gets.
const FUNCTIONS: [&str; 6] = [
    "api",
    "worker",
    "sweeper",
    "batch-trigger",
    "schedule-runner",
    "event-publisher",
];

const API_EVENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/api-openapi.json"
));
const WORKER_EVENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/sqs-tier-message.json"
));
const SWEEPER_EVENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/scheduled-sweep.json"
));
const SCHEDULE_EVENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../events/schedule-firing.json"
));

/// How long one run may take before it counts as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `VmHWM` is sampled while waiting.
const RSS_POLL: Duration = Duration::from_millis(2);

/// The first invocation's event for `function`.
fn event_for(function: &str) -> anyhow::Result<Vec<u8>> {
    Ok(match function {
        "api" => API_EVENT.as_bytes().to_vec(),
        "worker" => WORKER_EVENT.as_bytes().to_vec(),
        "sweeper" => SWEEPER_EVENT.as_bytes().to_vec(),
        "schedule-runner" => SCHEDULE_EVENT.as_bytes().to_vec(),
        // A batch with no records: with the stub refusing every call, a real change would time
        // the publisher's retries of its refused PutEvents (about 0.6 s), not its start.
        "event-publisher" => br#"{"Records": []}"#.to_vec(),
        "batch-trigger" => {
            // The SQS fixture carrying an S3 test event, which the trigger ignores.
            let mut event: serde_json::Value = serde_json::from_str(WORKER_EVENT)?;
            let record = event["Records"]
                .get_mut(0)
                .ok_or_else(|| anyhow!("events/sqs-tier-message.json has no record"))?;
            record["body"] = serde_json::Value::String(
                serde_json::json!({"Service": "Amazon S3", "Event": "s3:TestEvent"}).to_string(),
            );
            record["eventSourceARN"] =
                "arn:aws:sqs:us-east-1:123456789012:taskflow-batch-uploads".into();
            serde_json::to_vec(&event)?
        }
        other => bail!("no cold-start event for {other}"),
    })
}

/// Measures each function's release binary (built beforehand at target/release/<name>) under a
/// minimal local Lambda Runtime API emulator: process start → first invocation answered.
/// `env` holds the function configuration (resource names/URLs of a running local stack, and
/// AWS_ENDPOINT_URL etc.); `runs` repetitions, reporting medians.
///
/// `target_dir` is the cargo target directory (binaries at `<target_dir>/release/<name>`);
/// a directory holding the binaries directly works too. Runs go round-robin over the
/// functions, so drift in machine load spreads over all of them.
pub async fn measure(
    target_dir: &Path,
    env: &[(String, String)],
    runs: usize,
) -> anyhow::Result<Vec<ColdStart>> {
    measure_functions(target_dir, &FUNCTIONS, env, runs).await
}

/// [`measure`] for some of the functions (see [`FUNCTIONS`]).
pub async fn measure_functions(
    target_dir: &Path,
    functions: &[&str],
    env: &[(String, String)],
    runs: usize,
) -> anyhow::Result<Vec<ColdStart>> {
    if runs == 0 {
        bail!("cold start: runs must be at least 1");
    }
    let mut plans = Vec::new();
    for &function in functions {
        let binary = binary_path(target_dir, function)?;
        let binary_bytes = std::fs::metadata(&binary)
            .with_context(|| format!("reading {}", binary.display()))?
            .len();
        plans.push((function, binary, binary_bytes, event_for(function)?));
    }
    let mut samples: Vec<Vec<RunResult>> = vec![Vec::new(); plans.len()];
    for run in 1..=runs {
        for ((function, binary, _, event), samples) in plans.iter().zip(&mut samples) {
            let result = run_once(function, binary, event, env)
                .await
                .with_context(|| format!("cold start of {function}, run {run}/{runs}"))?;
            eprintln!(
                "  cold start {function:<13} run {run}/{runs}: {:>7.1} ms, peak RSS {:>6} KiB{}{}",
                result.first_response_ms,
                result.peak_rss_kib,
                match &result.answer {
                    Answer::Response(body) => summary(body),
                    Answer::Error(body) =>
                        format!(", answered with an invocation error: {}", excerpt(body)),
                },
                if result.stubbed_aws_calls > 0 {
                    format!(
                        " ({} AWS calls refused by the stub: no endpoint configured)",
                        result.stubbed_aws_calls
                    )
                } else {
                    String::new()
                },
            );
            samples.push(result);
        }
    }
    Ok(plans
        .iter()
        .zip(samples)
        .map(|((function, _, binary_bytes, _), samples)| ColdStart {
            function: function.to_string(),
            binary_bytes: *binary_bytes,
            peak_rss_kib: median(samples.iter().map(|s| s.peak_rss_kib as f64).collect()).round()
                as u64,
            first_response_ms: median(samples.iter().map(|s| s.first_response_ms).collect()),
        })
        .collect())
}

fn binary_path(target_dir: &Path, function: &str) -> anyhow::Result<PathBuf> {
    let candidates = [
        target_dir.join("release").join(function),
        target_dir.join(function),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "no release binary for {function} at {}: build it first with \
                 `cargo build --release -p {function}`",
                candidates[0].display()
            )
        })
}

/// Median; the mean of the middle two for an even count.
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// A word on what a response said: the HTTP status of an API answer, the item failures
/// of an SQS batch answer.
fn summary(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    if let Some(status) = value.get("statusCode").and_then(|s| s.as_u64()) {
        format!(", answered HTTP {status}")
    } else if let Some(failures) = value.get("batchItemFailures").and_then(|f| f.as_array()) {
        format!(
            ", answered a batch response ({} item failures)",
            failures.len()
        )
    } else {
        ", answered".to_string()
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.chars().count() > 300 {
        format!("{}…", text.chars().take(300).collect::<String>())
    } else {
        text.to_string()
    }
}

/// How the first invocation was answered.
#[derive(Debug, Clone)]
enum Answer {
    /// `POST /invocation/{id}/response`, with its body.
    Response(Vec<u8>),
    /// `POST /invocation/{id}/error`, with its body.
    Error(Vec<u8>),
}

#[derive(Debug, Clone)]
struct RunResult {
    first_response_ms: f64,
    peak_rss_kib: u64,
    answer: Answer,
    stubbed_aws_calls: usize,
}

/// Placeholder configuration: every variable `Config::from_env` requires, and the AWS
/// endpoint pointed at the emulator's refusing stub. `env` is applied after these.
fn default_env(runtime_api: &str) -> Vec<(String, String)> {
    let mut vars = vec![
        ("TABLE_NAME".to_string(), "coldstart-tasks".to_string()),
        (
            "ATTACHMENTS_BUCKET".to_string(),
            "coldstart-attachments".to_string(),
        ),
        ("BATCH_BUCKET".to_string(), "coldstart-batches".to_string()),
        ("EVENT_BUS_NAME".to_string(), "coldstart-events".to_string()),
        (
            "CHAIN_STATE_MACHINE_ARN".to_string(),
            "arn:aws:states:us-east-1:123456789012:stateMachine:coldstart-chain".to_string(),
        ),
        (
            "BATCH_STATE_MACHINE_ARN".to_string(),
            "arn:aws:states:us-east-1:123456789012:stateMachine:coldstart-batch".to_string(),
        ),
        (
            "BATCH_PREPARATION_QUEUE_URL".to_string(),
            format!("http://{runtime_api}/123456789012/taskflow-batch-uploads"),
        ),
        (
            "AWS_ENDPOINT_URL".to_string(),
            format!("http://{runtime_api}"),
        ),
    ];
    for tier in shared::domain::Priority::ALL {
        let tier = tier.as_str();
        let upper = tier.to_ascii_uppercase();
        vars.push((
            format!("QUEUE_URL_{upper}"),
            format!("http://{runtime_api}/123456789012/taskflow-{tier}"),
        ));
        vars.push((
            format!("DLQ_URL_{upper}"),
            format!("http://{runtime_api}/123456789012/taskflow-{tier}-dlq"),
        ));
    }
    vars
}

/// Keeps the last `cap` bytes a child writes to one of its pipes.
fn drain<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    mut pipe: R,
    sink: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    const CAP: usize = 16 * 1024;
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut sink = sink.lock().unwrap();
            sink.extend_from_slice(&buf[..n]);
            if sink.len() > CAP {
                let cut = sink.len() - CAP;
                sink.drain(..cut);
            }
        }
    })
}

/// `VmHWM` of `pid` in KiB, while its `/proc` entry has one.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn run_once(
    function: &str,
    binary: &Path,
    event: &[u8],
    env: &[(String, String)],
) -> anyhow::Result<RunResult> {
    let request_id = format!(
        "coldstart-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    );
    let mut emulator = runtime::Emulator::start(function, &request_id, event.to_vec()).await?;
    let runtime_api = emulator.addr.to_string();

    let mut command = tokio::process::Command::new(binary);
    command
        .env_clear()
        .env("AWS_LAMBDA_FUNCTION_NAME", function)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/{function}"),
        )
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "coldstart")
        .env("AWS_LAMBDA_RUNTIME_API", &runtime_api)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(default_env(&runtime_api))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);

    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("{function} exited at once"))?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let drains = [
        drain(child.stdout.take().expect("piped stdout"), output.clone()),
        drain(child.stderr.take().expect("piped stderr"), output.clone()),
    ];
    let log_tail = |output: &Arc<Mutex<Vec<u8>>>| {
        let bytes = output.lock().unwrap().clone();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };

    let mut peak_rss_kib = vm_hwm_kib(pid).unwrap_or(0);
    let mut exit = None;
    let deadline = started + RUN_TIMEOUT;
    let outcome = loop {
        tokio::select! {
            outcome = emulator.outcome.recv() => break outcome,
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                // Give an answer already on its way a moment to arrive, then give up.
                match tokio::time::timeout(Duration::from_millis(200), emulator.outcome.recv()).await {
                    Ok(outcome) => break outcome,
                    Err(_) => break None,
                }
            }
            _ = tokio::time::sleep(RSS_POLL) => {
                if let Some(kib) = vm_hwm_kib(pid) {
                    peak_rss_kib = peak_rss_kib.max(kib);
                }
                if Instant::now() > deadline {
                    break None;
                }
            }
        }
    };
    if exit.is_none() {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // The pipes close with the process; the tail is complete once the drains end.
    for drain in drains {
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    let stubbed_aws_calls = emulator.stubbed_aws_calls();
    emulator.stop();

    let outcome = match outcome {
        Some(outcome) => outcome,
        None => {
            let why = match exit {
                Some(Ok(status)) => format!("{function} exited ({status}) before answering"),
                Some(Err(err)) => format!("waiting for {function} failed: {err}"),
                None => format!("{function} did not answer within {RUN_TIMEOUT:?}"),
            };
            bail!("{why}; its last output:\n{}", log_tail(&output));
        }
    };
    let (at, answer) = match outcome {
        runtime::Outcome::Response { at, body } => (at, Answer::Response(body)),
        runtime::Outcome::InvocationError { at, body } => (at, Answer::Error(body)),
        runtime::Outcome::InitError { body } => bail!(
            "{function} reported an init error: {}; its last output:\n{}",
            excerpt(&body),
            log_tail(&output)
        ),
    };
    if peak_rss_kib == 0 {
        bail!("could not read VmHWM of {function} (pid {pid}) from /proc");
    }
    Ok(RunResult {
        first_response_ms: at.duration_since(started).as_secs_f64() * 1000.0,
        peak_rss_kib,
        answer,
        stubbed_aws_calls,
    })
}

/// The minimal Lambda Runtime API emulator: one event, one answer.
mod runtime {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::body::Incoming;
    use hyper::{Method, Request, Response, StatusCode};
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::sync::mpsc;

    pub enum Outcome {
        Response { at: Instant, body: Vec<u8> },
        InvocationError { at: Instant, body: Vec<u8> },
        InitError { body: Vec<u8> },
    }

    struct State {
        function_arn: String,
        request_id: String,
        event: Bytes,
        handed_out: AtomicBool,
        stubbed: AtomicUsize,
        outcome: mpsc::UnboundedSender<Outcome>,
    }

    pub struct Emulator {
        pub addr: SocketAddr,
        pub outcome: mpsc::UnboundedReceiver<Outcome>,
        state: Arc<State>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Emulator {
        pub async fn start(
            function: &str,
            request_id: &str,
            event: Vec<u8>,
        ) -> anyhow::Result<Emulator> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let state = Arc::new(State {
                function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function}"),
                request_id: request_id.to_string(),
                event: Bytes::from(event),
                handed_out: AtomicBool::new(false),
                stubbed: AtomicUsize::new(0),
                outcome: tx,
            });
            let server_state = state.clone();
            let server = tokio::spawn(async move {
                // Dropped with the accept loop, which aborts every connection (and a
                // pending second `next` poll with it).
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let state = server_state.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                    while connections.try_join_next().is_some() {}
                }
            });
            Ok(Emulator {
                addr,
                outcome: rx,
                state,
                server,
            })
        }

        pub fn stubbed_aws_calls(&self) -> usize {
            self.state.stubbed.load(Ordering::Relaxed)
        }

        pub fn stop(self) {
            self.server.abort();
        }
    }

    impl Drop for Emulator {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("static response parts")
    }

    async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let at = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let body = match req.into_body().collect().await {
            Ok(body) => body.to_bytes().to_vec(),
            Err(_) => Vec::new(),
        };
        let accepted = || reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#);
        let Some(route) = path.strip_prefix("/2018-06-01/runtime/") else {
            // Not the Runtime API: an AWS SDK call with no endpoint configured. Refused
            // with a client error, which the SDK does not retry.
            state.stubbed.fetch_add(1, Ordering::Relaxed);
            return reply(
                StatusCode::BAD_REQUEST,
                r#"{"__type":"com.amazonaws.coldstart#NoBackendConfigured","message":"cold-start emulator: no AWS endpoint configured"}"#,
            );
        };
        let invocation = |suffix: &str| {
            route
                .strip_prefix("invocation/")
                .and_then(|rest| rest.strip_suffix(suffix))
                .map(|id| id == state.request_id)
        };
        match (method, route) {
            (Method::GET, "invocation/next") => {
                if state.handed_out.swap(true, Ordering::SeqCst) {
                    // One invocation per process: the next poll waits for the kill.
                    std::future::pending::<()>().await;
                }
                let deadline_ms = (SystemTime::now() + Duration::from_secs(900))
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default();
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .header("Lambda-Runtime-Aws-Request-Id", &state.request_id)
                    .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
                    .header("Lambda-Runtime-Invoked-Function-Arn", &state.function_arn)
                    .header(
                        "Lambda-Runtime-Trace-Id",
                        "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0",
                    )
                    .body(Full::new(state.event.clone()))
                    .expect("static response parts")
            }
            (Method::POST, "init/error") => {
                let _ = state.outcome.send(Outcome::InitError { body });
                accepted()
            }
            (Method::POST, _) if invocation("/response") == Some(true) => {
                let _ = state.outcome.send(Outcome::Response { at, body });
                accepted()
            }
            (Method::POST, _) if invocation("/error") == Some(true) => {
                let _ = state.outcome.send(Outcome::InvocationError { at, body });
                accepted()
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                format!(r#"{{"errorMessage":"cold-start emulator: unknown route {path}"}}"#),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn every_function_has_an_event() {
        for function in FUNCTIONS {
            let event: serde_json::Value =
                serde_json::from_slice(&event_for(function).unwrap()).unwrap();
            assert!(event.is_object(), "{function}");
        }
        let trigger: serde_json::Value =
            serde_json::from_slice(&event_for("batch-trigger").unwrap()).unwrap();
        let body: serde_json::Value =
            serde_json::from_str(trigger["Records"][0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["Event"], "s3:TestEvent");
    }

    /// One HTTP/1.1 exchange with the emulator; the status line, headers and body.
    async fn exchange(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn emulator_hands_out_one_event_and_records_the_answers() {
        let mut emulator = runtime::Emulator::start("api", "req-1", b"{\"hello\":1}".to_vec())
            .await
            .unwrap();
        let next = exchange(
            emulator.addr,
            "GET",
            "/2018-06-01/runtime/invocation/next",
            "",
        )
        .await;
        let lower = next.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 200"), "{next}");
        assert!(
            lower.contains("lambda-runtime-aws-request-id: req-1"),
            "{next}"
        );
        assert!(lower.contains("lambda-runtime-deadline-ms: "), "{next}");
        assert!(
            lower.contains("lambda-runtime-invoked-function-arn: arn:aws:lambda:"),
            "{next}"
        );
        assert!(lower.contains("lambda-runtime-trace-id: root="), "{next}");
        assert!(next.ends_with("{\"hello\":1}"), "{next}");

        // A second poll waits (for the kill).
        let again = tokio::time::timeout(
            Duration::from_millis(200),
            exchange(
                emulator.addr,
                "GET",
                "/2018-06-01/runtime/invocation/next",
                "",
            ),
        )
        .await;
        assert!(again.is_err(), "a second event was handed out");

        // Answers for another request id are not this invocation's.
        let stray = exchange(
            emulator.addr,
            "POST",
            "/2018-06-01/runtime/invocation/other/response",
            "{}",
        )
        .await;
        assert!(stray.starts_with("HTTP/1.1 404"), "{stray}");

        let posted = exchange(
            emulator.addr,
            "POST",
            "/2018-06-01/runtime/invocation/req-1/error",
            "{\"errorMessage\":\"boom\"}",
        )
        .await;
        assert!(posted.starts_with("HTTP/1.1 202"), "{posted}");
        assert!(matches!(
            emulator.outcome.recv().await,
            Some(runtime::Outcome::InvocationError { body, .. }) if body == b"{\"errorMessage\":\"boom\"}"
        ));
        exchange(
            emulator.addr,
            "POST",
            "/2018-06-01/runtime/invocation/req-1/response",
            "{\"ok\":true}",
        )
        .await;
        assert!(matches!(
            emulator.outcome.recv().await,
            Some(runtime::Outcome::Response { body, .. }) if body == b"{\"ok\":true}"
        ));
        exchange(
            emulator.addr,
            "POST",
            "/2018-06-01/runtime/init/error",
            "{\"errorMessage\":\"no config\"}",
        )
        .await;
        assert!(matches!(
            emulator.outcome.recv().await,
            Some(runtime::Outcome::InitError { .. })
        ));

        // Anything else is an AWS call with no endpoint configured: refused, not retried.
        let aws = exchange(emulator.addr, "POST", "/", "{}").await;
        assert!(aws.starts_with("HTTP/1.1 400"), "{aws}");
        assert_eq!(emulator.stubbed_aws_calls(), 1);
        emulator.stop();
    }

    #[tokio::test]
    async fn api_cold_start_answers_the_openapi_request() {
        let target = target_dir();
        let Ok(binary) = binary_path(&target, "api") else {
            println!(
                "skipped: no {} (build it with `cargo build --release -p api`)",
                target.join("release/api").display()
            );
            return;
        };
        // No stack: the openapi route needs no configuration beyond the placeholders.
        let measured = measure_functions(&target, &["api"], &[], 1).await.unwrap();
        assert_eq!(measured.len(), 1);
        let api = &measured[0];
        assert_eq!(api.function, "api");
        assert_eq!(api.binary_bytes, std::fs::metadata(&binary).unwrap().len());
        assert!(api.first_response_ms > 0.0, "{api:?}");
        assert!(api.peak_rss_kib > 0, "{api:?}");

        // And what it answered: the OpenAPI document, without a single AWS call.
        let run = run_once("api", &binary, &event_for("api").unwrap(), &[])
            .await
            .unwrap();
        let Answer::Response(body) = &run.answer else {
            panic!("api answered with an error: {:?}", run.answer);
        };
        let response: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(response["statusCode"], 200, "{response}");
        assert!(
            response["body"]
                .as_str()
                .unwrap_or_default()
                .contains("openapi"),
            "{response}"
        );
        assert_eq!(
            run.stubbed_aws_calls, 0,
            "the openapi route needs no AWS call"
        );
    }
}
