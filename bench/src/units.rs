//! Cost per unit of work (BENCHMARKS.md "Cost model"): a simple task, a chain step and a
//! batch item, each run alone on a quiet stack, twice: with the proxy timing invocations only
//! (the durations), then metering in full (DynamoDB capacity units, SQS requests as an event
//! source mapping makes them, everything else).
//!
//! What is not the unit's own is taken out of each window: the quiet stack's background (the
//! pollers, the sweeper if it ran: a first window's rate times the window's length), and the
//! harness's status reads (each costs what a calibration read measured: its `GET` goes through
//! the API, which also writes the agency's request bucket). The reads are few and slow on
//! purpose.

use crate::client::Api;
use crate::cost::{self, LambdaUse, Prices, Unit, UnitUsage};
use crate::counting_proxy::{CountingProxy, Window};
use crate::metering::{Metered, Metering};
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

    /// What one unit used, from its share of a metered window and of a timing one (whose
    /// invocations are the durations); `api_ms` is its API request's latency.
    fn usage(
        &self,
        unit: &Measured,
        timing: &Measured,
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
        for (queue, invocations) in &timing.metered.invocations {
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
                    measured_as: "receive to first delete of each batch, at the proxy, with no DynamoDB metering".to_owned(),
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
            events: unit.metered.events,
        }
    }
}

/// One run of a unit's workload: its window, its API request's latency, and the harness's
/// status reads inside the window.
struct Pass {
    window: Window,
    api_ms: f64,
    reads: f64,
    /// The task (or batch) it created.
    id: String,
}

/// Cost per unit of work, metered; `background` is how long the quiet stack is watched for
/// what it does with no work (pollers, the sweeper).
pub async fn requests_per_unit(
    api: &Api,
    proxy: &CountingProxy,
    sdk: &aws_config::SdkConfig,
    stack: &ProvisionedStack,
    tasks: usize,
    background: Duration,
) -> Result<Value> {
    let wiring = Wiring::of(stack);
    let queues: Vec<String> = wiring.queues.keys().cloned().collect();
    let quiet_at_start = wait_for_empty_queues(sdk, &queues, Duration::from_secs(300)).await;
    let measured = measure(api, proxy, sdk, &wiring, &queues, tasks, background).await;
    proxy.set_metering(Metering::Off);
    let mut measured = measured?;
    measured["quiet_at_start"] = json!(quiet_at_start);
    Ok(measured)
}

/// Runs `tasks` simple tasks: created (auto-dispatched on the critical tier), run, completed.
async fn task_pass(
    api: &Api,
    proxy: &CountingProxy,
    sdk: &aws_config::SdkConfig,
    queues: &[String],
    tasks: usize,
) -> Result<Pass> {
    proxy.take_window();
    let (ids, create_ms) =
        workloads::create_many(api, tasks, 8, |n| echo_task(&format!("unit {n}"))).await?;
    let reads = quiet_wait(api, &ids).await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    Ok(Pass {
        window: proxy.take_window(),
        api_ms: stats::median(&create_ms),
        reads: reads as f64,
        id: ids.last().cloned().unwrap_or_default(),
    })
}

/// Runs one chain of CHAIN_STEPS sequential echo steps. The window closes once its last
/// message is deleted: the execution's own last transitions involve no request through the
/// proxy.
async fn chain_pass(
    api: &Api,
    proxy: &CountingProxy,
    sdk: &aws_config::SdkConfig,
    queues: &[String],
) -> Result<Pass> {
    proxy.take_window();
    let (id, api_ms) = api.create(&chain(CHAIN_STEPS)).await?;
    let reads = quiet_wait(api, std::slice::from_ref(&id)).await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    Ok(Pass {
        window: proxy.take_window(),
        api_ms,
        reads: reads as f64,
        id,
    })
}

