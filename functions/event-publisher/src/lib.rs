//! The state-change publisher: a batch of the table's stream records in, their events on the
//! stack's bus out (shared::service::state_publisher). The event source mapping's filter
//! passes only task, step and batch writes that change a status (template.yaml); the mapping
//! in shared checks again, so a looser filter costs invocations, never wrong events.

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use shared::service::state_events::StreamChange;
use shared::service::state_publisher::StatePublisher;
use shared::store::EventBridgeBus;
use std::sync::Arc;

pub struct Publisher {
    publisher: StatePublisher,
}

impl Publisher {
    /// The bus is named by `EVENT_BUS_NAME`.
    pub fn new(sdk: &aws_config::SdkConfig, bus_name: &str) -> Self {
        let bus = EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), bus_name);
        Self::with_publisher(StatePublisher::new(Arc::new(bus)))
    }

    pub fn with_publisher(publisher: StatePublisher) -> Self {
        Self { publisher }
    }

    /// Publishes the batch; a record whose events could not be published is the batch item
    /// failure (the mapping retries from it, then sends it to the DLQ).
    pub async fn handle(&self, event: Event) -> DynamoDbEventResponse {
        let changes: Vec<StreamChange> = event.records.into_iter().map(change_of).collect();
        let report = self.publisher.publish(&changes).await;
        tracing::info!(
            records = changes.len(),
            published = report.published,
            ignored = report.ignored,
            unreadable = report.unreadable,
            failed = ?report.failed_sequence,
            "stream batch"
        );
        let mut response = DynamoDbEventResponse::default();
        if let Some(sequence) = report.failed_sequence {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence);
            response.batch_item_failures.push(failure);
        }
        response
    }
}

fn change_of(record: EventRecord) -> StreamChange {
    let image = |item: serde_dynamo::Item| {
        let empty = item.is_empty();
        (!empty).then_some(item)
    };
    StreamChange {
        sequence: record.change.sequence_number.unwrap_or_default(),
        at: record.change.approximate_creation_date_time,
        old: image(record.change.old_image),
        new: image(record.change.new_image),
    }
}
