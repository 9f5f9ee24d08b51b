//! Worker Lambda: cold-start setup, then each SQS batch goes to `worker::handle_batch`.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: an environment serves one invocation at a time, and its CPU share at this
// MemorySize is a fraction of a core, so worker threads only add wake-ups (BENCHMARKS "CPU").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let worker = worker::Worker::from_env().await?;
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        // The invocation's deadline (ms since the epoch) as an instant on this clock.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left = std::time::Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let deadline = std::time::Instant::now() + left;
        Ok::<_, Error>(
            worker
                .handle_batch_until(event.payload, Some(deadline))
                .await,
        )
    }))
    .await
}
