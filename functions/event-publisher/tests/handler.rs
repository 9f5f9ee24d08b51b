//! The handler on a stream event as Lambda delivers it (events/dynamodb-stream.json): the
//! status changes become events, the rest nothing, and a record whose events are refused is
//! the batch item failure.

use aws_lambda_events::event::dynamodb::Event;
use event_publisher::Publisher;
use shared::service::state_publisher::StatePublisher;
use shared::testing::{BusFault, MemoryEventBus};
use std::sync::Arc;
use std::time::Duration;

fn sample() -> Event {
    serde_json::from_str(include_str!("../../../events/dynamodb-stream.json")).unwrap()
}

fn publisher(bus: &Arc<MemoryEventBus>) -> Publisher {
    Publisher::with_publisher(StatePublisher::new(bus.clone()).with_retries(0, Duration::ZERO))
}

#[tokio::test]
async fn status_changes_become_events_and_nothing_else() {
    let bus = Arc::new(MemoryEventBus::new());
    let response = publisher(&bus).handle(sample()).await;
    assert!(response.batch_item_failures.is_empty());
    let types: Vec<String> = bus.accepted().into_iter().map(|e| e.detail_type).collect();
    // The sample: a task created queued, its start, a lease renewal (no status change), an
    // idempotency record, its completion.
    assert_eq!(types, ["Task Queued", "Task In Progress", "Task Completed"]);
}

#[tokio::test]
async fn a_refused_event_reports_its_record() {
    let bus = Arc::new(MemoryEventBus::new());
    bus.fail_next(BusFault::Entries(vec![1]));
    let response = publisher(&bus).handle(sample()).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect();
    assert_eq!(failed, ["1100000000000000000002"]);
}