/// Runs one batch of BATCH_ITEMS echo items in chunks of ITEMS_PER_CHUNK.
async fn batch_pass(
    api: &Api,
    proxy: &CountingProxy,
    sdk: &aws_config::SdkConfig,
    queues: &[String],
) -> Result<Pass> {
    proxy.take_window();
    let list: Vec<Value> = (0..BATCH_ITEMS).map(|n| json!({"n": n})).collect();
    let (status, created, api_ms) = api
        .post(
            "/api/batches",
            &json!({"items": list, "itemsPerBatch": ITEMS_PER_CHUNK, "parallelism": 10, "priority": "high"}),
        )
        .await?;
    anyhow::ensure!(status == 202, "batch refused: {created}");
    let id = created["id"].as_str().context("the batch's id")?.to_owned();
    let reads = quiet_wait(api, std::slice::from_ref(&id)).await?;
    wait_for_empty_queues(sdk, queues, Duration::from_secs(60)).await;
    Ok(Pass {
        window: proxy.take_window(),
        api_ms,
        reads: reads as f64,
        id,
    })
}

/// The Step Functions transitions of an execution, once it has ended.
async fn transitions_of(sdk: &aws_config::SdkConfig, arn: Option<&str>) -> f64 {
    match arn {
        Some(arn) => {
            wait_for_execution(sdk, arn).await;
            count_transitions(sdk, arn).await.unwrap_or(0) as f64
        }
        None => 0.0,
    }
}

