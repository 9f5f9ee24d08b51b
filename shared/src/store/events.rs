//! The stack's EventBridge bus behind [`EventBus`].

use super::from_sdk;
use crate::error::AppError;
use crate::ports::{BusEntry, EventBus};
use crate::service::state_events::SOURCE;
use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

#[derive(Debug, Clone)]
pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus_name: String,
}

impl EventBridgeBus {
    pub fn new(client: aws_sdk_eventbridge::Client, bus_name: impl Into<String>) -> Self {
        Self {
            client,
            bus_name: bus_name.into(),
        }
    }
}

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn put(&self, entries: &[BusEntry]) -> Result<Vec<Option<String>>, AppError> {
        let request = entries.iter().map(|e| {
            PutEventsRequestEntry::builder()
                .source(SOURCE)
                .detail_type(&e.detail_type)
                .detail(&e.detail)
                .event_bus_name(&self.bus_name)
                .build()
        });
        let out = self
            .client
            .put_events()
            .set_entries(Some(request.collect()))
            .send()
            .await
            .map_err(|e| from_sdk("events:PutEvents", e))?;
        // One result per entry, in order; a failed one carries an error code.
        Ok(out
            .entries()
            .iter()
            .map(|r| {
                r.error_code()
                    .map(|code| format!("{code}: {}", r.error_message().unwrap_or_default()))
            })
            .collect())
    }
}
