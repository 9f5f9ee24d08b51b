//! Schedule runner Lambda: EventBridge Scheduler invokes it with
//! `{"agencyId", "scheduleId", "scheduledTime"}` for each firing of a schedule.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use schedule_runner::ScheduleRunner;

// One thread: an environment serves one invocation at a time, and its CPU share at this
// MemorySize is a fraction of a core, so worker threads only add wake-ups (BENCHMARKS "CPU").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let runner = ScheduleRunner::from_env().await?;
    let runner = &runner;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            Ok::<_, Error>(runner.handle(&event.payload).await?)
        },
    ))
    .await
}
