//! Cost per unit of work (BENCHMARKS.md "Cost model"): a simple task, a chain step and a
//! batch item, each run alone on a quiet stack with the proxy metering (DynamoDB capacity
//! units, SQS requests as an event source mapping makes them, worker invocation durations).
//!
//! What is not the unit's own is taken out of each window: the pollers' and the sweeper's
//! background (the idle baseline's rate times the window's length), and the harness's status
//! reads (each costs what a calibration read measured: its `GET` goes through the API, which
//! also writes the agency's request bucket). The reads are few and slow on purpose.

use crate::client::Api;
use crate::cost::{self, LambdaUse, Prices, Unit, UnitUsage};
use crate::counting_proxy::{CountingProxy, Window};
use crate::metering::Metered;
use crate::stats;
use crate::workloads;
use anyhow::{Context, Result};
use local_stack::provision::{FunctionEvent, ProvisionedStack};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const CHAIN_STEPS: usize = 5;
const BATCH_ITEMS: usize = 1000;
const ITEMS_PER_CHUNK: usize = 100;
const CALIBRATION_READS: usize = 10;
const API_FUNCTION: &str = "ApiFunction";

/// A window's requests and metered figures, as numbers that can be scaled and subtracted.
#[derive(Debug, Clone, Default)]
struct Measured {
    counts: BTreeMap<String, f64>,
    metered: Metered,
}

impl Measured {
    fn of(window: &Window) -> Measured {
        Measured {
            counts: window
                .counts
                .iter()
                .map(|(op, n)| (op.clone(), *n as f64))
                .collect(),
            metered: window.metered.clone(),
        }
    }

    /// `self + k × other`, floored at 0.
    fn plus(&self, other: &Measured, k: f64) -> Measured {
        let mut counts = self.counts.clone();
        for (op, n) in &other.counts {
            let entry = counts.entry(op.clone()).or_default();
            *entry = (*entry + k * n).max(0.0);
        }
        counts.retain(|_, n| *n > 0.0);
        Measured {
            counts,
            metered: self.metered.plus(&other.metered, k),
        }
    }

    fn scaled(&self, k: f64) -> Measured {
        Measured::default().plus(self, k)
    }

    fn count(&self, op: &str) -> f64 {
        self.counts.get(op).copied().unwrap_or(0.0)
    }
}

/// Which function each queue's event source mapping invokes, and at what `MemorySize`.
struct Wiring {
    api_memory_mb: f64,
    /// Queue URL → (function, MemorySize).
    queues: BTreeMap<String, (String, f64)>,
}

impl Wiring {
    fn of(stack: &ProvisionedStack) -> Wiring {
        let mut queues = BTreeMap::new();
        for (name, function) in &stack.functions {
            for event in &function.events {
                if let FunctionEvent::Sqs { queue_url, .. } = event {
                    queues.insert(queue_url.clone(), (name.clone(), function.memory_mb as f64));
                }
            }
        }
        Wiring {
            api_memory_mb: stack
                .function(API_FUNCTION)
                .map_or(128.0, |f| f.memory_mb as f64),
            queues,
        }
    }

