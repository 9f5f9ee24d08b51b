//! The cost model: what one unit of work (a simple task, a chain step, a batch item) is
//! billed on AWS, in US dollars per million units, from what it used as AWS bills it
//! (BENCHMARKS.md "Cost model"):
//! - API Gateway REST requests;
//! - Lambda requests, and GB-seconds from each invocation's duration rounded up to the
//!   millisecond at its function's `MemorySize`;
//! - DynamoDB write and read request units (capacity units, [`crate::dynamodb_units`]);
//! - SQS requests as an event source mapping makes them, each started 64 KiB billed as one
//!   ([`crate::metering`]);
//! - Step Functions Standard state transitions; S3 requests.
//!
//! Beside each unit: the floor the design's services impose on one simple task, and the same
//! work on other orchestrators at their list prices (`bench/prices.json`, with sources).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One list price, with where it was read and when.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PriceEntry {
    /// US dollars per `per`; `None` where no published figure was found.
    pub usd: Option<f64>,
    pub per: String,
    pub source: String,
    pub date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl PriceEntry {
    /// The price; [`Prices::load`] refuses a table whose AWS prices are missing.
    pub fn rate(&self) -> f64 {
        self.usd.unwrap_or(f64::NAN)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Prices {
    pub region: String,
    pub note: String,
    pub lambda_arm64_gb_second: PriceEntry,
    pub lambda_request: PriceEntry,
    pub api_gateway_rest_request: PriceEntry,
    pub dynamodb_write_request_unit: PriceEntry,
    pub dynamodb_read_request_unit: PriceEntry,
    pub sqs_request: PriceEntry,
    pub step_functions_standard_transition: PriceEntry,
    pub step_functions_express_request: PriceEntry,
    pub step_functions_express_gb_second: PriceEntry,
    pub s3_put_request: PriceEntry,
    pub s3_get_request: PriceEntry,
    pub eventbridge_event: PriceEntry,
    pub lambda_durable_operation: PriceEntry,
    pub temporal_cloud_action: PriceEntry,
    pub inngest_execution: PriceEntry,
}

impl Prices {
    pub fn load() -> anyhow::Result<Prices> {
        Prices::parse(include_str!("../prices.json"))
    }

    pub fn parse(text: &str) -> anyhow::Result<Prices> {
        let prices: Prices = serde_json::from_str(text)?;
        for (name, entry) in [
            ("lambda_arm64_gb_second", &prices.lambda_arm64_gb_second),
            ("lambda_request", &prices.lambda_request),
            ("api_gateway_rest_request", &prices.api_gateway_rest_request),
            (
                "dynamodb_write_request_unit",
                &prices.dynamodb_write_request_unit,
            ),
            (
                "dynamodb_read_request_unit",
                &prices.dynamodb_read_request_unit,
            ),
            ("sqs_request", &prices.sqs_request),
            (
                "step_functions_standard_transition",
                &prices.step_functions_standard_transition,
            ),
            ("s3_put_request", &prices.s3_put_request),
            ("s3_get_request", &prices.s3_get_request),
            ("eventbridge_event", &prices.eventbridge_event),
        ] {
            anyhow::ensure!(
                entry.usd.is_some_and(|p| p >= 0.0),
                "bench/prices.json: {name} has no price, and the model needs it"
            );
        }
        Ok(prices)
    }
}

/// One function's share of a unit of work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LambdaUse {
    /// Logical id in template.yaml.
    pub function: String,
    pub memory_mb: f64,
    pub invocations: f64,
    /// Summed billed durations (each rounded up to the millisecond).
    pub billed_ms: f64,
    /// Where the durations come from.
    pub measured_as: String,
}

impl LambdaUse {
    pub fn gb_seconds(&self) -> f64 {
        self.billed_ms / 1000.0 * self.memory_mb / 1024.0
    }
}

/// What one unit of work uses, as AWS bills it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitUsage {
    pub api_requests: f64,
    pub lambda: Vec<LambdaUse>,
    pub dynamodb_write_units: f64,
    pub dynamodb_read_units: f64,
    /// As the event source mapping makes them, per started 64 KiB.
    pub sqs_requests: f64,
    pub state_transitions: f64,
    /// PUT, COPY, POST and LIST.
    pub s3_put_requests: f64,
    /// GET and HEAD.
    pub s3_get_requests: f64,
    /// State-change events published to the bus, per started 64 KiB.
    #[serde(default)]
    pub events: f64,
}

