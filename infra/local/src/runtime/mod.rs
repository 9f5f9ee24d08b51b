//! The local Lambda runtime: each function's real binary (the same `main.rs` Lambda runs) as
//! a process, speaking the Runtime API to this host, with the template's environment,
//! `Timeout` and `MemorySize`.
//!
//! As on Lambda:
//! - an environment (one process) serves one invocation at a time and is reused while warm;
//!   more concurrent invocations start more environments (cold starts);
//! - an invocation that passes `Timeout` is ended and its environment killed and replaced;
//! - a process whose resident memory passes `MemorySize` is killed, with a log line saying so.
//!   The check samples `VmRSS` in `/proc/<pid>/status` every [`MEMORY_POLL`]: it needs no
//!   privileges (cgroups would), and unlike `RLIMIT_AS` it counts memory actually used rather
//!   than reserved address space (a tokio runtime reserves far more than 128 MB). A burst that
//!   rises and falls between two samples is missed by the check; the peak each environment
//!   reached (the kernel's `VmHWM`, which misses nothing) is kept in [`RuntimeStats`];
//! - a process that exits or crashes fails the invocation it was running; the next invocation
//!   cold-starts a new one;
//! - a panic in the handler is reported by `lambda_runtime` on `/invocation/{id}/error` and fails
//!   that invocation only; the environment stays warm.
//!
//! Each function's CPU time (all its environments, exited ones included) is kept in
//! [`RuntimeStats::cpu_ticks`], for the bench's CPU per task.

mod api;
mod cpu;

pub use cpu::ticks_per_second;

use api::{Answer, Pending, RuntimeApi};
use hyper::body::Bytes;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// How often an environment's resident memory is sampled.
pub const MEMORY_POLL: Duration = Duration::from_millis(20);
/// Log lines kept per environment, for the error of a crashed invocation.
const LOG_TAIL: usize = 20;

/// What one function runs with (also what `make dev` writes to `.local/<stack>/functions.json`
/// for `local-stack invoke`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FunctionConfig {
    /// The logical id (also the function name the process sees).
    pub name: String,
    pub binary: PathBuf,
    /// The template's variables and the AWS endpoints and credentials.
    pub environment: Vec<(String, String)>,
    #[serde(with = "seconds")]
    pub timeout: Duration,
    pub memory_mb: u64,
}

/// A duration as (fractional) seconds in JSON.
mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Why an invocation produced no response.
#[derive(Debug, Clone, PartialEq)]
pub enum InvokeError {
    /// The function reported an error (`lambda_runtime` posts a panic this way too).
    Function { error_type: String, message: String },
    /// Ended at the function's `Timeout`; the environment was replaced.
    Timeout { seconds: f64 },
    /// Killed above `MemorySize`.
    OutOfMemory { limit_mb: u64, used_mb: u64 },
    /// The process exited or could not start.
    Crashed(String),
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::Function {
                error_type,
                message,
            } => write!(f, "{error_type}: {message}"),
            InvokeError::Timeout { seconds } => {
                write!(f, "Task timed out after {seconds:.2} seconds")
            }
            InvokeError::OutOfMemory { limit_mb, used_mb } => write!(
                f,
                "Runtime exited: memory size {limit_mb} MB exceeded ({used_mb} MB used)"
            ),
            InvokeError::Crashed(why) => write!(f, "Runtime exited: {why}"),
        }
    }
}

/// One function's pool of execution environments.
#[derive(Clone)]
pub struct FunctionRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    config: FunctionConfig,
    warm: Mutex<Vec<Environment>>,
    stats: Mutex<RuntimeStats>,
}

/// What a function's environments have done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    pub invocations: u64,
    pub cold_starts: u64,
    pub timeouts: u64,
    pub out_of_memory: u64,
    pub crashes: u64,
    pub function_errors: u64,
    /// The highest resident memory any of the function's environments reached, in KiB: what
    /// to compare with `MemorySize` (0 until an environment has been sampled).
    pub peak_rss_kib: u64,
    /// User plus system CPU of all the function's environments, in clock ticks
    /// ([`ticks_per_second`]): read at the end of each invocation and before an environment
    /// is dropped, so only an environment's last moments before it dies are missed.
    pub cpu_ticks: u64,
}

impl RuntimeStats {
    /// [`RuntimeStats::cpu_ticks`] in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ticks as f64 / ticks_per_second() as f64
    }
}

