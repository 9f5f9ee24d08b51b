//! The project's functions, by their logical id in template.yaml. Each is
//! built from its own template environment, exactly as its Lambda `main` does
//! from the process environment.

use crate::api_gateway::{self, Invoke};
use crate::emulator::Endpoints;
use crate::iam::AccessKey;
use crate::provision::FunctionSpec;
use crate::runtime::{FunctionConfig, FunctionRuntime};
use anyhow::{Context, Result};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use shared::aws::AwsClients;
use shared::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const API_FUNCTION: &str = "ApiFunction";

fn config_for(spec: &FunctionSpec) -> Result<Config> {
    Config::from_lookup(|key| spec.environment.get(key).cloned())
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec.logical_id))
}

/// The API function as an invokable handler.
pub fn api_handler(spec: &FunctionSpec, clients: &AwsClients) -> Result<Invoke> {
    let config = config_for(spec).context("configuring the API function")?;
    let schedules = shared::service::schedules::ScheduleSettings::from_lookup(|key| {
        spec.environment.get(key).cloned()
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", spec.logical_id))?;
    let app = Arc::new(api::App::with_schedule_settings(
        &config, clients, schedules,
    ));
    Ok(Arc::new(move |event: serde_json::Value| {
        let app = app.clone();
        Box::pin(async move {
            match lambda_http::request::from_str(&event.to_string()) {
                Ok(request) => api_gateway::to_hyper(api::handle(&app, request).await),
                Err(err) => {
                    tracing::error!(%err, "could not parse the proxy event");
                    api_gateway::integration_failure()
                }
            }
        })
    }))
}

pub const WORKER_FUNCTION: &str = "WorkerFunction";
pub const SWEEPER_FUNCTION: &str = "SweeperFunction";

/// The worker as an SQS batch handler.
pub fn worker_handler(
    spec: &FunctionSpec,
    clients: &AwsClients,
) -> Result<crate::sqs_poller::BatchHandler> {
    let config = config_for(spec).context("configuring the worker function")?;
    let worker = Arc::new(worker::Worker::new(config, clients));
    Ok(Arc::new(move |event| {
        let worker = worker.clone();
        Box::pin(async move { worker.handle_batch(event).await })
    }))
}

/// The sweeper as a scheduled handler.
pub fn sweeper_handler(
    spec: &FunctionSpec,
    clients: &AwsClients,
) -> Result<crate::scheduler::ScheduledHandler> {
    let config = config_for(spec).context("configuring the sweeper function")?;
    let sweeper = Arc::new(shared::services::Services::new(&config, clients).sweeper);
    Ok(Arc::new(move || {
        let sweeper = sweeper.clone();
        Box::pin(async move {
            match sweeper.sweep(chrono::Utc::now()).await {
                Ok(report) => tracing::info!(?report, "sweep finished"),
                Err(err) => tracing::warn!(error = %err, "sweep failed; the next one retries"),
            }
        })
    }))
}

pub const BATCH_TRIGGER_FUNCTION: &str = "BatchTriggerFunction";

/// The batch trigger (the batch preparer) as an SQS batch handler: S3 notifications and
/// preparation requests arrive through its queue.
pub fn batch_trigger_handler(
    spec: &FunctionSpec,
    clients: &AwsClients,
) -> Result<crate::sqs_poller::BatchHandler> {
    let config = config_for(spec).context("configuring the batch trigger function")?;
    let trigger = Arc::new(batch_trigger::BatchTrigger::new(&config, clients));
    let timeout = Duration::from_secs(spec.timeout_seconds);
    Ok(Arc::new(move |event| {
        let trigger = trigger.clone();
        // In process, the function's Timeout is only the preparation's own deadline.
        let stop_at = std::time::Instant::now()
            + timeout.saturating_sub(shared::service::batch_prep::STOP_MARGIN);
        Box::pin(async move { trigger.handle_batch(event, stop_at).await })
    }))
}

/// How the local host runs the functions.
#[derive(Debug, Clone, PartialEq)]
pub enum FunctionHost {
    /// Handlers called in this process: quick, and no Lambda limit applies.
    InProcess,
    /// Each function's own binary from this directory (e.g. `target/debug`) as a process under
    /// the local Lambda runtime, with its `Timeout`, `MemorySize` and environment.
    Processes { binaries: PathBuf },
}

impl FunctionHost {
    /// What `TASKFLOW_FUNCTIONS` asks for: `in-process`, or (the default) the binaries in
    /// `TASKFLOW_FUNCTION_BINARIES`, else the debug build (`$CARGO_TARGET_DIR/debug`, else
    /// `<repo>/target/debug`).
    pub fn from_env(repo_root: &Path) -> FunctionHost {
        if std::env::var("TASKFLOW_FUNCTIONS").as_deref() == Ok("in-process") {
            return FunctionHost::InProcess;
        }
        let binaries = match std::env::var_os("TASKFLOW_FUNCTION_BINARIES") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root.join("target"))
                .join("debug"),
        };
        FunctionHost::Processes { binaries }
    }
}

