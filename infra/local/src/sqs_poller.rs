//! A local stand-in for a Lambda SQS event source mapping: long-polls the
//! queue, builds SQS events of up to `BatchSize` records (waiting up to the
//! batching window to fill them), runs at most `MaximumConcurrency` batches at
//! once, and deletes every record the handler did not report as failed.

use crate::limits::{sqs_message_bytes, LimitViolations, MAX_SQS_MESSAGE_BYTES};
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub type BatchHandler =
    Arc<dyn Fn(SqsEvent) -> Pin<Box<dyn Future<Output = SqsBatchResponse> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct EventSourceMapping {
    pub queue_url: String,
    pub queue_arn: String,
    pub batch_size: u32,
    pub max_batching_window: Duration,
    /// Concurrent batches (Lambda's default without ScalingConfig is effectively unbounded; 5 here).
    pub maximum_concurrency: u32,
    pub report_batch_item_failures: bool,
}

/// Long-poll wait per ReceiveMessage call.
const WAIT_SECONDS: i32 = 1;

/// Runs `maximum_concurrency` pollers until `shutdown`.
pub fn spawn(
    mapping: EventSourceMapping,
    sqs: aws_sdk_sqs::Client,
    handler: BatchHandler,
    violations: LimitViolations,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mapping = Arc::new(mapping);
    (0..mapping.maximum_concurrency.max(1))
        .map(|_| {
            let (mapping, sqs, handler, violations, shutdown) = (
                mapping.clone(),
                sqs.clone(),
                handler.clone(),
                violations.clone(),
                shutdown.clone(),
            );
            tokio::spawn(poll(mapping, sqs, handler, violations, shutdown))
        })
        .collect()
}

async fn poll(
    mapping: Arc<EventSourceMapping>,
    sqs: aws_sdk_sqs::Client,
    handler: BatchHandler,
    violations: LimitViolations,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let batch = tokio::select! {
            batch = receive_batch(&mapping, &sqs) => batch,
            _ = shutdown.changed() => return,
        };
        let messages = match batch {
            Ok(messages) => messages,
            Err(err) => {
                tracing::debug!(queue = %mapping.queue_url, error = %err, "receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let messages = refuse_oversize(&mapping, &sqs, &violations, messages).await;
        if messages.is_empty() {
            continue;
        }
        let event = to_event(&mapping, &messages);
        let response = handler(event).await;
        let failed: HashSet<String> = if mapping.report_batch_item_failures {
            response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect()
        } else if !response.batch_item_failures.is_empty() {
            // Without ReportBatchItemFailures any failure retries the whole batch.
            messages
                .iter()
                .filter_map(|m| m.message_id.clone())
                .collect()
        } else {
            HashSet::new()
        };
        for message in messages {
            if message
                .message_id
                .as_ref()
                .is_some_and(|id| failed.contains(id))
            {
                continue;
            }
            if let Some(receipt) = message.receipt_handle {
                if let Err(err) = sqs
                    .delete_message()
                    .queue_url(&mapping.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                {
                    tracing::warn!(error = ?err, "could not delete a processed message; it will be redelivered");
                }
            }
        }
    }
}

/// Messages over SQS's 256 KiB limit could never have been sent on AWS (moto accepts them):
/// each is recorded as a violation and deleted instead of delivered, so the sender's flaw
/// shows up as lost work in the tests rather than as a success.
async fn refuse_oversize(
    mapping: &EventSourceMapping,
    sqs: &aws_sdk_sqs::Client,
    violations: &LimitViolations,
    messages: Vec<Message>,
) -> Vec<Message> {
    let (oversize, fitting): (Vec<Message>, Vec<Message>) = messages
        .into_iter()
        .partition(|m| sqs_message_bytes(m) > MAX_SQS_MESSAGE_BYTES);
    for message in oversize {
        violations.record(format!(
            "a {} byte message reached {}: SQS refuses messages over {MAX_SQS_MESSAGE_BYTES} bytes, so its sender would have failed",
            sqs_message_bytes(&message),
            mapping.queue_url
        ));
        if let Some(receipt) = message.receipt_handle {
            let _ = sqs
                .delete_message()
                .queue_url(&mapping.queue_url)
                .receipt_handle(receipt)
                .send()
                .await;
        }
    }
    fitting
}

async fn receive_batch(
    mapping: &EventSourceMapping,
    sqs: &aws_sdk_sqs::Client,
) -> Result<Vec<Message>, String> {
    let deadline = Instant::now() + mapping.max_batching_window;
    let mut messages = Vec::new();
    loop {
        let wanted = (mapping.batch_size as usize - messages.len()).min(10) as i32;
        let out = sqs
            .receive_message()
            .queue_url(&mapping.queue_url)
            .max_number_of_messages(wanted)
            .wait_time_seconds(WAIT_SECONDS)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        messages.extend(out.messages.unwrap_or_default());
        let full = messages.len() >= mapping.batch_size as usize;
        if full
            || Instant::now() >= deadline
            || (messages.is_empty() && mapping.max_batching_window.is_zero())
        {
            return Ok(messages);
        }
        if !messages.is_empty() && mapping.max_batching_window.is_zero() {
            return Ok(messages);
        }
    }
}

fn to_event(mapping: &EventSourceMapping, messages: &[Message]) -> SqsEvent {
    let records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = m.receipt_handle.clone();
            record.body = m.body.clone();
            record.md5_of_body = m.md5_of_body.clone();
            record.attributes = m
                .attributes
                .as_ref()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                        .collect::<HashMap<_, _>>()
                })
                .unwrap_or_default();
            record.event_source = Some("aws:sqs".into());
            record.event_source_arn = Some(mapping.queue_arn.clone());
            record.aws_region = Some("us-east-1".into());
            record
        })
        .collect();
    let mut event = SqsEvent::default();
    event.records = records;
    event
}
