//! bench/results/latest.json (machine-readable) and latest.md (the table BENCHMARKS.md quotes).

use crate::priority::Priority;
use crate::stats::{round, Latency};
use crate::workloads::Throughput;
use anyhow::Result;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

#[derive(Serialize)]
pub struct Results {
    pub date: String,
    pub machine: Value,
    pub quick: bool,
    pub note: String,
    pub emulator_ceiling_tasks_per_hour: f64,
    /// The calls per task the ceiling replayed: the cost unit's, this run.
    pub emulator_ceiling_call_mix: crate::ceiling::CallMix,
    pub throughput_runs: Vec<Throughput>,
    pub throughput_median_tasks_per_hour: f64,
    pub ratio_to_emulator_ceiling: f64,
    pub per_tier_queue_to_start_ms: Value,
    pub time_to_assign_ms: Latency,
    /// The headline level (the middle backlog), also inside `priority_levels`.
    pub priority: Priority,
    /// Critical queue-to-start at each backlog, and the largest's p99 against none's.
    pub priority_levels: Value,
    pub chain: Value,
    pub batch: Value,
    pub requests_per_unit: Value,
    pub cold_start: Value,
    /// What the local Lambda runtime adds per invocation (`runtime_overhead`).
    pub local_runtime: Value,
    /// Fair share in one tier: B's queue-to-start alone and behind A's flood (`workloads::fairness`).
    pub fairness: Value,
    pub peer: Value,
    /// The scale scenario (`scale.rs`), also written alone to `scale.{json,md}`.
    pub scale: Value,
    pub wall_seconds: f64,
}

pub fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let memory_kib: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": round(memory_kib as f64 / 1024.0 / 1024.0),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

/// First numeric value found under any of `keys` (the peer reports its own names).
fn number(value: &Value, keys: &[&str]) -> Option<f64> {
    for key in keys {
        let mut node = value;
        for part in key.split('.') {
            node = &node[part];
        }
        if let Some(n) = node.as_f64() {
            return Some(n);
        }
    }
    None
}

fn ratio(ours: Option<f64>, theirs: Option<f64>) -> String {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "n/a".into(),
    }
}

fn fmt(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v}"))
        .unwrap_or_else(|| "n/a".into())
}

