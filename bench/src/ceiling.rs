//! The emulator's own ceiling for the call mix of a simple task lifecycle: the calls the cost
//! unit measured one task making in this run (per operation, on average), replayed with no
//! project logic in between, as fast as the harness can issue them at a fixed concurrency,
//! against a twin of the stack's table (the same keys, indexes and stream) and its event bus.
//!
//! Before 2026-12-01 the mix was fixed at eight calls on a table without indexes (a conditional
//! create, two reads, two conditional writes, an SQS send, receive and delete), while a task
//! had come to make about 17 on a table with four indexes and a stream: the share of the
//! ceiling then mixed the request count (reported on its own, against its own target) into
//! what is meant to measure the pipeline's overhead.

use anyhow::{Context, Result};
use aws_sdk_dynamodb::types::{
    AttributeValue, BillingMode, GlobalSecondaryIndex, StreamSpecification,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Operations the replay issues; anything else the unit measured is left out (and named).
const REPLAYED: [&str; 9] = [
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:GetItem",
    "dynamodb:Query",
    "dynamodb:DeleteItem",
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "AWSEvents:PutEvents",
];
/// The stream poller's reads: the local host's, at a fixed rate whatever the load.
const NOT_PER_TASK: [&str; 1] = ["dynamodb:GetRecords"];
/// About a task item's size: its writes cost the same capacity and index work.
const TASK_ITEM_PAYLOAD: usize = 700;

/// Mean calls per simple task lifecycle, per `service:Operation`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CallMix(pub BTreeMap<String, f64>);

impl CallMix {
    /// The mix of the cost unit's `task_lifecycle` (its `requests`), keeping what is replayed.
    pub fn of_unit(units: &Value) -> Result<CallMix> {
        let requests = units["task_lifecycle"]["requests"]
            .as_object()
            .context("the cost unit measured no task lifecycle")?;
        let mut mix = BTreeMap::new();
        for (op, count) in requests {
            let count = count.as_f64().unwrap_or(0.0);
            if REPLAYED.contains(&op.as_str()) {
                mix.insert(op.clone(), count);
            } else if !NOT_PER_TASK.contains(&op.as_str()) && count > 0.0 {
                tracing::warn!(op, count, "not replayed in the emulator ceiling");
            }
        }
        Ok(CallMix(mix))
    }

    /// How many calls of `op` lifecycle `k` makes: over any run of lifecycles the total is
    /// the mean times their number, rounded down (0.4 a task: 0, 0, 1, 0, 1, ...).
    pub fn calls(&self, op: &str, k: u64) -> u64 {
        let mean = self.0.get(op).copied().unwrap_or(0.0).max(0.0);
        ((k + 1) as f64 * mean).floor() as u64 - (k as f64 * mean).floor() as u64
    }

    pub fn total(&self) -> f64 {
        self.0.values().sum()
    }
}

/// Where the replay writes: a twin of the stack's table, a queue, and the stack's bus.
struct Replay {
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    events: aws_sdk_eventbridge::Client,
    table: String,
    /// Every key attribute of the table and its indexes, so a task-shaped put writes them all.
    key_attributes: Vec<String>,
    queue: String,
    bus: String,
}

/// Lifecycles per second the emulator sustains for `mix` with `concurrency` callers.
pub async fn lifecycles_per_second(
    sdk: &aws_config::SdkConfig,
    mix: &CallMix,
    source_table: &str,
    bus: &str,
    concurrency: usize,
    duration: Duration,
) -> Result<f64> {
    let replay = std::sync::Arc::new(Replay::create(sdk, source_table, bus).await?);
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (replay, mix) = (replay.clone(), mix.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if replay.lifecycle(&mix, worker, done).await.is_ok() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await?;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

impl Replay {
    async fn create(sdk: &aws_config::SdkConfig, source_table: &str, bus: &str) -> Result<Self> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let name = format!(
            "bench-ceiling-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let source = dynamodb
            .describe_table()
            .table_name(source_table)
            .send()
            .await
            .with_context(|| format!("describing {source_table}"))?
            .table
            .context("no table description")?;
        let indexes: Vec<GlobalSecondaryIndex> = source
            .global_secondary_indexes()
            .iter()
            .map(|index| {
                GlobalSecondaryIndex::builder()
                    .set_index_name(index.index_name().map(str::to_owned))
                    .set_key_schema(Some(index.key_schema().to_vec()))
                    .set_projection(index.projection().cloned())
                    .build()
                    .map_err(anyhow::Error::from)
            })
            .collect::<Result<_>>()?;
        let mut key_attributes: Vec<String> = source
            .attribute_definitions()
            .iter()
            .map(|a| a.attribute_name().to_owned())
            .collect();
        key_attributes.sort();
        let mut create = dynamodb
            .create_table()
            .table_name(&name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(source.attribute_definitions().to_vec()))
            .set_key_schema(Some(source.key_schema().to_vec()))
            .set_global_secondary_indexes((!indexes.is_empty()).then_some(indexes));
        if let Some(stream) = source.stream_specification() {
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(stream.stream_enabled())
                    .set_stream_view_type(stream.stream_view_type().cloned())
                    .build()?,
            );
        }
        create
            .send()
            .await
            .context("creating the ceiling's table")?;
        let queue = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await?
            .queue_url
            .unwrap_or_default();
        Ok(Replay {
            dynamodb,
            sqs,
            events: aws_sdk_eventbridge::Client::new(sdk),
            table: name,
            key_attributes,
            queue,
            bus: bus.to_owned(),
        })
    }

    /// One lifecycle's calls: the task item's writes and reads, the small items' updates
    /// (counters, lease maps), the message's way through SQS, and the state-change events.
    async fn lifecycle(&self, mix: &CallMix, worker: usize, k: u64) -> Result<()> {
        let id = ulid::Ulid::new().to_string();
        // The task item's keys: every key attribute of the table and its indexes.
        let task_keys: HashMap<String, AttributeValue> = self
            .key_attributes
            .iter()
            .enumerate()
            .map(|(n, attribute)| (attribute.clone(), AttributeValue::S(format!("{id}#{n}"))))
            .collect();
        let primary = |keys: &HashMap<String, AttributeValue>| -> HashMap<String, AttributeValue> {
            keys.iter()
                .filter(|(name, _)| *name == "PK" || *name == "SK")
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect()
        };
        let key_of = |pk: String| {
            let small: HashMap<String, AttributeValue> = self
                .key_attributes
                .iter()
                .map(|a| (a.clone(), AttributeValue::S(pk.clone())))
                .collect();
            primary(&small)
        };
        for version in 0..mix.calls("dynamodb:PutItem", k) {
            let mut item = task_keys.clone();
            item.insert(
                "version".into(),
                AttributeValue::N((version + 1).to_string()),
            );
            item.insert(
                "payload".into(),
                AttributeValue::S("x".repeat(TASK_ITEM_PAYLOAD)),
            );
            let put = self
                .dynamodb
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item));
            let put = if version == 0 {
                put.condition_expression("attribute_not_exists(PK)")
            } else {
                put.condition_expression("version = :v")
                    .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
            };
            put.send().await?;
        }
        for n in 0..mix.calls("dynamodb:UpdateItem", k) {
            // Small items on keys of their own per caller, like the counters and lease maps.
            self.dynamodb
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(format!("COUNTER#{worker}#{}", n % 4))))
                .update_expression("ADD #c :one")
                .condition_expression("attribute_not_exists(#c) OR #c < :big")
                .expression_attribute_names("#c", "count")
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .expression_attribute_values(":big", AttributeValue::N(i64::MAX.to_string()))
                .send()
                .await?;
        }
        let task_key = primary(&task_keys);
        for _ in 0..mix.calls("dynamodb:GetItem", k) {
            self.dynamodb
                .get_item()
                .table_name(&self.table)
                .set_key(Some(task_key.clone()))
                .consistent_read(true)
                .send()
                .await?;
        }
        for _ in 0..mix.calls("dynamodb:Query", k) {
            self.dynamodb
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk")
                .expression_attribute_values(
                    ":pk",
                    task_key
                        .get("PK")
                        .cloned()
                        .unwrap_or(AttributeValue::S(id.clone())),
                )
                .send()
                .await?;
        }
        for _ in 0..mix.calls("dynamodb:DeleteItem", k) {
            self.dynamodb
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key_of(format!("GONE#{id}"))))
                .send()
                .await?;
        }
        for _ in 0..mix.calls("sqs:SendMessage", k) {
            self.sqs
                .send_message()
                .queue_url(&self.queue)
                .message_body(format!(r#"{{"taskId": "{id}"}}"#))
                .send()
                .await?;
        }
        let mut receipts = Vec::new();
        for _ in 0..mix.calls("sqs:ReceiveMessage", k) {
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue)
                .max_number_of_messages(10)
                .send()
                .await?;
            receipts.extend(
                received
                    .messages
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.receipt_handle),
            );
        }
        for receipt in receipts
            .into_iter()
            .take(mix.calls("sqs:DeleteMessage", k) as usize)
        {
            self.sqs
                .delete_message()
                .queue_url(&self.queue)
                .receipt_handle(receipt)
                .send()
                .await?;
        }
        for _ in 0..mix.calls("AWSEvents:PutEvents", k) {
            self.events
                .put_events()
                .entries(
                    aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source("taskflow.bench.ceiling")
                        .detail_type("Task Completed")
                        .detail(format!(r#"{{"taskId": "{id}"}}"#))
                        .build(),
                )
                .send()
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_fractional_mean_is_spread_over_lifecycles_to_its_exact_total() {
        let mix = CallMix(BTreeMap::from([
            ("dynamodb:UpdateItem".to_owned(), 9.2),
            ("AWSEvents:PutEvents".to_owned(), 0.4),
        ]));
        let total = |op: &str, n: u64| (0..n).map(|k| mix.calls(op, k)).sum::<u64>();
        assert_eq!(total("dynamodb:UpdateItem", 10), 92);
        assert_eq!(total("AWSEvents:PutEvents", 10), 4);
        assert_eq!(total("AWSEvents:PutEvents", 5), 2);
        assert!((0..10).all(|k| mix.calls("AWSEvents:PutEvents", k) <= 1));
        assert_eq!(
            total("sqs:SendMessage", 10),
            0,
            "an operation not in the mix"
        );
    }

    #[test]
    fn the_mix_is_the_units_requests_without_the_stream_pollers_reads() {
        let units = json!({"task_lifecycle": {"requests": {
            "dynamodb:PutItem": 3.0, "dynamodb:GetRecords": 2.0, "sqs:SendMessage": 1.0
        }}});
        let mix = CallMix::of_unit(&units).unwrap();
        assert_eq!(mix.total(), 4.0);
        assert!(!mix.0.contains_key("dynamodb:GetRecords"));
        assert!(CallMix::of_unit(&json!({})).is_err());
    }
}

#[cfg(test)]
#[path = "ceiling_tests.rs"]
mod against_the_emulator;
