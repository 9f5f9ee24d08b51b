//! Publishes a batch of stream records' state-change events to the bus, at least once.
//!
//! Records are published in stream order, up to 10 entries per PutEvents (and 256 KiB; an
//! entry is at most a few KB). Entries PutEvents refuses are sent again, alone, a few times;
//! if a record's events still fail, the batch stops there and that record is reported as the
//! batch item failure, so the event source mapping retries from it (and after its retries
//! sends it to the DLQ). Stopping keeps each item's events in stream order and publishes
//! nothing that the retry would publish again, except a refused call's accepted neighbours.

use super::state_events::{events_for, StreamChange, SOURCE};
use crate::ports::{BusEntry, EventBus};
use std::sync::Arc;
use std::time::Duration;

/// PutEvents takes at most 10 entries per call.
pub const MAX_ENTRIES_PER_CALL: usize = 10;
/// And at most 256 KiB per call (an entry's size: source, detail-type and detail).
pub const MAX_BYTES_PER_CALL: usize = 256 * 1024;

/// What one batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Events the bus accepted.
    pub published: usize,
    /// Records that were not task, step or batch status changes.
    pub ignored: usize,
    /// Records that could not be read (logged and skipped).
    pub unreadable: usize,
    /// The first record whose events could not be published: the batch item failure.
    pub failed_sequence: Option<String>,
}

pub struct StatePublisher {
    bus: Arc<dyn EventBus>,
    /// Further attempts for refused entries, within one invocation.
    retries: u32,
    backoff: Duration,
}

/// An entry and the index of the record it came from.
struct Pending {
    record: usize,
    entry: BusEntry,
}

impl StatePublisher {
    pub fn new(bus: Arc<dyn EventBus>) -> Self {
        Self {
            bus,
            retries: 2,
            backoff: Duration::from_millis(200),
        }
    }

    /// Attempts and wait between them (tests use none).
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    pub async fn publish(&self, changes: &[StreamChange]) -> PublishReport {
        let mut report = PublishReport::default();
        let mut pending = Vec::new();
        for (record, change) in changes.iter().enumerate() {
            match events_for(change) {
                Ok(events) if events.is_empty() => report.ignored += 1,
                Ok(events) => {
                    for event in events {
                        let detail = match serde_json::to_string(&event.detail) {
                            Ok(detail) => detail,
                            Err(err) => {
                                tracing::error!(%err, "could not encode an event detail");
                                continue;
                            }
                        };
                        tracing::info!(
                            detail_type = %event.detail_type,
                            event_id = %event.detail.event_id,
                            "state change"
                        );
                        pending.push(Pending {
                            record,
                            entry: BusEntry {
                                detail_type: event.detail_type,
                                detail,
                            },
                        });
                    }
                }
                Err(err) => {
                    report.unreadable += 1;
                    tracing::error!(sequence = %change.sequence, reason = %err.0, "unreadable stream record skipped");
                }
            }
        }
        for call in calls(&pending) {
            let failed = self.send(call).await;
            report.published += call.len() - failed.len();
            if let Some(first) = failed.iter().map(|p| p.record).min() {
                report.failed_sequence = Some(changes[first].sequence.clone());
                return report;
            }
        }
        report
    }

    /// One call's entries, refused ones sent again; what still fails after the retries.
    async fn send<'a>(&self, call: &'a [Pending]) -> Vec<&'a Pending> {
        let mut left: Vec<&Pending> = call.iter().collect();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(self.backoff * attempt).await;
            }
            let entries: Vec<BusEntry> = left.iter().map(|p| p.entry.clone()).collect();
            left = match self.bus.put(&entries).await {
                Ok(outcomes) => left
                    .into_iter()
                    .zip(outcomes.into_iter().chain(std::iter::repeat(Some(
                        "missing from the answer".to_owned(),
                    ))))
                    .filter_map(|(p, outcome)| {
                        outcome.map(|code| {
                            tracing::warn!(%code, attempt, detail_type = %p.entry.detail_type, "event refused");
                            p
                        })
                    })
                    .collect(),
                Err(err) => {
                    tracing::warn!(error = %err, attempt, entries = left.len(), "PutEvents failed");
                    left
                }
            };
            if left.is_empty() {
                break;
            }
        }
        left
    }
}

/// The entries cut into calls of at most 10 entries and 256 KiB.
fn calls(pending: &[Pending]) -> Vec<&[Pending]> {
    let mut calls = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, p) in pending.iter().enumerate() {
        let size = entry_bytes(&p.entry);
        if i > start && (i - start == MAX_ENTRIES_PER_CALL || bytes + size > MAX_BYTES_PER_CALL) {
            calls.push(&pending[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < pending.len() {
        calls.push(&pending[start..]);
    }
    calls
}

/// An entry's size as EventBridge counts it: source, detail-type and detail in UTF-8.
pub fn entry_bytes(entry: &BusEntry) -> usize {
    SOURCE.len() + entry.detail_type.len() + entry.detail.len()
}
