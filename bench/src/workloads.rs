//! The measured workloads, end to end through the API and the hosted functions.

use crate::client::{between, Api};
use crate::stats::{round, Latency};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TIERS: [&str; 5] = ["critical", "high", "normal", "low", "background"];

/// Runs `count` creates with `concurrency` in flight; returns ids and POST latencies.
pub async fn create_many(
    api: &Api,
    count: usize,
    concurrency: usize,
    body: impl Fn(usize) -> Value,
) -> Result<(Vec<String>, Vec<f64>)> {
    let mut ids = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    let bodies: Vec<Value> = (0..count).map(body).collect();
    for chunk in bodies.chunks(concurrency.max(1)) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|b| {
                let (api, b) = (api.clone(), b.clone());
                tokio::spawn(async move { api.create(&b).await })
            })
            .collect();
        for call in calls {
            let (id, ms) = call.await??;
            ids.push(id);
            latencies.push(ms);
        }
    }
    Ok((ids, latencies))
}

#[derive(Debug, serde::Serialize)]
pub struct Throughput {
    pub tasks: usize,
    pub wall_seconds: f64,
    pub tasks_per_hour: f64,
    pub completion_rate: f64,
    pub lost: usize,
    pub duplicated: usize,
    pub create_latency_ms: Latency,
    pub queue_to_start_ms: Latency,
    /// The functions and the harness together (before issue 16 the functions ran inside the
    /// harness, so this is the figure earlier runs reported).
    pub project_cpu_seconds_per_1000: f64,
    pub emulator_cpu_seconds_per_1000: f64,
    /// Each function's CPU apart from the harness and the emulator.
    pub cpu_ms_per_task: crate::cpu::CpuPerTask,
}

/// Tasks created through the API (echo executor, auto-dispatched) until all complete.
pub async fn throughput(
    api: &Api,
    tasks: usize,
    probe: &crate::cpu::CpuProbe<'_>,
) -> Result<Throughput> {
    let cpu_before = probe.read();
    let started = Instant::now();
    let (ids, create_ms) = create_many(api, tasks, 16, |n| {
        json!({"title": format!("bench {n}"), "priority": "normal", "autoDispatch": true,
               "executor": {"type": "echo"}, "input": {"n": n}})
    })
    .await?;
    let done = api.wait_all(&ids, Duration::from_secs(900)).await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = crate::cpu::per_task(&cpu_before, &probe.read(), tasks);
    let completed = done.iter().filter(|t| t["status"] == "completed").count();
    let duplicated = done
        .iter()
        .filter(|t| t["attempts"].as_u64().unwrap_or(0) > 1)
        .count();
    let waits: Vec<f64> = done
        .iter()
        .filter_map(|t| t["queueWaitMs"].as_f64())
        .collect();
    Ok(Throughput {
        tasks,
        wall_seconds: round(wall),
        tasks_per_hour: round(tasks as f64 / wall * 3600.0),
        completion_rate: round(completed as f64 * 100.0 / tasks as f64),
        lost: tasks - completed,
        duplicated,
        create_latency_ms: Latency::of(&create_ms),
        queue_to_start_ms: Latency::of(&waits),
        // ms per task is s per 1,000 tasks.
        project_cpu_seconds_per_1000: crate::cpu::ms3(cpu.functions_total_ms + cpu.harness_ms),
        emulator_cpu_seconds_per_1000: cpu.emulator_ms,
        cpu_ms_per_task: cpu,
    })
}

/// Queue-to-start per tier, `per_tier` tasks each, created together.
pub async fn per_tier(api: &Api, per_tier: usize) -> Result<Value> {
    let (ids, _) = create_many(api, per_tier * TIERS.len(), 10, |n| {
        json!({"title": format!("tier {n}"), "priority": TIERS[n % TIERS.len()], "autoDispatch": true, "executor": {"type": "echo"}})
    })
    .await?;
    let done = api.wait_all(&ids, Duration::from_secs(600)).await?;
    let mut result = serde_json::Map::new();
    for tier in TIERS {
        let waits: Vec<f64> = done
            .iter()
            .filter(|t| t["priority"] == tier)
            .filter_map(|t| t["queueWaitMs"].as_f64())
            .collect();
        result.insert(tier.to_owned(), serde_json::to_value(Latency::of(&waits))?);
    }
    Ok(Value::Object(result))
}