pub fn write(repo: &Path, results: &Results) -> Result<()> {
    let dir = repo.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::to_value(results)?;
    let previous = crate::headline::keep_previous(&dir, results.quick);
    std::fs::write(
        dir.join("latest.json"),
        serde_json::to_string_pretty(&json)?,
    )?;

    let median = |values: Vec<f64>| crate::stats::median(&values);
    let runs = &results.throughput_runs;
    let ours_tph = Some(results.throughput_median_tasks_per_hour);
    let ours_cpu = Some(median(
        runs.iter()
            .map(|r| r.project_cpu_seconds_per_1000)
            .collect(),
    ));
    let ours_post = Some(median(
        runs.iter().map(|r| r.create_latency_ms.p50).collect(),
    ));
    let peer_runs: Vec<Value> = results.peer["throughput_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let peer_median = |keys: &[&str]| {
        let values: Vec<f64> = peer_runs.iter().filter_map(|r| number(r, keys)).collect();
        (!values.is_empty()).then(|| median(values))
    };
    let peer_tph = peer_median(&["tasks_per_hour", "tasksPerHour", "throughput.tasksPerHour"]);
    let peer_cpu = peer_median(&[
        "cpu_seconds_per_1000",
        "cpuSecondsPer1000",
        "cpu.peerSecondsPer1000",
        "cpu.nodeSecondsPer1000Tasks",
    ]);
    let peer_prio = &results.peer["priority"];
    let peer_crit_p50 = number(
        peer_prio,
        &[
            "critical_start_ms.p50",
            "criticalQueueToStartMs.p50",
            "criticalStartMs.p50",
        ],
    );
    let peer_crit_p99 = number(
        peer_prio,
        &[
            "critical_start_ms.p99",
            "criticalQueueToStartMs.p99",
            "criticalStartMs.p99",
        ],
    );
    let crit = &results.priority.critical_start_ms;

    let mut md = String::new();
    writeln!(md, "Run {} on {} ({} cores){}. Local figures are bound by the emulator (moto, one Python process); the peer runs on the same machine in the same run.\n",
        &results.date[..10], results.machine["cpu"].as_str().unwrap_or("?"), results.machine["cores"], if results.quick { ", QUICK=1" } else { "" })?;
    writeln!(
        md,
        "| Measure | Taskflow (local, emulator-bound) | BullMQ peer | Ratio |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    writeln!(
        md,
        "| Throughput, tasks/hour (median of {}) | {} | {} | {} |",
        runs.len(),
        fmt(ours_tph),
        fmt(peer_tph),
        ratio(ours_tph, peer_tph)
    )?;
    writeln!(
        md,
        "| CPU s per 1,000 tasks (project processes) | {} | {} | {} |",
        fmt(ours_cpu),
        fmt(peer_cpu),
        ratio(ours_cpu, peer_cpu)
    )?;
    writeln!(
        md,
        "| Critical start under backlog p50, ms | {} | {} | {} |",
        crit.p50,
        fmt(peer_crit_p50),
        ratio(Some(crit.p50), peer_crit_p50)
    )?;
    writeln!(
        md,
        "| Critical start under backlog p99, ms | {} | {} | {} |",
        crit.p99,
        fmt(peer_crit_p99),
        ratio(Some(crit.p99), peer_crit_p99)
    )?;
    writeln!(md, "\n| Taskflow measure | Value |")?;
    writeln!(md, "|---|---|")?;
    writeln!(
        md,
        "| Emulator ceiling for the same call mix, tasks/hour | {} |",
        results.emulator_ceiling_tasks_per_hour
    )?;
    writeln!(
        md,
        "| Throughput as a share of the emulator ceiling | {} |",
        crate::headline::ceiling_share(results.ratio_to_emulator_ceiling)
    )?;
    writeln!(
        md,
        "| Completion rate; lost; duplicated | {} %; {}; {} |",
        median(runs.iter().map(|r| r.completion_rate).collect()),
        runs.iter().map(|r| r.lost).sum::<usize>(),
        runs.iter().map(|r| r.duplicated).sum::<usize>()
    )?;
    writeln!(
        md,
        "| POST /api/tasks p50 / p95 / p99, ms | {} / {} / {} |",
        fmt(ours_post),
        median(runs.iter().map(|r| r.create_latency_ms.p95).collect()),
        median(runs.iter().map(|r| r.create_latency_ms.p99).collect())
    )?;
    writeln!(
        md,
        "| Time to be assigned (auto) p50 / p95 / p99, ms | {} / {} / {} |",
        results.time_to_assign_ms.p50, results.time_to_assign_ms.p95, results.time_to_assign_ms.p99
    )?;
    if let Some(tiers) = results.per_tier_queue_to_start_ms.as_object() {
        for (tier, l) in tiers {
            writeln!(
                md,
                "| Queue-to-start, {tier}: p50 / p95 / p99, ms | {} / {} / {} |",
                l["p50"], l["p95"], l["p99"]
            )?;
        }
    }
    writeln!(
        md,
        "| Background tasks started while {} critical ones waited (backlog {}) | {} |",
        results.priority.critical,
        results.priority.backlog,
        results.priority.background_started_meanwhile
    )?;
    writeln!(
        md,
        "| Chain: wall vs sum of step runs ({} steps) | {} ms vs {} ms ({} ms overhead per step) |",
        results.chain["steps"],
        results.chain["wall_ms"],
        results.chain["sum_of_step_runs_ms"],
        results.chain["overhead_per_step_ms"]
    )?;
    writeln!(
        md,
        "| Batch: {} items | {} items/s |",
        results.batch["items"], results.batch["items_per_second"]
    )?;
    let units = &results.requests_per_unit;
    writeln!(
        md,
        "| AWS requests per task lifecycle / chain step / batch item | {} / {} / {} |",
        units["task_lifecycle"]["total_requests"],
        units["chain_step"]["total_requests"],
        units["batch_item"]["total_requests"]
    )?;
    writeln!(
        md,
        "| State transitions per chain step / batch item | {} / {} |",
        units["chain_step"]["state_transitions_per_step"],
        units["batch_item"]["state_transitions_per_item"]
    )?;
    writeln!(
        md,
        "| USD per million tasks / steps / items (as AWS bills them: see the cost tables) | {} / {} / {} |",
        units["task_lifecycle"]["cost"]["per_million_usd"],
        units["chain_step"]["cost"]["per_million_usd"],
        units["batch_item"]["cost"]["per_million_usd"]
    )?;
    if let Some(cold) = results.cold_start.as_array() {
        for c in cold {
            writeln!(md, "| Cold start, {}: binary / peak RSS / first response | {:.1} MB / {:.1} MB / {:.1} ms |", c["function"].as_str().unwrap_or("?"),
                c["binary_bytes"].as_f64().unwrap_or(0.0) / 1e6, c["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0, c["first_response_ms"].as_f64().unwrap_or(0.0))?;
        }
    }
    let runtime = &results.local_runtime;
    if runtime.get("warm_invocation_ms").is_some() {
        writeln!(
            md,
            "| Local Lambda runtime, per invocation: cold / warm p50 / warm p99 / invocations per second ({} callers) | {} ms / {} ms / {} ms / {} |",
            runtime["concurrency"],
            runtime["cold_invocation_ms"],
            runtime["warm_invocation_ms"]["p50"],
            runtime["warm_invocation_ms"]["p99"],
            runtime["concurrent_invocations_per_second"]
        )?;
    }
    md.push_str(&fairness_rows(
        &results.fairness,
        &results.peer["fairness"],
    )?);
    writeln!(md, "\n{}", crate::headline::cpu_markdown(&json)?)?;
    writeln!(
        md,
        "{}",
        crate::headline::priority_markdown(
            &results.priority_levels,
            &results.peer["priority_levels"]
        )?
    )?;
    writeln!(
        md,
        "{}",
        crate::headline::comparison_markdown(previous.as_ref(), &json)?
    )?;
    writeln!(md, "\n{}", cost_markdown(units)?)?;
    writeln!(md, "Raw figures, per-operation request counts and the price table: `bench/results/latest.json`.")?;
    writeln!(md, "\n{}", scale_markdown(&results.scale)?)?;
    std::fs::write(dir.join("latest.md"), md)?;
    Ok(())
}

/// `bench/results/scale.{json,md}`: the scale scenario alone (also what `SCENARIOS=scale` writes).
pub fn write_scale(repo: &Path, quick: bool, scale: &Value) -> Result<()> {
    let dir = repo.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "quick": quick,
        "scale": scale,
    });
    std::fs::write(dir.join("scale.json"), serde_json::to_string_pretty(&json)?)?;
    let mut md = String::new();
    writeln!(
        md,
        "Run {} on {} ({} cores){}; the functions run as release binaries under the local Lambda runtime, against the emulator (moto).\n",
        &json["date"].as_str().unwrap_or_default()[..10],
        json["machine"]["cpu"].as_str().unwrap_or("?"),
        json["machine"]["cores"],
        if quick { ", QUICK=1" } else { "" }
    )?;
    md.push_str(&scale_markdown(scale)?);
    std::fs::write(dir.join("scale.md"), md)?;
    Ok(())
}