impl UnitUsage {
    pub fn lambda_gb_seconds(&self) -> f64 {
        self.lambda.iter().map(LambdaUse::gb_seconds).sum()
    }

    pub fn lambda_invocations(&self) -> f64 {
        self.lambda.iter().map(|l| l.invocations).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub per_million_usd: f64,
    pub breakdown_usd: BTreeMap<String, f64>,
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

const MILLION: f64 = 1_000_000.0;

/// Dollars per million units, by service (each rounded to the tenth of a cent, the total
/// their sum).
pub fn per_million(usage: &UnitUsage, prices: &Prices) -> Cost {
    let breakdown: BTreeMap<String, f64> = [
        (
            "api_gateway",
            usage.api_requests * prices.api_gateway_rest_request.rate(),
        ),
        (
            "lambda",
            usage.lambda_invocations() * prices.lambda_request.rate()
                + usage.lambda_gb_seconds() * prices.lambda_arm64_gb_second.rate(),
        ),
        (
            "dynamodb",
            usage.dynamodb_write_units * prices.dynamodb_write_request_unit.rate()
                + usage.dynamodb_read_units * prices.dynamodb_read_request_unit.rate(),
        ),
        ("sqs", usage.sqs_requests * prices.sqs_request.rate()),
        (
            "step_functions",
            usage.state_transitions * prices.step_functions_standard_transition.rate(),
        ),
        (
            "s3",
            usage.s3_put_requests * prices.s3_put_request.rate()
                + usage.s3_get_requests * prices.s3_get_request.rate(),
        ),
        (
            "eventbridge",
            usage.events * prices.eventbridge_event.rate(),
        ),
    ]
    .into_iter()
    .map(|(service, usd)| (service.to_owned(), round3(usd * MILLION)))
    .collect();
    Cost {
        per_million_usd: round3(breakdown.values().sum()),
        breakdown_usd: breakdown,
    }
}

/// How long each of the floor's two invocations runs: "short" in the words.
pub const FLOOR_INVOCATION_MS: f64 = 10.0;

/// The least the design's services bill for one simple task created through the API (issue
/// 16): one REST API request; two short Lambda invocations at 128 MB; one SQS send, received
/// and deleted in batches of 10; three single-unit DynamoDB writes.
pub fn floor_usage() -> UnitUsage {
    let short = |function: &str| LambdaUse {
        function: function.to_owned(),
        memory_mb: 128.0,
        invocations: 1.0,
        billed_ms: FLOOR_INVOCATION_MS,
        measured_as: format!("assumed: {FLOOR_INVOCATION_MS} ms"),
    };
    UnitUsage {
        api_requests: 1.0,
        lambda: vec![short("api"), short("worker")],
        dynamodb_write_units: 3.0,
        sqs_requests: 1.0 + 0.1 + 0.1,
        ..UnitUsage::default()
    }
}

/// Pollers an event source mapping keeps on an idle queue: it scales back to five, and only
/// below that when the mapping has no maximum concurrency (AWS Lambda Developer Guide,
/// "Configuring scaling behavior for SQS event source mappings"); every mapping here sets one.
pub const ESM_IDLE_POLLERS: f64 = 5.0;
/// The longest long poll SQS allows; assumed to be what each idle poller waits per request.
pub const ESM_LONG_POLL_SECONDS: f64 = 20.0;
pub const SECONDS_PER_MONTH: f64 = 30.0 * 86_400.0;

/// Empty receives a month of idle event source mappings on `queues` queues make.
pub fn esm_idle_monthly_requests(queues: usize) -> f64 {
    queues as f64 * ESM_IDLE_POLLERS * SECONDS_PER_MONTH / ESM_LONG_POLL_SECONDS
}

pub fn esm_idle_monthly_usd(queues: usize, prices: &Prices) -> f64 {
    esm_idle_monthly_requests(queues) * prices.sqs_request.rate()
}

/// The three units of work the bench prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Task,
    /// A step of a chain of `steps`.
    ChainStep {
        steps: usize,
    },
    /// An item of a batch run in chunks of `items_per_chunk`.
    BatchItem {
        items_per_chunk: usize,
    },
}

/// The same work on another orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alternative {
    pub name: String,
    /// Orchestration units per unit of work, in the orchestrator's own billing unit.
    pub billed_per_unit: f64,
    pub billing_unit: String,
    /// `None` where the price was not found.
    pub orchestration_per_million_usd: Option<f64>,
    /// The orchestration plus the same API front door and Lambda compute as ours.
    pub per_million_usd: Option<f64>,
    pub assumption: String,
    pub source: String,
    pub date: String,
}

