//! Batch trigger Lambda: S3 ObjectCreated notifications arrive through an SQS queue.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let trigger = batch_trigger::BatchTrigger::from_env().await?;
    let trigger = &trigger;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(trigger.handle_batch(event.payload).await)
    }))
    .await
}