/// The binary a function's `CodeUri` builds (`functions/batch-trigger` → `batch-trigger`).
pub fn binary_for(spec: &FunctionSpec, binaries: &Path) -> Result<PathBuf> {
    let package = spec
        .code_uri
        .as_deref()
        .and_then(|uri| Path::new(uri).file_name())
        .with_context(|| format!("{} has no CodeUri naming its crate", spec.logical_id))?;
    let binary = binaries.join(package);
    anyhow::ensure!(
        binary.is_file(),
        "{} needs its binary at {} (build the functions first: make functions)",
        spec.logical_id,
        binary.display()
    );
    Ok(binary)
}

/// A function's pool of local execution environments.
pub fn runtime_for(
    spec: &FunctionSpec,
    binaries: &Path,
    endpoints: &Endpoints,
    credentials: Option<&AccessKey>,
) -> Result<FunctionRuntime> {
    Ok(FunctionRuntime::new(function_config(
        spec,
        binaries,
        endpoints,
        credentials,
    )?))
}

/// What a function runs with under the local runtime: its template environment, the
/// emulator's endpoints, its own credentials (see [`crate::iam`]; without them, dummy ones
/// that the emulator treats as the account root), its `Timeout` and `MemorySize`.
pub fn function_config(
    spec: &FunctionSpec,
    binaries: &Path,
    endpoints: &Endpoints,
    credentials: Option<&AccessKey>,
) -> Result<FunctionConfig> {
    let mut environment: Vec<(String, String)> = spec
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    environment.extend(endpoints.env_vars());
    let (key_id, secret) = match credentials {
        Some(key) => (key.access_key_id.clone(), key.secret_access_key.clone()),
        // Presigning needs some credentials even where nothing checks them.
        None => ("test".to_string(), "test".to_string()),
    };
    environment.push(("AWS_ACCESS_KEY_ID".into(), key_id));
    environment.push(("AWS_SECRET_ACCESS_KEY".into(), secret));
    if let Ok(filter) = std::env::var("RUST_LOG") {
        environment.push(("RUST_LOG".into(), filter));
    }
    Ok(FunctionConfig {
        name: spec.logical_id.clone(),
        binary: binary_for(spec, binaries)?,
        environment,
        timeout: Duration::from_secs(spec.timeout_seconds),
        memory_mb: spec.memory_mb,
    })
}