/// The same work on Step Functions Standard and Express, Lambda durable functions, Temporal
/// Cloud and Inngest: each orchestrator's own charge at its list price, plus the API request
/// and Lambda compute this unit used here (none of them removes the API front door or the
/// work itself). Storage and plan fees are left out.
pub fn alternatives(unit: Unit, usage: &UnitUsage, prices: &Prices) -> Vec<Alternative> {
    let ours = per_million(usage, prices);
    let front_and_compute = ours.breakdown_usd["api_gateway"] + ours.breakdown_usd["lambda"];
    // One orchestration step per task, per chain step, or per batch chunk.
    let (steps, executions, shape) = match unit {
        Unit::Task => (
            1.0,
            1.0,
            "one execution whose one step runs the task".to_owned(),
        ),
        Unit::ChainStep { steps } => (
            1.0,
            1.0 / steps.max(1) as f64,
            format!("one execution per chain of {steps}, one step per chain step"),
        ),
        Unit::BatchItem { items_per_chunk } => {
            let per_chunk = 1.0 / items_per_chunk.max(1) as f64;
            (
                per_chunk,
                per_chunk,
                format!("one step per chunk of {items_per_chunk} items, one execution per chunk"),
            )
        }
    };
    // Lambda-hosted work per execution, for Express's duration charge.
    let work_ms: f64 = usage
        .lambda
        .iter()
        .filter(|l| l.function != "ApiFunction")
        .map(|l| l.billed_ms)
        .sum();
    let express_ms = ((work_ms / executions.max(f64::MIN_POSITIVE)) / 100.0)
        .ceil()
        .max(1.0)
        * 100.0;
    let express_gb_seconds = executions * express_ms / 1000.0 * 64.0 / 1024.0;
    let option = |units: f64, price: &PriceEntry| price.usd.map(|p| round3(units * p * MILLION));
    // Where starting an execution is billed (durable functions, Temporal, Inngest), a
    // chain's start spreads over its steps and a chunk's over its items.
    let started_and_steps = steps + executions;
    let express = prices
        .step_functions_express_request
        .usd
        .zip(prices.step_functions_express_gb_second.usd)
        .map(|(request, gb_second)| {
            round3((executions * request + express_gb_seconds * gb_second) * MILLION)
        });
    let list = [
        (
            "Step Functions Standard",
            steps,
            "state transitions",
            option(steps, &prices.step_functions_standard_transition),
            format!("{shape}; one transition per step"),
            &prices.step_functions_standard_transition,
        ),
        (
            "Step Functions Express",
            executions,
            "executions",
            express,
            format!(
                "{shape}; each execution as long as the Lambda work it waits for, {express_ms:.0} ms at 64 MB"
            ),
            &prices.step_functions_express_request,
        ),
        (
            "Lambda durable functions",
            started_and_steps,
            "durable operations",
            option(started_and_steps, &prices.lambda_durable_operation),
            format!("{shape}; the execution's start is one operation, each step one; durable state written and kept left out"),
            &prices.lambda_durable_operation,
        ),
        (
            "Temporal Cloud",
            started_and_steps,
            "actions",
            option(started_and_steps, &prices.temporal_cloud_action),
            format!("{shape}; a workflow started and each activity started is one action; plan fee (10% on Developer) and storage left out"),
            &prices.temporal_cloud_action,
        ),
        (
            "Inngest",
            started_and_steps,
            "executions",
            option(started_and_steps, &prices.inngest_execution),
            format!("{shape}; a function run and each step is one execution"),
            &prices.inngest_execution,
        ),
    ];
    list.into_iter()
        .map(
            |(name, billed_per_unit, billing_unit, orchestration, assumption, price)| Alternative {
                name: name.to_owned(),
                billed_per_unit,
                billing_unit: billing_unit.to_owned(),
                per_million_usd: orchestration.map(|o| round3(o + front_and_compute)),
                orchestration_per_million_usd: orchestration,
                assumption,
                source: price.source.clone(),
                date: price.date.clone(),
            },
        )
        .collect()
}

