//! A local stand-in for a Lambda DynamoDB stream event source mapping: reads each shard of
//! the table's stream through the emulator's DynamoDB Streams API (DescribeStream,
//! GetShardIterator, GetRecords), drops the records `FilterCriteria` does not pass, and
//! invokes the function with batches of up to `BatchSize` records, one batch per shard at a
//! time and in stream order, as Lambda does.
//!
//! Failures as on Lambda: a batch item failure retries the batch from the reported record
//! (records before it count as done); an invocation error retries the batch, cut in two
//! first when `BisectBatchOnFunctionError` is set; after `MaximumRetryAttempts` the batch's
//! coordinates are sent to the `OnFailure` queue and the shard moves on. Retries wait
//! 0.5 s, 1 s, 2 s… (at most 5 s); the shard waits with them.

use crate::event_filter;
use crate::provision::StreamSource;
use aws_lambda_events::event::dynamodb::{Event, EventRecord, StreamRecord};
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The function behind a stream mapping: `Err` is a failed invocation (error, timeout, crash).
pub type StreamHandler = Arc<
    dyn Fn(Event) -> Pin<Box<dyn Future<Output = Result<DynamoDbEventResponse, String>> + Send>>
        + Send
        + Sync,
>;

/// What the mapping has done so far, for tests and `make dev`.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Records read from the stream.
    pub read: AtomicU64,
    /// Records the filter passed to the function.
    pub passed: AtomicU64,
    /// Invocations, and those that failed or reported a batch item failure.
    pub invocations: AtomicU64,
    pub failed_invocations: AtomicU64,
    /// Batches sent to the OnFailure queue.
    pub dead_lettered: AtomicU64,
    /// The `PK` of each record of the latest failed invocations (at most 1,000).
    failed_keys: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl StreamStats {
    /// Whether a failed invocation held a record whose `PK` contains `text`.
    pub fn failed_a_record_with(&self, text: &str) -> bool {
        let keys = self.failed_keys.lock().expect("not poisoned");
        keys.iter().any(|k| k.contains(text))
    }

    fn record_failure(&self, records: &[EventRecord]) {
        self.failed_invocations.fetch_add(1, Ordering::Relaxed);
        let mut keys = self.failed_keys.lock().expect("not poisoned");
        for record in records {
            if let Some(serde_dynamo::AttributeValue::S(pk)) = record.change.keys.get("PK") {
                if keys.len() == 1_000 {
                    keys.pop_front();
                }
                keys.push_back(pk.clone());
            }
        }
    }
}

/// Polls between empty reads (Lambda polls each shard about four times a second).
const IDLE_POLL: Duration = Duration::from_millis(250);

pub struct StreamMapping {
    pub source: StreamSource,
    /// The OnFailure queue's URL.
    pub on_failure_queue_url: Option<String>,
    pub stats: Arc<StreamStats>,
}

/// Reads every shard of the stream until `shutdown`.
pub fn spawn(
    mapping: StreamMapping,
    streams: aws_sdk_dynamodbstreams::Client,
    sqs: aws_sdk_sqs::Client,
    handler: StreamHandler,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mapping = Arc::new(mapping);
        let shards = loop {
            match shard_ids(&streams, &mapping.source.stream_arn).await {
                Ok(shards) if !shards.is_empty() => break shards,
                Ok(_) => tracing::debug!("the stream has no shard yet"),
                Err(err) => tracing::warn!(%err, "describing the stream failed; retrying"),
            }
            if *shutdown.borrow() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let readers: Vec<_> = shards
            .into_iter()
            .map(|shard| {
                let reader = ShardReader {
                    mapping: mapping.clone(),
                    streams: streams.clone(),
                    sqs: sqs.clone(),
                    handler: handler.clone(),
                    shard,
                };
                tokio::spawn(reader.run(shutdown.clone()))
            })
            .collect();
        for reader in readers {
            let _ = reader.await;
        }
    })
}

