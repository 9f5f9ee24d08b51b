//! The worker behind every tier queue. Each record is one run of a task; the
//! decision for it (ack, retry later, dead-letter) is turned into SQS actions
//! here, and only records that must come back are reported as batch failures.

mod metrics;
pub mod queue;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use shared::aws::AwsClients;
use shared::config::Config;
use shared::domain::{BatchMessage, ChainMessage};
use shared::service::{BatchRunner, ChainRunner, Delivery, TaskRunner};
use shared::services::Services;
use shared::AppError;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use queue::{QueueActions, SqsQueue, MAX_DELAY};

/// Retry waits up to this long hold the message in flight (ChangeMessageVisibility); longer
/// ones send a delayed copy and delete the message. A held message counts toward a standard
/// queue's in-flight cap of about 120,000, and retries at a rate r waiting d each hold r × d:
/// task backoffs of up to 15 minutes during an outage at 150 tasks/s would hold 135,000 and
/// stop the queue. Waits up to 30 s hold at most 4,500 at that rate. They stay in flight
/// because they are the store's hiccups, write conflicts and short backoffs, and a held
/// message keeps its receive count, so one that keeps failing that way still ends in the DLQ
/// (maxReceiveCount); a copy starts a fresh count, which is safe for backoffs (the task's
/// attempts bound them) and for lease waits (the lease ends).
const HOLD_IN_FLIGHT_UP_TO: Duration = Duration::from_secs(30);
/// SQS caps a message's visibility timeout at 12 hours.
const MAX_VISIBILITY_SECONDS: u64 = 43_200;

pub struct Worker {
    runner: TaskRunner,
    chains: ChainRunner,
    batches: BatchRunner,
    queue: Arc<dyn QueueActions>,
    config: Config,
}

impl Worker {
    pub fn new(config: Config, clients: &AwsClients) -> Self {
        let services = Services::new(&config, clients);
        let queue = Arc::new(SqsQueue::new(clients.sqs.clone()));
        Self::from_parts(config, services, queue)
    }

    /// A worker over any services and queue adapter (tests use in-memory ones).
    pub fn from_parts(config: Config, services: Services, queue: Arc<dyn QueueActions>) -> Self {
        Self {
            runner: services.runner,
            chains: services.chains,
            batches: services.batch_runner,
            queue,
            config,
        }
    }

    pub async fn from_env() -> Result<Self, AppError> {
        let config = Config::from_env()?;
        Ok(Self::new(config, &AwsClients::from_env().await))
    }