/// A unit of the 2026-11-26 run (request-based: `bench/src/baseline_2026-11-26.json`) with
/// its SQS requests counted as the event source mapping makes them. That run counted the
/// local poller's requests and kept no batch sizes, so each message consumed (deleted) is
/// taken as received and deleted alone (exact on the critical tier, BatchSize 1; an upper
/// bound elsewhere), and a message consumed but never seen sent was sent by Step Functions.
/// DynamoDB stays at one unit per request (two per transaction): item sizes were not kept.
pub fn previous_unit_with_esm_sqs(unit: &Value, prices: &Prices) -> Value {
    let requests = &unit["requests"];
    let count = |op: &str| requests[op].as_f64().unwrap_or(0.0);
    let consumed = count("sqs:DeleteMessage") + count("sqs:DeleteMessageBatch");
    let sends = (count("sqs:SendMessage") + count("sqs:SendMessageBatch")).max(consumed);
    let other: f64 = requests
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(op, _)| {
            op.starts_with("sqs:")
                && !["Send", "Receive", "Delete"]
                    .iter()
                    .any(|p| op.starts_with(&format!("sqs:{p}")))
        })
        .filter_map(|(_, n)| n.as_f64())
        .sum();
    let sqs_requests = sends + 2.0 * consumed + other;
    let mut breakdown: BTreeMap<String, f64> =
        serde_json::from_value(unit["cost"]["breakdown_usd"].clone()).unwrap_or_default();
    breakdown.insert(
        "sqs".to_owned(),
        round3(sqs_requests * prices.sqs_request.rate() * MILLION),
    );
    json!({
        "per_million_usd": round3(breakdown.values().sum()),
        "breakdown_usd": breakdown,
        "sqs_requests": round3(sqs_requests),
        "request_based_per_million_usd": unit["cost"]["per_million_usd"],
    })
}

/// The 2026-11-26 run, as committed then.
pub const BASELINE: &str = include_str!("baseline_2026-11-26.json");

