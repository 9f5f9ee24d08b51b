//! State-change publisher Lambda: the table's stream in, EventBridge events out.

use aws_lambda_events::event::dynamodb::Event;
use lambda_runtime::{run, service_fn, Error, LambdaEvent};

// One thread: an environment serves one invocation at a time, and its CPU share at this
// MemorySize is a fraction of a core, so worker threads only add wake-ups (BENCHMARKS "CPU").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let bus = std::env::var("EVENT_BUS_NAME").map_err(|_| "EVENT_BUS_NAME is not set")?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let publisher = event_publisher::Publisher::new(&sdk, &bus);
    let publisher = &publisher;
    run(service_fn(move |event: LambdaEvent<Event>| async move {
        Ok::<_, Error>(publisher.handle(event.payload).await)
    }))
    .await
}