    /// Runs a batch; the records in the response come back later (partial batch failure).
    pub async fn handle_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        self.handle_batch_until(event, None).await
    }

    /// [`Worker::handle_batch`] in an invocation that ends at `deadline`: long work (batch
    /// chunks) stops in time and continues in a new delivery.
    pub async fn handle_batch_until(
        &self,
        event: SqsEvent,
        deadline: Option<Instant>,
    ) -> SqsBatchResponse {
        let runs = event
            .records
            .iter()
            .map(|record| self.isolated(record, deadline));
        let results = futures::future::join_all(runs).await;
        let batch_item_failures = event
            .records
            .iter()
            .zip(results)
            .filter(|(_, keep)| *keep)
            .filter_map(|(record, _)| record.message_id.clone())
            .map(|id| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = id;
                failure
            })
            .collect();
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = batch_item_failures;
        response
    }

    /// `handle_record`, with a panic failing only its own record: the record stays on the queue
    /// (SQS's receive limit ends a record that always panics), the batch's others are reported
    /// as they went. Without this, lambda_runtime would fail the invocation and the whole batch
    /// would come back, finished records included.
    async fn isolated(&self, record: &SqsMessage, deadline: Option<Instant>) -> bool {
        use futures::FutureExt;
        match std::panic::AssertUnwindSafe(self.handle_record(record, deadline))
            .catch_unwind()
            .await
        {
            Ok(keep) => keep,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    message_id = record.message_id.as_deref().unwrap_or_default(),
                    panic = %message,
                    "a record panicked; it stays on the queue"
                );
                true
            }
        }
    }

    /// True when the message must stay on the queue.
    async fn handle_record(&self, record: &SqsMessage, deadline: Option<Instant>) -> bool {
        let body = record.body.as_deref().unwrap_or_default();
        // Chain steps and batch chunks carry a `kind`; whole tasks are plain dispatch messages.
        let (delivery, report) = if let Ok(message) = serde_json::from_str::<ChainMessage>(body) {
            (self.chains.process_until(message, deadline).await, None)
        } else if let Ok(message) = serde_json::from_str::<BatchMessage>(body) {
            (self.batches.process_until(message, deadline).await, None)
        } else {
            self.runner.process(body).await
        };
        if let Some(report) = &report {
            metrics::emit(report);
        }
        match delivery {
            Delivery::Ack => false,
            Delivery::RetryAfter(delay) => self.retry_later(record, body, delay).await,
            // A copy, whatever the wait: holding the message would raise its receive count
            // (a deferral is not a failure) and keep its place ahead of other agencies' work.
            Delivery::Defer(delay) => self.come_back_as_copy(record, body, delay).await,
            Delivery::DeadLetter(error) => !self.dead_letter(record, body, &error).await,
            Delivery::Requeue => {
                match self
                    .queue
                    .send(&self.source_queue_url(record), body, &[], Duration::ZERO)
                    .await
                {
                    Ok(()) => false,
                    Err(err) => {
                        // It comes back after the visibility timeout instead.
                        tracing::warn!(error = %err, "could not requeue a message; it stays");
                        true
                    }
                }
            }
        }
    }

    /// Brings the message back after `delay`; true when the record must stay on the queue.
    /// A long wait is a delayed copy of the message (and this one is deleted), so it does not
    /// count as in flight; a short one, or one whose copy could not be sent, holds the message
    /// in flight. The copy has the same body, dispatch id included, so the runner treats it
    /// exactly as it would have treated this message coming back.
    async fn retry_later(&self, record: &SqsMessage, body: &str, delay: Duration) -> bool {
        let queue_url = self.source_queue_url(record);
        if delay > HOLD_IN_FLIGHT_UP_TO && !queue_url.is_empty() {
            // Past 15 minutes (a lease that long) the copy comes back early and the runner
            // asks for the rest of the wait again.
            match self
                .queue
                .send(&queue_url, body, &[], delay.min(MAX_DELAY))
                .await
            {
                Ok(()) => return false,
                Err(err) => {
                    tracing::warn!(error = %err, delay_s = delay.as_secs(), "could not send a delayed copy; the message is held in flight instead")
                }
            }
        }
        if let Some(receipt) = &record.receipt_handle {
            let visibility =
                shared::domain::seconds_rounded_up(delay).min(MAX_VISIBILITY_SECONDS) as i32;
            if let Err(err) = self
                .queue
                .change_visibility(&queue_url, receipt, visibility)
                .await
            {
                // The queue's own visibility timeout applies instead.
                tracing::warn!(error = %err, "could not set the retry delay");
            }
        }
        true
    }

    /// Sends a copy of the message visible after `delay` and lets this one be deleted; true
    /// (keep it, held in flight for `delay`) only when the copy could not be sent.
    async fn come_back_as_copy(&self, record: &SqsMessage, body: &str, delay: Duration) -> bool {
        let queue_url = self.source_queue_url(record);
        if !queue_url.is_empty() {
            match self
                .queue
                .send(&queue_url, body, &[], delay.min(MAX_DELAY))
                .await
            {
                Ok(()) => return false,
                Err(err) => {
                    tracing::warn!(error = %err, "could not send a deferred copy; the message is held in flight instead")
                }
            }
        }
        if let Some(receipt) = &record.receipt_handle {
            let visibility = shared::domain::seconds_rounded_up(delay) as i32;
            if let Err(err) = self
                .queue
                .change_visibility(&queue_url, receipt, visibility)
                .await
            {
                tracing::warn!(error = %err, "could not set the deferral's delay");
            }
        }
        true
    }

    /// Copies the message to its tier's DLQ with the error; false if that failed
    /// (the message then stays and SQS redrive is the safety net).
    async fn dead_letter(&self, record: &SqsMessage, body: &str, error: &str) -> bool {
        let tier = record
            .event_source_arn
            .as_deref()
            .and_then(|arn| self.config.tier_of_queue(arn))
            .unwrap_or_default();
        let Some(dlq) = self.config.dlq_urls.get(&tier) else {
            return false;
        };
        let excerpt: String = error.chars().take(1000).collect();
        let attributes = [
            ("error", excerpt.clone()),
            ("failedAt", chrono::Utc::now().to_rfc3339()),
            (
                "sourceQueue",
                record
                    .event_source_arn
                    .clone()
                    .unwrap_or_else(|| "unknown".to_owned()),
            ),
        ];
        let sent = self
            .queue
            .send(dlq, body, &attributes, Duration::ZERO)
            .await;
        match sent {
            Ok(_) => {
                tracing::warn!(%tier, error = %excerpt, "message moved to the dead-letter queue");
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "could not dead-letter a message; it stays on its queue");
                false
            }
        }
    }

    fn source_queue_url(&self, record: &SqsMessage) -> String {
        record
            .event_source_arn
            .as_deref()
            .and_then(|arn| self.config.tier_of_queue(arn))
            .and_then(|tier| self.config.queue_urls.get(&tier).cloned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
#[path = "lib_tests.rs"]
mod tests;