/// `bench/results/fairness.{json,md}`: the fair-share scenario alone, Taskflow's and the
/// peer's (what `SCENARIOS=fairness` writes).
pub fn write_fairness(
    repo: &Path,
    quick: bool,
    fairness: &Value,
    peer: &Value,
    wall_seconds: f64,
) -> Result<()> {
    let dir = repo.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "quick": quick,
        "fairness": fairness,
        "peer_fairness": peer,
        "wall_seconds": wall_seconds,
    });
    std::fs::write(
        dir.join("fairness.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let mut md = String::new();
    writeln!(
        md,
        "Run {} on {} ({} cores){}, {:.0} s; Taskflow's functions in process against the emulator (moto), the BullMQ peer on the same machine after it.\n",
        &json["date"].as_str().unwrap_or_default()[..10],
        json["machine"]["cpu"].as_str().unwrap_or("?"),
        json["machine"]["cores"],
        if quick { ", QUICK=1" } else { "" },
        wall_seconds
    )?;
    writeln!(md, "| Fair-share measure | Value |")?;
    writeln!(md, "|---|---|")?;
    md.push_str(&fairness_rows(fairness, peer)?);
    if fairness.get("flood_started_while_calm_waited").is_some() {
        writeln!(
            md,
            "| Taskflow: A's tasks started while B's waited; SQS sends beyond the dispatches (deferred copies) | {}; {} |",
            fairness["flood_started_while_calm_waited"], fairness["sqs_send_message_beyond_dispatches"]
        )?;
        writeln!(
            md,
            "| Taskflow: A's flood queued in; drained in (from its first POST) | {} s; {} s |",
            fairness["flood_queued_seconds"], fairness["flood_drain_seconds"]
        )?;
    }
    if let Some(error) = fairness.get("error") {
        writeln!(md, "\nTaskflow's scenario failed: {error}")?;
    }
    if let Some(error) = peer.get("error") {
        writeln!(md, "\nBullMQ peer failed: {error}")?;
    }
    std::fs::write(dir.join("fairness.md"), md)?;
    Ok(())
}

/// The fair-share rows of a two-column table: Taskflow's, then the peer's when it ran.
fn fairness_rows(fair: &Value, peer: &Value) -> Result<String> {
    let mut md = String::new();
    if fair.get("calm_behind_flood_queue_to_start_ms").is_none() {
        return Ok(md);
    }
    writeln!(
        md,
        "| Fair share, normal tier: B's {} tasks queue-to-start p50 / p99 alone, then behind A's {} (goal p99 ≤ 2× alone) | {} / {} ms, then {} / {} ms (×{}) |",
        fair["calm_tasks"],
        fair["flood_tasks"],
        fair["calm_alone_queue_to_start_ms"]["p50"],
        fair["calm_alone_queue_to_start_ms"]["p99"],
        fair["calm_behind_flood_queue_to_start_ms"]["p50"],
        fair["calm_behind_flood_queue_to_start_ms"]["p99"],
        fair["p99_ratio"]
    )?;
    if peer.get("calm_behind_flood_start_ms").is_some() {
        writeln!(
            md,
            "| BullMQ peer, one queue: the same | {} / {} ms, then {} / {} ms (×{}) |",
            peer["calm_alone_start_ms"]["p50"],
            peer["calm_alone_start_ms"]["p99"],
            peer["calm_behind_flood_start_ms"]["p50"],
            peer["calm_behind_flood_start_ms"]["p99"],
            peer["p99_ratio"]
        )?;
    }
    Ok(md)
}

/// Dollars as the cost tables print them: `$8.538`, or "not found".
fn usd(value: &Value) -> String {
    value
        .as_f64()
        .map(|v| format!("${v:.3}"))
        .unwrap_or_else(|| "not found".into())
}

/// The cost tables (BENCHMARKS.md "Cost model"): each unit beside the previous run, the
/// floor, its breakdown, what it used, and the same work on other orchestrators.
pub(crate) fn cost_markdown(units: &Value) -> Result<String> {
    let mut md = String::new();
    if units.get("floor").is_none() {
        return Ok(md);
    }
    const UNITS: [(&str, &str); 3] = [
        ("task_lifecycle", "Simple task"),
        ("chain_step", "Chain step"),
        ("batch_item", "Batch item"),
    ];
    let previous = &units["previous"];
    let floor = &units["floor"]["cost"]["per_million_usd"];
    writeln!(md, "| USD per million | {} run, request-based | {} run, SQS as the ESM makes them | This run, as AWS bills | Floor | This run ÷ floor (target ≤ {}) |",
        previous["date"].as_str().unwrap_or("previous"), previous["date"].as_str().unwrap_or("previous"), units["floor"]["target_ratio"])?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for (key, name) in UNITS {
        let (floor, ratio) = if key == "task_lifecycle" {
            (usd(floor), format!("{}×", units[key]["ratio_to_floor"]))
        } else {
            ("—".to_owned(), "—".to_owned())
        };
        writeln!(
            md,
            "| {name} | {} | {} | {} | {floor} | {ratio} |",
            usd(&previous[key]["request_based_per_million_usd"]),
            usd(&previous[key]["per_million_usd"]),
            usd(&units[key]["cost"]["per_million_usd"]),
        )?;
    }
    const SERVICES: [(&str, &str); 7] = [
        ("api_gateway", "API Gateway"),
        ("lambda", "Lambda"),
        ("dynamodb", "DynamoDB"),
        ("sqs", "SQS"),
        ("step_functions", "Step Functions"),
        ("s3", "S3"),
        ("eventbridge", "EventBridge"),
    ];
    write!(md, "\n| This run, USD per million |")?;
    for (_, service) in SERVICES {
        write!(md, " {service} |")?;
    }
    writeln!(md, "\n|---|---|---|---|---|---|---|---|")?;
    for (key, name) in UNITS
        .iter()
        .copied()
        .chain([("floor", "Floor (simple task)")])
    {
        let breakdown = &units[key]["cost"]["breakdown_usd"];
        write!(md, "| {name} |")?;
        for (service, _) in SERVICES {
            write!(md, " {} |", usd(&breakdown[service]))?;
        }
        writeln!(md)?;
    }
    writeln!(md, "\n| What one unit used | API requests | Lambda invocations; GB-s | DynamoDB write; read units | SQS requests (ESM) | State transitions | S3 PUT; GET | Events |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for (key, name) in UNITS
        .iter()
        .copied()
        .chain([("floor", "Floor (simple task)")])
    {
        let usage = &units[key]["usage"];
        let lambda: Vec<&Value> = usage["lambda"]
            .as_array()
            .map(|l| l.iter().collect())
            .unwrap_or_default();
        let invocations: f64 = lambda
            .iter()
            .filter_map(|l| l["invocations"].as_f64())
            .sum();
        let gb_seconds: f64 = lambda
            .iter()
            .map(|l| {
                l["billed_ms"].as_f64().unwrap_or(0.0) / 1000.0
                    * l["memory_mb"].as_f64().unwrap_or(0.0)
                    / 1024.0
            })
            .sum();
        let n = |field: &str| usage[field].as_f64().unwrap_or(0.0);
        writeln!(
            md,
            "| {name} | {:.4} | {:.4}; {:.6} | {:.3}; {:.3} | {:.3} | {:.3} | {:.4}; {:.4} | {:.3} |",
            n("api_requests"),
            invocations,
            gb_seconds,
            n("dynamodb_write_units"),
            n("dynamodb_read_units"),
            n("sqs_requests"),
            n("state_transitions"),
            n("s3_put_requests"),
            n("s3_get_requests"),
            n("events"),
        )?;
    }
    writeln!(md, "\n| The same work elsewhere, USD per million (orchestration + the same API request and Lambda compute) | Simple task | Chain step | Batch item | Billed per | Price: source, checked |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    let alternatives = units["task_lifecycle"]["alternatives"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (row, alternative) in alternatives.iter().enumerate() {
        write!(md, "| {} |", alternative["name"].as_str().unwrap_or("?"))?;
        for (key, _) in UNITS {
            let same = &units[key]["alternatives"][row];
            write!(
                md,
                " {} ({}) |",
                usd(&same["per_million_usd"]),
                usd(&same["orchestration_per_million_usd"])
            )?;
        }
        writeln!(
            md,
            " {} | {}, {} |",
            alternative["billing_unit"].as_str().unwrap_or("?"),
            alternative["source"].as_str().unwrap_or("?"),
            alternative["date"].as_str().unwrap_or("?")
        )?;
    }
    let fixed = &units["fixed_monthly"];
    let whole = |key: &str| fixed[key].as_f64().unwrap_or(0.0);
    writeln!(
        md,
        "\nFixed, whatever the load: {:.0} idle event source mappings ({:.0} pollers each, {:.0} s long polls) make {:.0} empty receives a month, {} a month.",
        whole("esm_queues"),
        whole("esm_idle_pollers_per_queue"),
        whole("esm_long_poll_seconds"),
        whole("esm_idle_requests"),
        usd(&fixed["esm_idle_usd"])
    )?;
    Ok(md)
}

/// The scale scenario's table.
fn scale_markdown(scale: &Value) -> Result<String> {
    let mut md = String::new();
    if let Some(error) = scale.get("error") {
        writeln!(md, "Scale scenario failed: {error}")?;
        return Ok(md);
    }
    let (up, over) = (&scale["upload"], &scale["overload"]);
    writeln!(md, "| Scale measure | Value | Limit |")?;
    writeln!(md, "|---|---|---|")?;
    writeln!(
        md,
        "| Upload: items, chunks, file size | {} items, {} chunks, {:.1} MB | 1,000,000 items, 100,000 chunks, 64 MiB |",
        up["items"],
        up["chunks"],
        up["file_bytes"].as_f64().unwrap_or(0.0) / 1e6
    )?;
    writeln!(
        md,
        "| Upload: preparer peak RSS | {} MiB ({:.0} %) | MemorySize {} MB |",
        up["preparer_peak_rss_mib"],
        up["preparer_peak_share_of_memory_size"]
            .as_f64()
            .unwrap_or(0.0)
            * 100.0,
        up["preparer_memory_size_mb"]
    )?;
    writeln!(
        md,
        "| Upload: preparation (batch created → processing); passes; preparer invocations | {} s; {}; {} | Timeout {} s per pass |",
        up["preparation_seconds"], up["passes"], up["preparer_invocations"], up["preparer_timeout_seconds"]
    )?;
    writeln!(
        md,
        "| Upload: run; succeeded / failed items | {} s ({} items/s); {} / {} | |",
        up["run_seconds"], up["items_per_second"], up["success_items"], up["failed_items"]
    )?;
    writeln!(
        md,
        "| Overload: chunks vs tier capacity ({}) | {} vs {} ({}) | |",
        over["tier"].as_str().unwrap_or("?"),
        over["chunks"],
        over["tier_capacity"],
        over["tier_capacity_from"].as_str().unwrap_or("?")
    )?;
    writeln!(
        md,
        "| Overload: items; runs; duplicates; never ran | {}; {}; {}; {} | duplicates 0, never ran 0 |",
        over["items"], over["runs"], over["duplicates"], over["never_ran"]
    )?;
    writeln!(
        md,
        "| Overload: succeeded / failed items (finalize summary); worker timeouts | {} / {}; {} | failed 0, timeouts 0 |",
        over["success_items"], over["failed_items"], over["worker_timeouts"]
    )?;
    writeln!(
        md,
        "| Overload: run (batch started → finalized); wall from POST | {} s; {} s (at least {} s at full capacity) | |",
        over["run_seconds"], over["wall_seconds"], over["ideal_seconds"]
    )?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::{cost_markdown, fairness_rows};
    use crate::cost::{self, Prices, Unit, UnitUsage};
    use serde_json::json;

    #[test]
    fn cost_tables_set_each_unit_beside_the_previous_run_and_the_floor() {
        let prices = Prices::load().unwrap();
        let task = UnitUsage {
            api_requests: 1.0,
            dynamodb_write_units: 6.0,
            sqs_requests: 3.0,
            ..cost::floor_usage()
        };
        let unit = |usage: &UnitUsage, kind: Unit| {
            let cost = cost::per_million(usage, &prices);
            json!({"usage": usage, "ratio_to_floor": 1.27, "cost": cost,
                   "alternatives": cost::alternatives(kind, usage, &prices)})
        };
        let units = json!({
            "task_lifecycle": unit(&task, Unit::Task),
            "chain_step": unit(&task, Unit::ChainStep { steps: 5 }),
            "batch_item": unit(&task, Unit::BatchItem { items_per_chunk: 100 }),
            "floor": {"usage": cost::floor_usage(), "cost": cost::per_million(&cost::floor_usage(), &prices), "target_ratio": 1.3},
            "previous": cost::previous_run(&prices),
            "fixed_monthly": {"esm_queues": 6, "esm_idle_pollers_per_queue": 5.0, "esm_long_poll_seconds": 20.0,
                              "esm_idle_requests": 3888000.0, "esm_idle_usd": 1.555},
        });
        let md = cost_markdown(&units).unwrap();
        // 3.5 + 0.433 Lambda + 6 × 0.625 + 3 × 0.4.
        assert!(
            md.contains("| Simple task | $8.538 | $9.074 | $8.883 | $6.288 | 1.27× |"),
            "{md}"
        );
        assert!(
            md.contains("| Chain step | $68.172 | $70.732 | $8.883 | — | — |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| Floor (simple task) | $3.500 | $0.433 | $1.875 | $0.480 | $0.000 | $0.000 |"
            ),
            "{md}"
        );
        assert!(md.contains("| Inngest | not found (not found) |"), "{md}");
        assert!(
            md.contains("| Temporal Cloud | $103.933 ($100.000) |"),
            "{md}"
        );
        assert!(
            md.contains("6 idle event source mappings (5 pollers each, 20 s long polls) make 3888000 empty receives a month, $1.555 a month"),
            "{md}"
        );
        // An old results file without the cost model prints no cost tables.
        assert_eq!(cost_markdown(&json!({"task_lifecycle": {}})).unwrap(), "");
    }

    #[test]
    fn fairness_rows_show_both_systems_and_skip_what_did_not_run() {
        let ours = json!({
            "calm_tasks": 20, "flood_tasks": 2000, "p99_ratio": 3.5,
            "calm_alone_queue_to_start_ms": {"p50": 100.0, "p99": 200.0},
            "calm_behind_flood_queue_to_start_ms": {"p50": 400.0, "p99": 700.0},
        });
        let peer = json!({
            "p99_ratio": 50.0,
            "calm_alone_start_ms": {"p50": 1.0, "p99": 2.0},
            "calm_behind_flood_start_ms": {"p50": 90.0, "p99": 100.0},
        });
        let rows = fairness_rows(&ours, &peer).unwrap();
        assert_eq!(rows.lines().count(), 2, "{rows}");
        assert!(
            rows.contains("| 100.0 / 200.0 ms, then 400.0 / 700.0 ms (×3.5) |"),
            "{rows}"
        );
        assert!(
            rows.contains("| 1.0 / 2.0 ms, then 90.0 / 100.0 ms (×50.0) |"),
            "{rows}"
        );
        let peer_failed = json!({"error": "redis-server did not start"});
        assert_eq!(
            fairness_rows(&ours, &peer_failed).unwrap().lines().count(),
            1
        );
        assert_eq!(fairness_rows(&json!({"error": "x"}), &peer).unwrap(), "");
    }
}