/// POST /assign {"auto": true} latency with registered agents.
pub async fn assignment(api: &Api, agents: &[Api], tasks: usize) -> Result<Latency> {
    for (n, agent) in agents.iter().enumerate() {
        agent
            .call(
                reqwest::Method::PUT,
                &format!("/api/agents/bench-agent-{n}"),
                Some(&json!({"capacity": 1000})),
            )
            .await?;
    }
    let (ids, _) = create_many(api, tasks, 10, |n| json!({"title": format!("assign {n}")})).await?;
    let mut latencies = Vec::new();
    for id in ids {
        let (status, body, ms) = api
            .post(&format!("/api/tasks/{id}/assign"), &json!({"auto": true}))
            .await?;
        anyhow::ensure!(status == 200, "auto-assign failed: {body}");
        latencies.push(ms);
    }
    Ok(Latency::of(&latencies))
}

/// A chain of `steps` sequential sleep steps: wall time against the sum of step run times.
pub async fn chain_overhead(api: &Api, steps: usize, step_seconds: f64) -> Result<Value> {
    let step_list: Vec<Value> = (0..steps)
        .map(|n| {
            let mut step = json!({"name": format!("s{n}"), "config": {"executor": {"type": "sleep", "config": {"seconds": step_seconds}}}});
            if n > 0 {
                step["dependsOn"] = json!([format!("s{}", n - 1)]);
            }
            step
        })
        .collect();
    let (id, _) = api
        .create(&json!({"title": "bench chain", "type": "multi_step", "priority": "high", "autoDispatch": true, "steps": step_list}))
        .await?;
    let task = api
        .wait_all(std::slice::from_ref(&id), Duration::from_secs(600))
        .await?
        .remove(0);
    let view = api.get(&format!("/api/tasks/{id}/steps")).await?;
    let run_ms: f64 = view["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| between(s, "startedAt", "completedAt"))
        .sum();
    let wall_ms = between(&task, "startedAt", "completedAt").unwrap_or(0.0);
    Ok(json!({
        "steps": steps,
        "status": task["status"],
        "wall_ms": round(wall_ms),
        "sum_of_step_runs_ms": round(run_ms),
        "overhead_per_step_ms": round((wall_ms - run_ms) / steps as f64),
    }))
}

/// A batch of `items` echo items; items per second from the results summary.
pub async fn batch(api: &Api, items: usize, per_chunk: usize) -> Result<Value> {
    let list: Vec<Value> = (0..items).map(|n| json!({"n": n})).collect();
    let (status, created, _) = api
        .post("/api/batches", &json!({"items": list, "itemsPerBatch": per_chunk, "parallelism": 10, "priority": "high"}))
        .await?;
    anyhow::ensure!(status == 202, "batch refused: {created}");
    let id = created["id"].as_str().context("id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(900);
    let batch = loop {
        let batch = api.get(&format!("/api/batches/{id}")).await?;
        if batch["status"] == "completed" || batch["status"] == "failed" {
            break batch;
        }
        anyhow::ensure!(Instant::now() < deadline, "batch did not finish");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let task = api.get(&format!("/api/tasks/{id}")).await?;
    Ok(json!({
        "items": items,
        "items_per_chunk": per_chunk,
        "status": batch["status"],
        "success_items": batch["successItems"],
        "items_per_second": task["result"]["itemsPerSecond"],
        "duration_seconds": task["result"]["durationSeconds"],
        "execution_arn": batch["executionArn"],
    }))
}

/// Fair share in one tier (issue 14): agency B's queue-to-start alone, then behind agency A's
/// flood of `flood` normal tasks. Every task sleeps `work_seconds`; B's tasks are created once
/// A's are all queued. Waits for A's backlog to drain, so later measurements run on an idle stack.
pub async fn fairness(
    a: &Api,
    b: &Api,
    flood: usize,
    calm: usize,
    work_seconds: f64,
) -> Result<Value> {
    let body = |tag: &'static str| {
        move |n: usize| {
            json!({"title": format!("{tag} {n}"), "priority": "normal", "autoDispatch": true,
                   "executor": {"type": "sleep", "config": {"seconds": work_seconds}}})
        }
    };
    let starts = |done: &[Value]| -> Vec<f64> {
        done.iter()
            .filter_map(|t| between(t, "createdAt", "startedAt"))
            .collect()
    };
    let (alone_ids, _) = create_many(b, calm, 10, body("calm alone")).await?;
    let alone = starts(&b.wait_all(&alone_ids, Duration::from_secs(600)).await?);

    let flood_started = Instant::now();
    let (flood_ids, _) = create_many(a, flood, 16, body("flood")).await?;
    let flood_queued_seconds = flood_started.elapsed().as_secs_f64();
    let (calm_ids, _) = create_many(b, calm, 10, body("calm")).await?;
    let calm_done = b.wait_all(&calm_ids, Duration::from_secs(1800)).await?;
    let behind = starts(&calm_done);
    let flood_done = a.wait_all(&flood_ids, Duration::from_secs(3600)).await?;
    let flood_drain_seconds = flood_started.elapsed().as_secs_f64();
    let flood_overtaking = started_while_waiting(&flood_done, &calm_done);
    let sorted_ms = |values: &[f64]| {
        let mut sorted: Vec<f64> = values.iter().map(|v| round(*v)).collect();
        sorted.sort_by(f64::total_cmp);
        sorted
    };
    let (alone_waits, behind_waits) = (sorted_ms(&alone), sorted_ms(&behind));
    let alone = Latency::of(&alone);
    let behind = Latency::of(&behind);
    let ratio = if alone.p99 > 0.0 {
        behind.p99 / alone.p99
    } else {
        0.0
    };
    Ok(json!({
        "flood_tasks": flood,
        "calm_tasks": calm,
        "work_seconds": work_seconds,
        "calm_alone_queue_to_start_ms": alone,
        "calm_behind_flood_queue_to_start_ms": behind,
        "p99_ratio": round(ratio),
        "goal_p99_ratio_at_most": 2.0,
        "flood_completed": flood_done.iter().filter(|t| t["status"] == "completed").count(),
        "flood_queued_seconds": round(flood_queued_seconds),
        "flood_drain_seconds": round(flood_drain_seconds),
        // Where B's time went: each of its waits, and how many of A's tasks started meanwhile.
        "calm_alone_waits_ms": alone_waits,
        "calm_behind_flood_waits_ms": behind_waits,
        "flood_started_while_calm_waited": flood_overtaking,
    }))
}

/// How many of `others` started between the first of `waiting` being created and the last of
/// them starting.
fn started_while_waiting(others: &[Value], waiting: &[Value]) -> usize {
    let at = |t: &Value, field: &str| {
        t[field]
            .as_str()
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
    };
    let first_created = waiting.iter().filter_map(|t| at(t, "createdAt")).min();
    let last_started = waiting.iter().filter_map(|t| at(t, "startedAt")).max();
    let (Some(from), Some(to)) = (first_created, last_started) else {
        return 0;
    };
    others
        .iter()
        .filter_map(|t| at(t, "startedAt"))
        .filter(|started| (from..=to).contains(started))
        .count()
}

#[cfg(test)]
mod tests {
    use super::started_while_waiting;
    use serde_json::json;

    #[test]
    fn counts_the_others_started_between_the_first_wait_and_the_last_start() {
        let waiting = [
            json!({"createdAt": "2026-12-01T00:00:10Z", "startedAt": "2026-12-01T00:00:12Z"}),
            json!({"createdAt": "2026-12-01T00:00:11Z", "startedAt": "2026-12-01T00:00:20.5Z"}),
        ];
        let others = [
            json!({"startedAt": "2026-12-01T00:00:09.999Z"}),
            json!({"startedAt": "2026-12-01T00:00:10Z"}),
            json!({"startedAt": "2026-12-01T00:00:15.25+00:00"}),
            json!({"startedAt": "2026-12-01T00:00:20.5Z"}),
            json!({"startedAt": "2026-12-01T00:00:21Z"}),
            json!({"status": "queued"}),
        ];
        assert_eq!(started_while_waiting(&others, &waiting), 3);
        assert_eq!(started_while_waiting(&others, &[]), 0);
    }
}
