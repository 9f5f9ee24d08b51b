//! Batch preparer Lambda (the batch trigger): S3 ObjectCreated notifications and
//! preparation requests arrive through its SQS queue.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: an environment serves one invocation at a time, and its CPU share at this
// MemorySize is a fraction of a core, so worker threads only add wake-ups (BENCHMARKS "CPU").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let trigger = batch_trigger::BatchTrigger::from_env().await?;
    let trigger = &trigger;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        let stop_at = batch_trigger::BatchTrigger::stop_at(event.context.deadline);
        Ok::<_, Error>(trigger.handle_batch(event.payload, stop_at).await)
    }))
    .await
}