impl FunctionRuntime {
    pub fn new(config: FunctionConfig) -> FunctionRuntime {
        FunctionRuntime {
            inner: Arc::new(Inner {
                config,
                warm: Mutex::default(),
                stats: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &FunctionConfig {
        &self.inner.config
    }

    /// Runs one invocation on a warm environment, or a new one.
    pub async fn invoke(&self, payload: Vec<u8>) -> Result<Vec<u8>, InvokeError> {
        let warm = self.inner.warm.lock().expect("not poisoned").pop();
        let cold = warm.is_none();
        let started = match warm {
            Some(environment) => Ok(environment),
            None => Environment::start(&self.inner.config).await,
        };
        let outcome = match started {
            Ok(mut environment) => {
                let outcome = environment.invoke(&self.inner.config, payload).await;
                self.record_peak(environment.peak_kib());
                self.record_cpu(environment.cpu.take(environment.pid));
                self.keep_if_warm(environment, &outcome);
                outcome
            }
            Err(err) => Err(err),
        };
        self.count(cold, &outcome);
        outcome
    }

    /// What this function's environments have done so far.
    pub fn stats(&self) -> RuntimeStats {
        *self.inner.stats.lock().expect("not poisoned")
    }

    fn record_peak(&self, kib: u64) {
        let mut stats = self.inner.stats.lock().expect("not poisoned");
        stats.peak_rss_kib = stats.peak_rss_kib.max(kib);
    }

    fn record_cpu(&self, ticks: u64) {
        self.inner.stats.lock().expect("not poisoned").cpu_ticks += ticks;
    }

    fn count(&self, cold: bool, outcome: &Result<Vec<u8>, InvokeError>) {
        let mut stats = self.inner.stats.lock().expect("not poisoned");
        stats.invocations += 1;
        stats.cold_starts += u64::from(cold);
        match outcome {
            Ok(_) => {}
            Err(InvokeError::Function { .. }) => stats.function_errors += 1,
            Err(InvokeError::Timeout { .. }) => stats.timeouts += 1,
            Err(InvokeError::OutOfMemory { .. }) => stats.out_of_memory += 1,
            Err(InvokeError::Crashed(_)) => stats.crashes += 1,
        }
    }

    fn keep_if_warm(&self, environment: Environment, outcome: &Result<Vec<u8>, InvokeError>) {
        match outcome {
            // A handled error leaves the environment as it was: it stays warm.
            Ok(_) | Err(InvokeError::Function { .. }) => {
                self.inner
                    .warm
                    .lock()
                    .expect("not poisoned")
                    .push(environment);
            }
            // Dropping it kills the process.
            Err(_) => {}
        }
    }

    /// Kills every warm environment (an invocation in flight ends with its caller).
    pub fn shut_down(&self) {
        let gone: Vec<Environment> = self
            .inner
            .warm
            .lock()
            .expect("not poisoned")
            .drain(..)
            .collect();
        for mut environment in gone {
            self.record_cpu(environment.cpu.take(environment.pid));
        }
    }

    /// Reads the CPU of every warm environment now (what they used since their last
    /// invocation), so that [`FunctionRuntime::stats`] is current.
    pub fn sample_cpu(&self) {
        let ticks: u64 = self
            .inner
            .warm
            .lock()
            .expect("not poisoned")
            .iter_mut()
            .map(|e| e.cpu.take(e.pid))
            .sum();
        self.record_cpu(ticks);
    }

    /// Warm environments right now (for tests and logs).
    pub fn warm_environments(&self) -> usize {
        self.inner.warm.lock().expect("not poisoned").len()
    }
}

/// One process and its Runtime API.
struct Environment {
    child: tokio::process::Child,
    pid: u32,
    invocations: mpsc::Sender<Pending>,
    init_error: oneshot::Receiver<Answer>,
    logs: Arc<Mutex<VecDeque<String>>>,
    /// The highest resident memory sampled so far, in KiB.
    peak_kib: AtomicU64,
    cpu: cpu::CpuMeter,
    _api: RuntimeApi,
}

impl Environment {
    async fn start(config: &FunctionConfig) -> Result<Environment, InvokeError> {
        let (invocations, next) = mpsc::channel(1);
        let (init_sender, init_error) = oneshot::channel();
        let arn = format!(
            "arn:aws:lambda:us-east-1:123456789012:function:{}",
            config.name
        );
        let api = RuntimeApi::start(arn, next, init_sender)
            .await
            .map_err(|e| InvokeError::Crashed(format!("runtime API: {e}")))?;
        let mut command = tokio::process::Command::new(&config.binary);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_FUNCTION_NAME", &config.name)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                config.memory_mb.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env(
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{}", config.name),
            )
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(config.environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            InvokeError::Crashed(format!("starting {}: {e}", config.binary.display()))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| InvokeError::Crashed("exited at once".into()))?;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(out) = child.stdout.take() {
            forward_logs(config.name.clone(), out, logs.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward_logs(config.name.clone(), err, logs.clone());
        }
        tracing::debug!(function = %config.name, pid, "environment started (cold start)");
        Ok(Environment {
            child,
            pid,
            invocations,
            init_error,
            logs,
            peak_kib: AtomicU64::new(0),
            cpu: cpu::CpuMeter::default(),
            _api: api,
        })
    }

    async fn invoke(
        &mut self,
        config: &FunctionConfig,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, InvokeError> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            request_id: ulid::Ulid::new().to_string().to_lowercase(),
            payload: Bytes::from(payload),
            timeout: config.timeout,
            answer,
        };
        if self.invocations.send(pending).await.is_err() {
            return Err(InvokeError::Crashed("the runtime API is gone".into()));
        }
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            answer = answered => match answer {
                Ok(Answer::Response(body)) => Ok(body.to_vec()),
                Ok(Answer::Error(body)) => Err(function_error(&body)),
                Ok(Answer::InitError(body)) => Err(InvokeError::Crashed(format!("init error: {}", String::from_utf8_lossy(&body)))),
                Err(_) => Err(InvokeError::Crashed("no answer".into())),
            },
            answer = &mut self.init_error => {
                let detail = match answer {
                    Ok(Answer::InitError(body)) => String::from_utf8_lossy(&body).into_owned(),
                    _ => "init failed".into(),
                };
                Err(InvokeError::Crashed(format!("init error: {detail}")))
            }
            status = self.child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(InvokeError::Crashed(format!("{status}; last log lines:\n{}", self.log_tail())))
            }
            used_mb = over_memory(self.pid, config.memory_mb, &self.peak_kib) => {
                Err(InvokeError::OutOfMemory { limit_mb: config.memory_mb, used_mb })
            }
            _ = tokio::time::sleep(config.timeout) => {
                Err(InvokeError::Timeout { seconds: started.elapsed().as_secs_f64() })
            }
        };
        match &outcome {
            Err(err @ (InvokeError::Timeout { .. } | InvokeError::OutOfMemory { .. })) => {
                let _ = self.child.start_kill();
                tracing::warn!(function = %config.name, pid = self.pid, "{err}; environment killed");
            }
            Err(err @ InvokeError::Crashed(_)) => {
                tracing::warn!(function = %config.name, pid = self.pid, "{err}");
            }
            _ => {}
        }
        outcome
    }

    /// The highest memory this environment has used, sampled once more now: the kernel's
    /// high-water mark also covers what happened after the last periodic sample.
    fn peak_kib(&self) -> u64 {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            let now = MemoryUse::parse(&status).peak_kib();
            self.peak_kib.fetch_max(now, Ordering::Relaxed);
        }
        self.peak_kib.load(Ordering::Relaxed)
    }

