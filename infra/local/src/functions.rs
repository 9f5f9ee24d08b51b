//! The project's functions, by their logical id in template.yaml. Each is
//! built from its own template environment, exactly as its Lambda `main` does
//! from the process environment.

use crate::api_gateway::Invoke;
use crate::provision::FunctionSpec;
use anyhow::{Context, Result};
use shared::aws::AwsClients;
use shared::config::Config;
use std::sync::Arc;

pub const API_FUNCTION: &str = "ApiFunction";

fn config_for(spec: &FunctionSpec) -> Result<Config> {
    Config::from_lookup(|key| spec.environment.get(key).cloned())
        .map_err(|e| anyhow::anyhow!("{}: {e}", spec.logical_id))
}

/// The API function as an invokable handler.
pub fn api_handler(spec: &FunctionSpec, clients: &AwsClients) -> Result<Invoke> {
    let config = config_for(spec).context("configuring the API function")?;
    let app = Arc::new(api::App::new(&config, clients));
    Ok(Arc::new(move |request| {
        let app = app.clone();
        Box::pin(async move { api::handle(&app, request).await })
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

/// The batch trigger as an SQS batch handler (S3 notifications arrive through SQS).
pub fn batch_trigger_handler(
    spec: &FunctionSpec,
    clients: &AwsClients,
) -> Result<crate::sqs_poller::BatchHandler> {
    let config = config_for(spec).context("configuring the batch trigger function")?;
    let trigger = Arc::new(batch_trigger::BatchTrigger::new(&config, clients));
    Ok(Arc::new(move |event| {
        let trigger = trigger.clone();
        Box::pin(async move { trigger.handle_batch(event).await })
    }))
}
