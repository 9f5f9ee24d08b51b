//! Worker Lambda: cold-start setup, then each SQS batch goes to `worker::handle_batch`.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let worker = worker::Worker::from_env().await?;
    let worker = &worker;
    run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        Ok::<_, Error>(worker.handle_batch(event.payload).await)
    }))
    .await
}