/// Each unit of the 2026-11-26 run: as published, and with SQS as the ESM makes them.
pub fn previous_run(prices: &Prices) -> Value {
    let baseline: Value = serde_json::from_str(BASELINE).expect("a valid baseline");
    let units = &baseline["requests_per_unit"];
    let unit = |name: &str| previous_unit_with_esm_sqs(&units[name], prices);
    json!({
        "date": baseline["date"].as_str().map(|d| d[..10].to_owned()),
        "source": baseline["source"],
        "task_lifecycle": unit("task_lifecycle"),
        "chain_step": unit("chain_step"),
        "batch_item": unit("batch_item"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        Prices::load().expect("bench/prices.json")
    }

    #[test]
    fn every_price_has_a_source_and_a_date() {
        let prices = serde_json::to_value(prices()).unwrap();
        let entries: Vec<_> = prices
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_object())
            .collect();
        assert_eq!(entries.len(), 15);
        for (name, entry) in entries {
            assert!(
                entry["source"].as_str().unwrap().starts_with("https://"),
                "{name}"
            );
            assert_eq!(entry["date"].as_str().unwrap().len(), 10, "{name}");
            // A missing price says why.
            if entry["usd"].is_null() {
                assert!(
                    entry["note"].as_str().unwrap().starts_with("Not found"),
                    "{name}"
                );
            }
        }
        let mut broken = serde_json::to_value(super::Prices::load().unwrap()).unwrap();
        broken["sqs_request"]["usd"] = Value::Null;
        assert!(Prices::parse(&broken.to_string()).is_err());
    }

    #[test]
    fn bills_each_service_from_what_the_unit_used() {
        let usage = UnitUsage {
            api_requests: 1.0,
            lambda: vec![LambdaUse {
                function: "WorkerFunction".into(),
                memory_mb: 256.0,
                invocations: 2.0,
                billed_ms: 1000.0,
                measured_as: String::new(),
            }],
            dynamodb_write_units: 4.0,
            dynamodb_read_units: 2.0,
            sqs_requests: 3.0,
            state_transitions: 2.0,
            s3_put_requests: 1.0,
            s3_get_requests: 10.0,
            events: 3.0,
        };
        let cost = per_million(&usage, &prices());
        let b = &cost.breakdown_usd;
        assert_eq!(b["api_gateway"], 3.5);
        // 2 × $0.20 + 0.25 GB-s × $13.3334.
        assert_eq!(b["lambda"], round3(0.4 + 0.25 * 13.3334));
        assert_eq!(b["dynamodb"], 4.0 * 0.625 + 2.0 * 0.125);
        assert_eq!(b["sqs"], 1.2);
        assert_eq!(b["step_functions"], 50.0);
        assert_eq!(b["s3"], 5.0 + 4.0);
        assert_eq!(b["eventbridge"], 3.0);
        assert_eq!(cost.per_million_usd, round3(b.values().sum()));
    }

    #[test]
    fn the_floor_is_about_six_dollars_most_of_it_the_api_request() {
        let floor = per_million(&floor_usage(), &prices());
        // 3.50 API + 0.40 + 0.033 Lambda + 1.875 DynamoDB + 0.48 SQS.
        assert_eq!(floor.per_million_usd, 6.288);
        assert_eq!(floor.breakdown_usd["api_gateway"], 3.5);
        assert_eq!(floor.breakdown_usd["sqs"], 0.48);
        assert_eq!(floor.breakdown_usd["dynamodb"], 1.875);
    }

    #[test]
    fn idle_event_source_mappings_cost_a_fixed_amount_a_month() {
        // 5 pollers × 2,592,000 s / 20 s = 648,000 empty receives per queue.
        assert_eq!(esm_idle_monthly_requests(1), 648_000.0);
        assert_eq!(round3(esm_idle_monthly_usd(6, &prices())), 1.555);
    }

    #[test]
    fn the_previous_run_with_sqs_as_the_esm_makes_them() {
        let previous = previous_run(&prices());
        assert_eq!(previous["date"], "2026-11-26");
        let total = |unit: &str| previous[unit]["per_million_usd"].as_f64().unwrap();
        let published = |unit: &str| {
            previous[unit]["request_based_per_million_usd"]
                .as_f64()
                .unwrap()
        };
        assert_eq!(
            [
                published("task_lifecycle"),
                published("chain_step"),
                published("batch_item")
            ],
            [8.538, 68.172, 0.969]
        );
        // Task: 1.42 messages consumed on the critical tier (BatchSize 1): 1.42 sends,
        // receives and deletes, 4.26 requests, $1.704 instead of $1.168.
        assert_eq!(previous["task_lifecycle"]["sqs_requests"], 4.26);
        assert_eq!(total("task_lifecycle"), 9.074);
        // Chain step: 3.2 messages consumed, sent by Step Functions: 9.6 requests.
        assert_eq!(total("chain_step"), 70.732);
        assert_eq!(total("batch_item"), 0.986);
    }

    #[test]
    fn alternatives_price_the_same_work_and_say_when_a_price_is_missing() {
        let prices = prices();
        let usage = UnitUsage {
            api_requests: 1.0,
            lambda: vec![LambdaUse {
                function: "WorkerFunction".into(),
                memory_mb: 256.0,
                invocations: 1.0,
                billed_ms: 150.0,
                measured_as: String::new(),
            }],
            ..UnitUsage::default()
        };
        let ours = per_million(&usage, &prices);
        let front = ours.breakdown_usd["api_gateway"] + ours.breakdown_usd["lambda"];
        let list = alternatives(Unit::Task, &usage, &prices);
        let by = |name: &str| list.iter().find(|a| a.name == name).unwrap().clone();
        assert_eq!(
            by("Step Functions Standard").orchestration_per_million_usd,
            Some(25.0)
        );
        // Express: $1 a million plus 200 ms at 64 MB.
        assert_eq!(
            by("Step Functions Express").orchestration_per_million_usd,
            Some(round3(1.0 + 0.2 * 0.0625 * 16.67))
        );
        assert_eq!(
            by("Lambda durable functions").orchestration_per_million_usd,
            Some(16.0)
        );
        assert_eq!(
            by("Temporal Cloud").orchestration_per_million_usd,
            Some(100.0)
        );
        assert_eq!(
            by("Temporal Cloud").per_million_usd,
            Some(round3(100.0 + front))
        );
        assert_eq!(by("Inngest").per_million_usd, None);
        let chain = alternatives(Unit::ChainStep { steps: 5 }, &usage, &prices);
        assert_eq!(chain[0].orchestration_per_million_usd, Some(25.0));
        // A step, and a fifth of the chain's start.
        assert_eq!(chain[2].billed_per_unit, 1.2);
        let batch = alternatives(
            Unit::BatchItem {
                items_per_chunk: 100,
            },
            &usage,
            &prices,
        );
        assert_eq!(batch[3].orchestration_per_million_usd, Some(1.0));
    }
}