/// An SQS-triggered function (worker, batch trigger) run by the local runtime. An invocation
/// that fails as a whole (timeout, crash, error) leaves every message of its batch on the
/// queue, to come back after the visibility timeout, as on Lambda.
pub fn sqs_process_handler(runtime: FunctionRuntime) -> crate::sqs_poller::BatchHandler {
    Arc::new(move |event: SqsEvent| {
        let runtime = runtime.clone();
        Box::pin(async move {
            let every_message = |event: &SqsEvent| {
                let mut response = SqsBatchResponse::default();
                response.batch_item_failures = event
                    .records
                    .iter()
                    .filter_map(|r| r.message_id.clone())
                    .map(|id| {
                        let mut failure = BatchItemFailure::default();
                        failure.item_identifier = id;
                        failure
                    })
                    .collect();
                response
            };
            let payload = match serde_json::to_vec(&event) {
                Ok(payload) => payload,
                Err(err) => {
                    tracing::error!(%err, "could not encode an SQS event");
                    return every_message(&event);
                }
            };
            match runtime.invoke(payload).await {
                Ok(body) => serde_json::from_slice(&body).unwrap_or_else(|err| {
                    tracing::warn!(function = %runtime.config().name, %err, "unreadable batch response; the batch comes back");
                    every_message(&event)
                }),
                Err(err) => {
                    tracing::warn!(function = %runtime.config().name, %err, "invocation failed; its messages come back after their visibility timeout");
                    every_message(&event)
                }
            }
        })
    })
}

/// The sweeper run by the local runtime, with an EventBridge scheduled event.
pub fn scheduled_process_handler(runtime: FunctionRuntime) -> crate::scheduler::ScheduledHandler {
    Arc::new(move || {
        let runtime = runtime.clone();
        Box::pin(async move {
            let event = serde_json::json!({
                "version": "0", "id": ulid::Ulid::new().to_string(),
                "detail-type": "Scheduled Event", "source": "aws.events",
                "account": "123456789012", "time": chrono::Utc::now().to_rfc3339(),
                "region": "us-east-1", "resources": [], "detail": {},
            });
            match runtime.invoke(event.to_string().into_bytes()).await {
                Ok(body) => {
                    tracing::info!(report = %String::from_utf8_lossy(&body), "sweep finished")
                }
                Err(err) => tracing::warn!(%err, "sweep failed; the next one retries"),
            }
        })
    })
}

/// The API function run by the local runtime, behind API Gateway's limits: no answer within
/// 29 s (or the function's own `Timeout`) is a 504; a failed invocation, or a response over
/// 6 MB or not in the proxy format, is a 502.
pub fn api_process_handler(runtime: FunctionRuntime, integration_timeout: Duration) -> Invoke {
    Arc::new(move |event: serde_json::Value| {
        let runtime = runtime.clone();
        Box::pin(async move {
            let invocation = runtime.invoke(event.to_string().into_bytes());
            match tokio::time::timeout(integration_timeout, invocation).await {
                Ok(Ok(body)) => api_gateway::from_proxy_response(&body),
                Ok(Err(crate::runtime::InvokeError::Timeout { .. })) | Err(_) => {
                    api_gateway::integration_timeout()
                }
                Ok(Err(err)) => {
                    tracing::warn!(function = %runtime.config().name, %err, "API invocation failed");
                    api_gateway::integration_failure()
                }
            }
        })
    })
}

pub const EVENT_PUBLISHER_FUNCTION: &str = "EventPublisherFunction";

/// The event publisher as an in-process stream handler, publishing to the bus its template
/// environment names.
pub fn event_publisher_handler(
    spec: &FunctionSpec,
    sdk: &aws_config::SdkConfig,
) -> Result<crate::stream_poller::StreamHandler> {
    let bus = spec
        .environment
        .get("EVENT_BUS_NAME")
        .with_context(|| format!("{} has no EVENT_BUS_NAME", spec.logical_id))?;
    let publisher = Arc::new(event_publisher::Publisher::new(sdk, bus));
    Ok(Arc::new(move |event| {
        let publisher = publisher.clone();
        Box::pin(async move { Ok(publisher.handle(event).await) })
    }))
}

/// A stream-triggered function run by the local runtime: a failed invocation or an
/// unreadable answer is an invocation error (the mapping retries, or bisects, the batch).
pub fn stream_process_handler(runtime: FunctionRuntime) -> crate::stream_poller::StreamHandler {
    Arc::new(move |event| {
        let runtime = runtime.clone();
        Box::pin(async move {
            let payload = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
            let body = runtime.invoke(payload).await.map_err(|e| e.to_string())?;
            serde_json::from_slice(&body).map_err(|e| format!("unreadable batch response: {e}"))
        })
    })
}