    fn log_tail(&self) -> String {
        let logs = self.logs.lock().expect("not poisoned");
        logs.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// The error `lambda_runtime` posted, as the function's own words.
fn function_error(body: &[u8]) -> InvokeError {
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |field: &str| parsed[field].as_str().unwrap_or_default().to_owned();
    InvokeError::Function {
        error_type: text("errorType"),
        message: text("errorMessage"),
    }
}

/// Resolves with the MB used once the process's resident memory passes `limit_mb`; records
/// the highest memory seen in `peak_kib` as it samples.
async fn over_memory(pid: u32, limit_mb: u64, peak_kib: &AtomicU64) -> u64 {
    let mut ticks = tokio::time::interval(MEMORY_POLL);
    loop {
        ticks.tick().await;
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let memory = MemoryUse::parse(&status);
        peak_kib.fetch_max(memory.peak_kib(), Ordering::Relaxed);
        if let Some(kib) = memory.resident_kib {
            if kib > limit_mb * 1024 {
                return used_mb(kib);
            }
        }
    }
}

/// Megabytes used, rounded up: a process over its limit by less than a megabyte must not read
/// as using exactly its limit ("64 MB exceeded (64 MB used)").
fn used_mb(kib: u64) -> u64 {
    kib.div_ceil(1024)
}

/// A process's memory, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct MemoryUse {
    /// `VmRSS`: resident now (what the limit is checked against).
    resident_kib: Option<u64>,
    /// `VmHWM`: the highest resident size since the process started, between samples included.
    high_water_kib: Option<u64>,
}

impl MemoryUse {
    fn parse(status: &str) -> MemoryUse {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        MemoryUse {
            resident_kib: field("VmRSS:"),
            high_water_kib: field("VmHWM:"),
        }
    }