    /// What one unit used, from its share of a window; `api_ms` is its API request's latency.
    fn usage(
        &self,
        unit: &Measured,
        api_requests: f64,
        api_ms: f64,
        transitions: f64,
    ) -> UnitUsage {
        let mut lambda = vec![LambdaUse {
            function: API_FUNCTION.to_owned(),
            memory_mb: self.api_memory_mb,
            invocations: api_requests,
            billed_ms: api_requests * api_ms.ceil(),
            measured_as: "the POST's latency at the client (an upper bound)".to_owned(),
        }];
        for (queue, invocations) in &unit.metered.invocations {
            let (function, memory_mb) = self
                .queues
                .get(queue)
                .cloned()
                .unwrap_or_else(|| (format!("unmapped queue {queue}"), 0.0));
            match lambda.iter_mut().find(|l| l.function == function) {
                Some(known) => {
                    known.invocations += invocations.count;
                    known.billed_ms += invocations.billed_ms;
                }
                None => lambda.push(LambdaUse {
                    function,
                    memory_mb,
                    invocations: invocations.count,
                    billed_ms: invocations.billed_ms,
                    measured_as: "receive to first delete of each batch, at the proxy".to_owned(),
                }),
            }
        }
        UnitUsage {
            api_requests,
            lambda,
            dynamodb_write_units: unit.metered.dynamodb.write_units(),
            dynamodb_read_units: unit.metered.dynamodb.read_units(),
            sqs_requests: unit.metered.sqs.billed_requests(),
            state_transitions: transitions,
            s3_put_requests: ["s3:PutObject", "s3:Post", "s3:ListObjectsV2"]
                .iter()
                .map(|op| unit.count(op))
                .sum(),
            s3_get_requests: unit.count("s3:GetObject") + unit.count("s3:HeadObject"),
        }
    }
}

/// Cost per unit of work, metered. `idle` is a window of the idle stack with metering on.
pub async fn requests_per_unit(
    api: &Api,
    proxy: &CountingProxy,
    idle: &Window,
    sdk: &aws_config::SdkConfig,
    stack: &ProvisionedStack,
    tasks: usize,
) -> Result<Value> {
    let wiring = Wiring::of(stack);
    let queues: Vec<String> = wiring.queues.keys().cloned().collect();
    let quiet_at_start = wait_for_empty_queues(sdk, &queues, Duration::from_secs(300)).await;
    proxy.set_metering(true);
    let measured = measure(api, proxy, idle, sdk, &wiring, &queues, tasks).await;
    proxy.set_metering(false);
    let mut measured = measured?;
    measured["quiet_at_start"] = json!(quiet_at_start);
    Ok(measured)
}