async fn measure(
    api: &Api,
    proxy: &CountingProxy,
    sdk: &aws_config::SdkConfig,
    wiring: &Wiring,
    queues: &[String],
    tasks: usize,
    background: Duration,
) -> Result<Value> {
    let prices = Prices::load()?;

    // What the quiet stack does with no work, per second.
    proxy.set_metering(Metering::Full);
    proxy.take_window();
    tokio::time::sleep(background).await;
    let idle = proxy.take_window();
    let background_rate = Measured::of(&idle).scaled(1.0 / idle.elapsed.as_secs_f64().max(1.0));
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

    // Each workload runs twice: for durations with no DynamoDB metering (whose reads of its
    // own would lengthen them), then metered in full for everything else.
    proxy.set_metering(Metering::Timing);
    let task_timing = task_pass(api, proxy, sdk, queues, tasks).await?;
    let step_timing = chain_pass(api, proxy, sdk, queues).await?;
    let item_timing = batch_pass(api, proxy, sdk, queues).await?;
    proxy.set_metering(Metering::Full);
    let task_pass = task_pass(api, proxy, sdk, queues, tasks).await?;
    let step_pass = chain_pass(api, proxy, sdk, queues).await?;
    let item_pass = batch_pass(api, proxy, sdk, queues).await?;
    proxy.set_metering(Metering::Off);

    let per_unit = |pass: &Pass, units: usize| {
        own(&pass.window, pass.reads, &per_read).scaled(1.0 / units as f64)
    };
    let durations =
        |timing: &Pass, units: usize| Measured::of(&timing.window).scaled(1.0 / units as f64);
    let task = per_unit(&task_pass, tasks);
    let task_usage = wiring.usage(
        &task,
        &durations(&task_timing, tasks),
        1.0,
        task_timing.api_ms,
        0.0,
    );

    let step = per_unit(&step_pass, CHAIN_STEPS);
    let chain_task = api.get(&format!("/api/tasks/{}", step_pass.id)).await?;
    let chain_transitions = transitions_of(sdk, chain_task["executionArn"].as_str()).await;
    let step_usage = wiring.usage(
        &step,
        &durations(&step_timing, CHAIN_STEPS),
        1.0 / CHAIN_STEPS as f64,
        step_timing.api_ms,
        chain_transitions / CHAIN_STEPS as f64,
    );

    let item = per_unit(&item_pass, BATCH_ITEMS);
    let batch = api.get(&format!("/api/batches/{}", item_pass.id)).await?;
    let parent_transitions = transitions_of(sdk, batch["executionArn"].as_str()).await;
    // Each chunk's child execution runs ProcessChunk (entered, exited) to its end: 3.
    let child_transitions = 3.0 * (BATCH_ITEMS / ITEMS_PER_CHUNK) as f64;
    let item_usage = wiring.usage(
        &item,
        &durations(&item_timing, BATCH_ITEMS),
        1.0 / BATCH_ITEMS as f64,
        item_timing.api_ms,
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
    task_json["create_ms_median"] = json!(stats::round(task_timing.api_ms));
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
        "background_per_second": {"seconds": round(idle.elapsed.as_secs_f64(), 1), "requests": background_rate.counts, "metered": background_rate.metered},
        "prices": prices,
        "method": "Each unit runs alone on a quiet stack, twice: once with the counting proxy timing invocations (for durations), once metering in full. DynamoDB capacity units from the items each request touched (sizes by DynamoDB's rules, index entries by the table's projections, reads repeated without projection or filter); SQS requests as an event source mapping makes them (a receive per non-empty poll, a DeleteMessageBatch per batch, sends including Step Functions', each per started 64 KiB; idle polling is a fixed monthly cost); worker GB-seconds from each batch's receive-to-delete time at the function's MemorySize, the API's from the POST latency (an upper bound). The quiet stack's own rate and the harness's status reads (calibrated) are taken out.",
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
        // Which queue holds what (visible, in flight, delayed), for the warning below.
        let mut held = Vec::new();
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
            let attributes = out.attributes.unwrap_or_default();
            let count = |name: &Name| {
                attributes
                    .get(name)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (visible, in_flight, delayed) = (
                count(&Name::ApproximateNumberOfMessages),
                count(&Name::ApproximateNumberOfMessagesNotVisible),
                count(&Name::ApproximateNumberOfMessagesDelayed),
            );
            if visible + in_flight + delayed > 0 {
                let name = queue.rsplit('/').next().unwrap_or(queue);
                held.push(format!(
                    "{name}: {visible} visible, {in_flight} in flight, {delayed} delayed"
                ));
            }
            waiting += visible + in_flight + delayed;
        }
        if waiting == 0 {
            return true;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                waiting,
                queues = %held.join("; "),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole per-unit measurement on a small local stack (a few tasks, one chain, one
    /// batch), as `make bench` runs it: a check that every window closes and meters, not a
    /// figure to publish. `cargo test -p bench cost_per_unit -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "starts a stack and runs about a minute"]
    async fn cost_per_unit_on_a_local_stack() {
        let repo = local_stack::StackOptions::repo_root();
        let emulator = local_stack::emulator::Emulator::start(
            &repo.join(".venv"),
            local_stack::emulator::free_port(),
        )
        .await
        .unwrap();
        let proxy = CountingProxy::start(&emulator.endpoint).await.unwrap();
        let stack = crate::start_stack(&repo, &proxy.endpoint).await.unwrap();
        let api = Api::new(
            &stack.api_url(),
            crate::SECRET,
            "cost-check",
            "boss",
            "manager",
        );
        let sdk = local_stack::emulator::sdk_config(&emulator.endpoint).await;
        let background = Duration::from_secs(5);
        let units = requests_per_unit(&api, &proxy, &sdk, &stack.resources, 5, background)
            .await
            .unwrap();
        stack.stop().await;
        println!("{}", serde_json::to_string_pretty(&units).unwrap());
        println!("{}", crate::report::cost_markdown(&units).unwrap());
        for unit in ["task_lifecycle", "chain_step", "batch_item"] {
            let usage = &units[unit]["usage"];
            assert!(
                usage["dynamodb_write_units"].as_f64().unwrap() > 0.0,
                "{unit}"
            );
            assert!(usage["sqs_requests"].as_f64().unwrap() > 0.0, "{unit}");
            assert_eq!(units[unit]["metered"]["errors"], 0.0, "{unit}");
        }
        assert_eq!(units["quiet_at_start"], true);
    }
}
