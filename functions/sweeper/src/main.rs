//! Sweeper Lambda, on an EventBridge schedule (every minute).

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use shared::aws::AwsClients;
use shared::config::Config;
use shared::services::Services;

// One thread: an environment serves one invocation at a time, and its CPU share at this
// MemorySize is a fraction of a core, so worker threads only add wake-ups (BENCHMARKS "CPU").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let config = Config::from_env()?;
    let sweeper = Services::new(&config, &AwsClients::from_env().await).sweeper;
    let sweeper = &sweeper;
    run(service_fn(
        move |_event: LambdaEvent<serde_json::Value>| async move {
            let report = sweeper.sweep(chrono::Utc::now()).await?;
            tracing::info!(?report, "sweep finished");
            Ok::<_, Error>(serde_json::json!({
                "promoted": report.promoted,
                "redispatched": report.redispatched,
                "escalated": report.escalated,
                "breaches": report.breaches,
                "agentsOffline": report.agents_offline,
                "reassigned": report.reassigned,
                "batchesFailed": report.batches_failed,
            }))
        },
    ))
    .await
}