    /// The peak this sample shows: the kernel's high-water mark, or the resident size where
    /// the kernel keeps none.
    fn peak_kib(&self) -> u64 {
        self.high_water_kib
            .unwrap_or(0)
            .max(self.resident_kib.unwrap_or(0))
    }
}

/// A function's JSON log line (`tracing_subscriber`'s JSON format, which the functions use on
/// Lambda) as its level and `message key=value ...`; any other line as it is, at INFO.
fn readable_log_line(line: &str) -> (tracing::Level, String) {
    let Ok(serde_json::Value::Object(record)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        return (tracing::Level::INFO, line.to_owned());
    };
    let level = match record.get("level").and_then(|l| l.as_str()) {
        Some("ERROR") => tracing::Level::ERROR,
        Some("WARN") => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    let fields = record.get("fields").and_then(|f| f.as_object());
    let mut text = fields
        .and_then(|f| f.get("message"))
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    for (key, value) in fields.into_iter().flatten() {
        if key != "message" {
            match value.as_str() {
                Some(v) => text.push_str(&format!(" {key}={v}")),
                None => text.push_str(&format!(" {key}={value}")),
            }
        }
    }
    (level, text)
}

/// Copies a function's output into this host's log, keeping the last lines.
fn forward_logs<R>(name: String, output: R, tail: Arc<Mutex<VecDeque<String>>>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // A function logs JSON lines, as on Lambda; the host shows them as plain text.
            let (level, text) = readable_log_line(&line);
            match level {
                tracing::Level::ERROR => {
                    tracing::error!(target: "taskflow::function", function = %name, "{text}")
                }
                tracing::Level::WARN => {
                    tracing::warn!(target: "taskflow::function", function = %name, "{text}")
                }
                _ => tracing::info!(target: "taskflow::function", function = %name, "{text}"),
            }
            let mut tail = tail.lock().expect("not poisoned");
            if tail.len() == LOG_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn memory_over_the_limit_never_reads_as_the_limit() {
        // 64 MB and 64 KiB: over a 64 MB limit, so it reads 65 MB, not 64.
        assert_eq!(used_mb(64 * 1024 + 64), 65);
        assert_eq!(used_mb(64 * 1024), 64);
    }

    fn status(rss: u64, hwm: u64) -> String {
        format!("Name:\tbatch-trigger\nVmPeak:\t 9999999 kB\nVmHWM:\t {hwm:>8} kB\nVmRSS:\t {rss:>8} kB\nThreads:\t3\n")
    }

    #[test]
    fn status_gives_resident_and_high_water_memory() {
        let memory = MemoryUse::parse(&status(2048, 8192));
        assert_eq!(memory.resident_kib, Some(2048));
        assert_eq!(memory.high_water_kib, Some(8192));
        assert_eq!(memory.peak_kib(), 8192);
        // A kernel without VmHWM (or a process gone mid-read): the resident size stands in.
        let partial = MemoryUse::parse("VmRSS:\t  300 kB\n");
        assert_eq!(partial.peak_kib(), 300);
        assert_eq!(MemoryUse::parse("").peak_kib(), 0);
    }

    #[test]
    fn the_function_peak_is_the_highest_any_environment_reached() {
        let runtime = FunctionRuntime::new(FunctionConfig {
            name: "F".into(),
            binary: "/nonexistent".into(),
            environment: vec![],
            timeout: Duration::from_secs(1),
            memory_mb: 128,
        });
        for kib in [5_000, 90_000, 40_000] {
            runtime.record_peak(kib);
        }
        assert_eq!(runtime.stats().peak_rss_kib, 90_000);
    }

    #[tokio::test]
    async fn sampling_keeps_the_highest_memory_seen_and_still_enforces_the_limit() {
        // This test process itself: well over 0 MB, so the limit of 0 is passed at once.
        let peak = AtomicU64::new(0);
        let used_mb = over_memory(std::process::id(), 0, &peak).await;
        let own = MemoryUse::parse(&std::fs::read_to_string("/proc/self/status").unwrap());
        assert!(peak.load(Ordering::Relaxed) >= used_mb * 1024);
        assert!(peak.load(Ordering::Relaxed) <= own.peak_kib());
        assert!(peak.load(Ordering::Relaxed) > 0);
        // An earlier, higher sample is never lowered.
        let high = AtomicU64::new(u64::MAX / 2);
        over_memory(std::process::id(), 0, &high).await;
        assert_eq!(high.load(Ordering::Relaxed), u64::MAX / 2);
    }
}

#[cfg(test)]
mod log_tests {
    use super::readable_log_line;

    #[test]
    fn json_log_lines_read_as_text_and_other_lines_pass_through() {
        let line = r#"{"level":"WARN","fields":{"message":"batch message will be retried","error":"boom","attempt":2},"span":{"requestId":"r1"}}"#;
        assert_eq!(
            readable_log_line(line),
            (
                tracing::Level::WARN,
                "batch message will be retried attempt=2 error=boom".to_owned()
            )
        );
        assert_eq!(
            readable_log_line("thread 'main' panicked at src/main.rs:3:5"),
            (
                tracing::Level::INFO,
                "thread 'main' panicked at src/main.rs:3:5".to_owned()
            )
        );
    }
}