async fn measure(
    api: &Api,
    proxy: &CountingProxy,
    idle: &Window,
    sdk: &aws_config::SdkConfig,
    wiring: &Wiring,
    queues: &[String],
    tasks: usize,
) -> Result<Value> {
    let prices = Prices::load()?;
    let idle_seconds = idle.elapsed.as_secs_f64().max(1.0);
    let background_rate = Measured::of(idle).scaled(1.0 / idle_seconds);
    let own = |window: &Window, reads: f64, per_read: &Measured| {
        Measured::of(window)
            .plus(&background_rate, -window.elapsed.as_secs_f64())
            .plus(per_read, -reads)
    };

    // What one of the harness's status reads costs, to take them out of each window.
    let (calibration_id, _) = api.create(&echo_task("cost calibration")).await?;
    api.wait_all(
        std::slice::from_ref(&calibration_id),
        Duration::from_secs(120),
    )
    .await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    proxy.take_window();
    for _ in 0..CALIBRATION_READS {
        api.get(&format!("/api/tasks/{calibration_id}")).await?;
    }
    let per_read =
        own(&proxy.take_window(), 0.0, &Measured::default()).scaled(1.0 / CALIBRATION_READS as f64);

    // Simple tasks: created (auto-dispatched on the critical tier), run, completed.
    proxy.take_window();
    let (ids, create_ms) =
        workloads::create_many(api, tasks, 8, |n| echo_task(&format!("unit {n}"))).await?;
    let reads = quiet_wait(api, &ids).await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    let task = own(&proxy.take_window(), reads as f64, &per_read).scaled(1.0 / tasks as f64);
    let api_ms = stats::median(&create_ms);
    let task_usage = wiring.usage(&task, 1.0, api_ms, 0.0);

    // Chain steps: a chain of CHAIN_STEPS sequential echo steps, per step. The window closes
    // once the last message is deleted; the execution's own last transitions involve no
    // request through the proxy.
    proxy.take_window();
    let (chain_id, chain_ms) = api.create(&chain(CHAIN_STEPS)).await?;
    let reads = quiet_wait(api, std::slice::from_ref(&chain_id)).await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    let step = own(&proxy.take_window(), reads as f64, &per_read).scaled(1.0 / CHAIN_STEPS as f64);
    let chain_task = api.get(&format!("/api/tasks/{chain_id}")).await?;
    let chain_transitions = match chain_task["executionArn"].as_str() {
        Some(arn) => {
            wait_for_execution(sdk, arn).await;
            count_transitions(sdk, arn).await.unwrap_or(0) as f64
        }
        None => 0.0,
    };
    let step_usage = wiring.usage(
        &step,
        1.0 / CHAIN_STEPS as f64,
        chain_ms,
        chain_transitions / CHAIN_STEPS as f64,
    );

    // Batch items: BATCH_ITEMS echo items in chunks of ITEMS_PER_CHUNK.
    proxy.take_window();
    let list: Vec<Value> = (0..BATCH_ITEMS).map(|n| json!({"n": n})).collect();
    let (status, created, batch_ms) = api
        .post(
            "/api/batches",
            &json!({"items": list, "itemsPerBatch": ITEMS_PER_CHUNK, "parallelism": 10, "priority": "high"}),
        )
        .await?;
    anyhow::ensure!(status == 202, "batch refused: {created}");
    let batch_id = created["id"].as_str().context("the batch's id")?.to_owned();
    let reads = quiet_wait(api, std::slice::from_ref(&batch_id)).await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    let item = own(&proxy.take_window(), reads as f64, &per_read).scaled(1.0 / BATCH_ITEMS as f64);
    let batch = api.get(&format!("/api/batches/{batch_id}")).await?;
    let parent_transitions = match batch["executionArn"].as_str() {
        Some(arn) => {
            wait_for_execution(sdk, arn).await;
            count_transitions(sdk, arn).await.unwrap_or(0) as f64
        }
        None => 0.0,
    };
    // Each chunk's child execution runs ProcessChunk (entered, exited) to its end: 3.
    let child_transitions = 3.0 * (BATCH_ITEMS / ITEMS_PER_CHUNK) as f64;
    let item_usage = wiring.usage(
        &item,
        1.0 / BATCH_ITEMS as f64,
        batch_ms,
        (parent_transitions + child_transitions) / BATCH_ITEMS as f64,
    );

    let floor = cost::per_million(&cost::floor_usage(), &prices);
    let unit = |measured: &Measured, usage: &UnitUsage, kind: Unit| {
        let cost = cost::per_million(usage, &prices);
        json!({
            "requests": measured.counts.iter()
                .map(|(op, n)| (op.clone(), json!(round(*n, 3))))
                .collect::<serde_json::Map<_, _>>(),
            "total_requests": round(measured.counts.values().sum(), 3),
            "usage": usage,
            "metered": measured.metered,
            "ratio_to_floor": round(cost.per_million_usd / floor.per_million_usd, 2),
            "cost": cost,
            "alternatives": cost::alternatives(kind, usage, &prices),
        })
    };
    let mut task_json = unit(&task, &task_usage, Unit::Task);
    task_json["create_ms_median"] = json!(stats::round(api_ms));
    let mut step_json = unit(&step, &step_usage, Unit::ChainStep { steps: CHAIN_STEPS });
    step_json["state_transitions_per_step"] = json!(round(step_usage.state_transitions, 2));
    let mut item_json = unit(
        &item,
        &item_usage,
        Unit::BatchItem {
            items_per_chunk: ITEMS_PER_CHUNK,
        },
    );
    item_json["state_transitions_per_item"] = json!(round(item_usage.state_transitions, 3));
    Ok(json!({
        "task_lifecycle": task_json,
        "chain_step": step_json,
        "batch_item": item_json,
        "floor": {"usage": cost::floor_usage(), "cost": floor, "target_ratio": 1.3},
        "fixed_monthly": {
            "esm_queues": wiring.queues.len(),
            "esm_idle_pollers_per_queue": cost::ESM_IDLE_POLLERS,
            "esm_long_poll_seconds": cost::ESM_LONG_POLL_SECONDS,
            "esm_idle_requests": cost::esm_idle_monthly_requests(wiring.queues.len()),
            "esm_idle_usd": round(cost::esm_idle_monthly_usd(wiring.queues.len(), &prices), 3),
        },
        "previous": cost::previous_run(&prices),
        "harness_status_read": {"requests": per_read.counts, "metered": per_read.metered},
        "background_per_second": {"requests": background_rate.counts, "metered": background_rate.metered},
        "prices": prices,
        "method": "Each unit runs alone on a quiet stack with the counting proxy metering: DynamoDB capacity units from the items each request touched (sizes by DynamoDB's rules, index entries by the table's projections, reads repeated without projection or filter); SQS requests as an event source mapping makes them (a receive per non-empty poll, a DeleteMessageBatch per batch, sends including Step Functions', each per started 64 KiB; idle polling is a fixed monthly cost); worker GB-seconds from each batch's receive-to-delete time at the function's MemorySize, the API's from the POST latency (an upper bound). The idle baseline's rate and the harness's status reads (calibrated) are taken out.",
    }))
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn echo_task(title: &str) -> Value {
    json!({"title": title, "priority": "critical", "autoDispatch": true, "executor": {"type": "echo"}})
}

/// A chain of `steps` sequential echo steps.
fn chain(steps: usize) -> Value {
    let list: Vec<Value> = (0..steps)
        .map(|n| {
            let mut step =
                json!({"name": format!("s{n}"), "config": {"executor": {"type": "echo"}}});
            if n > 0 {
                step["dependsOn"] = json!([format!("s{}", n - 1)]);
            }
            step
        })
        .collect();
    json!({"title": "cost chain", "type": "multi_step", "priority": "high", "autoDispatch": true, "steps": list})
}

/// Waits with few reads: one GET per task once it is likely done. Returns the reads made.
async fn quiet_wait(api: &Api, ids: &[String]) -> Result<u64> {
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in ids {
        loop {
            reads += 1;
            let task = api.get(&format!("/api/tasks/{id}")).await?;
            if ["completed", "failed", "cancelled"]
                .contains(&task["status"].as_str().unwrap_or_default())
            {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "task {id} did not finish");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(reads)
}

/// Waits (straight on the emulator, uncounted) until no message is queued, in flight or
/// delayed on `queues`. False if `timeout` passed first.
async fn wait_for_empty_queues(
    sdk: &aws_config::SdkConfig,
    queues: &[String],
    timeout: Duration,
) -> bool {
    use aws_sdk_sqs::types::QueueAttributeName as Name;
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = 0u64;
        for queue in queues {
            let Ok(out) = sqs
                .get_queue_attributes()
                .queue_url(queue)
                .attribute_names(Name::ApproximateNumberOfMessages)
                .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
                .attribute_names(Name::ApproximateNumberOfMessagesDelayed)
                .send()
                .await
            else {
                continue;
            };
            waiting += out
                .attributes
                .unwrap_or_default()
                .values()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>();
        }
        if waiting == 0 {
            return true;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                waiting,
                "queues not empty after {timeout:?}; measuring anyway"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until a Step Functions execution has ended (its last transitions belong to the unit).
async fn wait_for_execution(sdk: &aws_config::SdkConfig, arn: &str) {
    let sfn = aws_sdk_sfn::Client::new(sdk);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match sfn.describe_execution().execution_arn(arn).send().await {
            Ok(out) if out.status.as_str() != "RUNNING" => return,
            Err(_) => return,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// State transitions of an execution: states entered, from its history.
async fn count_transitions(sdk: &aws_config::SdkConfig, arn: &str) -> Result<usize> {
    let sfn = aws_sdk_sfn::Client::new(sdk);
    let mut entered = 0;
    let mut token = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(arn)
            .set_next_token(token)
            .max_results(1000)
            .send()
            .await
            .context("execution history")?;
        entered += page
            .events
            .iter()
            .filter(|e| e.r#type.as_str().ends_with("StateEntered"))
            .count();
        token = page.next_token;
        if token.is_none() {
            return Ok(entered);
        }
    }
}