async fn shard_ids(
    streams: &aws_sdk_dynamodbstreams::Client,
    arn: &str,
) -> Result<Vec<String>, String> {
    let out = streams
        .describe_stream()
        .stream_arn(arn)
        .send()
        .await
        .map_err(|e| format!("{}", aws_sdk_dynamodbstreams::error::DisplayErrorContext(e)))?;
    Ok(out
        .stream_description()
        .map(|d| {
            d.shards()
                .iter()
                .filter_map(|s| s.shard_id().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

struct ShardReader {
    mapping: Arc<StreamMapping>,
    streams: aws_sdk_dynamodbstreams::Client,
    sqs: aws_sdk_sqs::Client,
    handler: StreamHandler,
    shard: String,
}

impl ShardReader {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let source = &self.mapping.source;
        let mut iterator = None;
        while !*shutdown.borrow() {
            let current = match iterator.take() {
                Some(it) => it,
                None => match self.first_iterator().await {
                    Ok(it) => it,
                    Err(err) => {
                        tracing::warn!(%err, "no shard iterator; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let (records, next) = tokio::select! {
                read = self.read_batch(current.clone()) => match read {
                    Ok(read) => read,
                    Err(err) => {
                        tracing::warn!(%err, "GetRecords failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        iterator = Some(current);
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            iterator = next;
            if records.is_empty() {
                continue;
            }
            self.mapping
                .stats
                .read
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            let passed: Vec<EventRecord> = records
                .iter()
                .map(|r| to_event_record(r, &source.stream_arn))
                .filter(|r| {
                    let json = serde_json::to_value(r).unwrap_or_default();
                    event_filter::passes(&source.filters, &json)
                })
                .collect();
            if passed.is_empty() {
                continue;
            }
            self.mapping
                .stats
                .passed
                .fetch_add(passed.len() as u64, Ordering::Relaxed);
            self.deliver(passed).await;
        }
    }

    async fn first_iterator(&self) -> Result<String, String> {
        let kind = ShardIteratorType::from(self.mapping.source.starting_position.as_str());
        self.streams
            .get_shard_iterator()
            .stream_arn(&self.mapping.source.stream_arn)
            .shard_id(&self.shard)
            .shard_iterator_type(kind)
            .send()
            .await
            .map_err(|e| format!("{}", aws_sdk_dynamodbstreams::error::DisplayErrorContext(e)))?
            .shard_iterator
            .ok_or_else(|| "no iterator in the answer".to_string())
    }

    /// Up to `BatchSize` records, waiting up to the batching window to fill the batch.
    async fn read_batch(
        &self,
        mut iterator: String,
    ) -> Result<(Vec<Record>, Option<String>), String> {
        let source = &self.mapping.source;
        let deadline =
            Instant::now() + Duration::from_secs(u64::from(source.max_batching_window_seconds));
        let mut records = Vec::new();
        loop {
            let wanted = (source.batch_size as usize)
                .saturating_sub(records.len())
                .clamp(1, 1000);
            let out = self
                .streams
                .get_records()
                .shard_iterator(&iterator)
                .limit(wanted as i32)
                .send()
                .await
                .map_err(|e| {
                    format!("{}", aws_sdk_dynamodbstreams::error::DisplayErrorContext(e))
                })?;
            let got = out.records().len();
            records.extend(out.records().iter().cloned());
            let Some(next) = out.next_shard_iterator().map(String::from) else {
                return Ok((records, None)); // the shard is closed
            };
            iterator = next;
            if records.len() >= source.batch_size as usize
                || Instant::now() >= deadline && !records.is_empty()
            {
                return Ok((records, Some(iterator)));
            }
            if got == 0 {
                if records.is_empty() {
                    tokio::time::sleep(IDLE_POLL).await;
                    return Ok((records, Some(iterator)));
                }
                tokio::time::sleep(
                    IDLE_POLL.min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
            }
        }
    }

    /// Invokes the function until the batch is done or dead-lettered.
    async fn deliver(&self, batch: Vec<EventRecord>) {
        let source = &self.mapping.source;
        let stats = &self.mapping.stats;
        // Work left, in order: a bisected batch becomes two.
        let mut queue: std::collections::VecDeque<(Vec<EventRecord>, i64)> =
            std::collections::VecDeque::from([(batch, 0)]);
        while let Some((records, attempt)) = queue.pop_front() {
            stats.invocations.fetch_add(1, Ordering::Relaxed);
            let mut event = Event::default();
            event.records = records.clone();
            let outcome = (self.handler)(event).await;
            let failed_from = match &outcome {
                // Without ReportBatchItemFailures, Lambda ignores what the function answers.
                Ok(_) if !source.report_batch_item_failures => continue,
                Ok(response) if response.batch_item_failures.is_empty() => continue,
                Ok(response) => {
                    // Lambda resumes from the lowest sequence number reported.
                    let lowest = response
                        .batch_item_failures
                        .iter()
                        .filter_map(|f| f.item_identifier.clone())
                        .filter_map(|id| {
                            records.iter().position(|r| {
                                r.change.sequence_number.as_deref() == Some(id.as_str())
                            })
                        })
                        .min();
                    // An identifier that names no record of the batch fails the whole batch.
                    lowest.unwrap_or(0)
                }
                Err(_) => 0,
            };
            stats.record_failure(&records);
            let left = records[failed_from..].to_vec();
            let exhausted =
                source.maximum_retry_attempts >= 0 && attempt >= source.maximum_retry_attempts;
            if exhausted {
                self.dead_letter(&left, &outcome).await;
                continue;
            }
            let wait = Duration::from_millis(500 * 2u64.pow(attempt.clamp(0, 4) as u32))
                .min(Duration::from_secs(5));
            tracing::warn!(
                records = left.len(),
                attempt = attempt + 1,
                error = ?outcome.as_ref().err(),
                "stream batch failed; retrying in {wait:?}"
            );
            tokio::time::sleep(wait).await;
            if outcome.is_err() && source.bisect_batch_on_function_error && left.len() > 1 {
                let half = left.len() / 2;
                queue.push_front((left[half..].to_vec(), attempt + 1));
                queue.push_front((left[..half].to_vec(), attempt + 1));
            } else {
                queue.push_front((left, attempt + 1));
            }
        }
    }

    /// The batch's coordinates on the OnFailure queue, in the shape Lambda sends.
    async fn dead_letter(
        &self,
        records: &[EventRecord],
        outcome: &Result<DynamoDbEventResponse, String>,
    ) {
        self.mapping
            .stats
            .dead_lettered
            .fetch_add(1, Ordering::Relaxed);
        let sequence = |r: Option<&EventRecord>| r.and_then(|r| r.change.sequence_number.clone());
        let body = serde_json::json!({
            "requestContext": {
                "condition": "RetryAttemptsExhausted",
                "approximateInvokeCount": self.mapping.source.maximum_retry_attempts + 1,
            },
            "responseContext": {"functionError": outcome.as_ref().err()},
            "DDBStreamBatchInfo": {
                "shardId": self.shard,
                "startSequenceNumber": sequence(records.first()),
                "endSequenceNumber": sequence(records.last()),
                "batchSize": records.len(),
                "streamArn": self.mapping.source.stream_arn,
            },
        });
        tracing::error!(
            records = records.len(),
            "stream batch failed after its retries; sent to the OnFailure queue"
        );
        if let Some(url) = &self.mapping.on_failure_queue_url {
            if let Err(err) = self
                .sqs
                .send_message()
                .queue_url(url)
                .message_body(body.to_string())
                .send()
                .await
            {
                tracing::error!(error = ?err, "could not send to the OnFailure queue");
            }
        }
    }
}

/// A stream record as Lambda hands it to the function.
fn to_event_record(record: &Record, stream_arn: &str) -> EventRecord {
    let mut out = EventRecord::default();
    out.aws_region = record.aws_region().unwrap_or("us-east-1").to_string();
    out.event_id = record.event_id().unwrap_or_default().to_string();
    out.event_name = record
        .event_name()
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    out.event_source = record.event_source().map(String::from);
    out.event_version = record.event_version().map(String::from);
    out.event_source_arn = Some(stream_arn.to_string());
    let mut change = StreamRecord::default();
    if let Some(data) = record.dynamodb() {
        let item = |image: Option<
            &std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>,
        >| {
            image
                .cloned()
                .map(serde_dynamo::Item::from)
                .unwrap_or_default()
        };
        if let Some(at) = data.approximate_creation_date_time() {
            change.approximate_creation_date_time =
                chrono::DateTime::from_timestamp(at.secs(), at.subsec_nanos()).unwrap_or_default();
        }
        change.keys = item(data.keys.as_ref());
        change.new_image = item(data.new_image.as_ref());
        change.old_image = item(data.old_image.as_ref());
        change.sequence_number = data.sequence_number().map(String::from);
        change.size_bytes = data.size_bytes().unwrap_or_default();
    }
    out.change = change;
    out
}
