//! Issue 16's figures in latest.md: CPU per task by process, priority at each backlog, the
//! throughput target, and this run beside the previous one of the same kind (QUICK or full),
//! so that a regression shows.

use crate::stats::median;
use anyhow::Result;
use serde_json::Value;
use std::fmt::Write;
use std::path::Path;

/// A change for the worse beyond this share is flagged (runs on a shared 2-core machine
/// vary by about this much).
pub const REGRESSION_THRESHOLD: f64 = 0.10;
/// Issue 16, item 5: throughput as a share of the emulator's ceiling.
pub const GOAL_CEILING_SHARE: f64 = 0.70;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Better {
    Higher,
    Lower,
}

/// A value at a dotted path ("a.b.0.c"), or the median over `throughput_runs` for a path
/// starting with "runs.".
fn figure(results: &Value, path: &str) -> Option<f64> {
    let at = |root: &Value, path: &str| {
        path.split('.')
            .try_fold(root, |node, part| match part.parse::<usize>() {
                Ok(n) => node.get(n),
                Err(_) => node.get(part),
            })
            .and_then(Value::as_f64)
    };
    match path.strip_prefix("runs.") {
        Some(rest) => {
            let values: Vec<f64> = results["throughput_runs"]
                .as_array()?
                .iter()
                .filter_map(|run| at(run, rest))
                .collect();
            (!values.is_empty()).then(|| median(&values))
        }
        None => at(results, path),
    }
}

const HEADLINE: [(&str, &str, Better); 14] = [
    (
        "Throughput, tasks/hour",
        "throughput_median_tasks_per_hour",
        Better::Higher,
    ),
    (
        "Share of the emulator ceiling",
        "ratio_to_emulator_ceiling",
        Better::Higher,
    ),
    (
        "Emulator ceiling, tasks/hour",
        "emulator_ceiling_tasks_per_hour",
        Better::Higher,
    ),
    (
        "CPU ms per task, all functions",
        "runs.cpu_ms_per_task.functions_total_ms",
        Better::Lower,
    ),
    (
        "CPU ms per task, functions + harness",
        "runs.project_cpu_seconds_per_1000",
        Better::Lower,
    ),
    (
        "CPU ms per task, emulator",
        "runs.emulator_cpu_seconds_per_1000",
        Better::Lower,
    ),
    (
        "POST /api/tasks p50, ms",
        "runs.create_latency_ms.p50",
        Better::Lower,
    ),
    (
        "Critical start under backlog p50, ms",
        "priority.critical_start_ms.p50",
        Better::Lower,
    ),
    (
        "Critical start under backlog p99, ms",
        "priority.critical_start_ms.p99",
        Better::Lower,
    ),
    (
        "Critical p99, largest backlog / none",
        "priority_levels.p99_ratio_largest_to_none",
        Better::Lower,
    ),
    (
        "Chain overhead per step, ms",
        "chain.overhead_per_step_ms",
        Better::Lower,
    ),
    (
        "Batch items per second",
        "batch.items_per_second",
        Better::Higher,
    ),
    (
        "AWS requests per task lifecycle",
        "requests_per_unit.task_lifecycle.total_requests",
        Better::Lower,
    ),
    (
        "USD per million tasks",
        "requests_per_unit.task_lifecycle.cost.per_million_usd",
        Better::Lower,
    ),
];

/// The change from `previous` to `now` in %, and whether it is a regression.
fn change(previous: f64, now: f64, better: Better) -> Option<(f64, bool)> {
    if previous == 0.0 {
        return None;
    }
    let change = (now - previous) / previous.abs();
    let worse = match better {
        Better::Higher => -change,
        Better::Lower => change,
    };
    Some((change * 100.0, worse > REGRESSION_THRESHOLD))
}

/// "This run vs previous": every headline figure, its change and a flag where it got worse.
pub fn comparison_markdown(previous: Option<&Value>, now: &Value) -> Result<String> {
    let mut md = String::new();
    let Some(previous) = previous else {
        writeln!(md, "No previous run of this kind to compare with (`bench/results/previous-{{full,quick}}.json`).")?;
        return Ok(md);
    };
    let date = |v: &Value| {
        v["date"]
            .as_str()
            .unwrap_or("?")
            .get(..10)
            .unwrap_or("?")
            .to_owned()
    };
    writeln!(
        md,
        "This run ({}) against the previous run of the same kind ({}); a change for the worse of more than {:.0} % is flagged. A figure the previous run did not measure reads n/a.\n",
        date(now),
        date(previous),
        REGRESSION_THRESHOLD * 100.0
    )?;
    writeln!(md, "| Headline figure | Previous | This run | Change | |")?;
    writeln!(md, "|---|---|---|---|---|")?;
    for (label, path, better) in HEADLINE {
        let (was, is) = (figure(previous, path), figure(now, path));
        let shown = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v}"));
        let (delta, flag) = match (was, is) {
            (Some(was), Some(is)) => match change(was, is, better) {
                Some((pct, regressed)) => (
                    format!("{pct:+.1} %"),
                    if regressed { "**regression**" } else { "" },
                ),
                None => ("n/a".into(), ""),
            },
            _ => ("n/a".into(), ""),
        };
        writeln!(
            md,
            "| {label} | {} | {} | {delta} | {flag} |",
            shown(was),
            shown(is)
        )?;
    }
    Ok(md)
}

/// Moves the existing latest.json aside as the previous run of its kind, and returns the
/// previous run of the kind about to be written.
pub fn keep_previous(dir: &Path, quick: bool) -> Option<Value> {
    let kind = |quick: bool| {
        dir.join(if quick {
            "previous-quick.json"
        } else {
            "previous-full.json"
        })
    };
    if let Some(latest) = std::fs::read_to_string(dir.join("latest.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
    {
        let was_quick = latest["quick"].as_bool().unwrap_or(false);
        if let Ok(text) = serde_json::to_string_pretty(&latest) {
            let _ = std::fs::write(kind(was_quick), text);
        }
    }
    std::fs::read_to_string(kind(quick))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
}

/// CPU per task by process, beside the peer's whole stack.
pub fn cpu_markdown(results: &Value) -> Result<String> {
    let mut md = String::new();
    let runs = results["throughput_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let med = |path: &str| figure(results, &format!("runs.{path}"));
    let shown = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
    writeln!(md, "| CPU per task (throughput runs, median of {}; the functions are release binaries under the local Lambda runtime) | ms |", runs.len())?;
    writeln!(md, "|---|---|")?;
    let names: std::collections::BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r["cpu_ms_per_task"]["functions_ms"].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    for name in &names {
        writeln!(
            md,
            "| {name} | {} |",
            shown(med(&format!("cpu_ms_per_task.functions_ms.{name}")))
        )?;
    }
    let functions = med("cpu_ms_per_task.functions_total_ms");
    let goal = crate::cpu::GOAL_FUNCTIONS_MS_PER_TASK;
    let verdict = match functions {
        Some(f) if f <= goal => "met".to_owned(),
        Some(f) => format!("missed by {:.3} ms ({:.1}×)", f - goal, f / goal),
        None => "n/a".into(),
    };
    writeln!(
        md,
        "| **All functions** (goal ≤ {goal} ms: {verdict}) | {} |",
        shown(functions)
    )?;
    writeln!(
        md,
        "| Harness: load generator and local host (API Gateway, pollers, runtime) | {} |",
        shown(med("cpu_ms_per_task.harness_ms"))
    )?;
    writeln!(
        md,
        "| Emulator (moto) | {} |",
        shown(med("cpu_ms_per_task.emulator_ms"))
    )?;
    let peer: Vec<f64> = results["peer"]["throughput_runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["cpu"]["total_ms_per_task"].as_f64())
        .collect();
    let peer = (!peer.is_empty()).then(|| median(&peer));
    writeln!(
        md,
        "| BullMQ peer, whole stack (node + redis) | {} |",
        shown(peer)
    )?;
    if let (Some(f), Some(p)) = (functions, peer) {
        if p > 0.0 {
            writeln!(
                md,
                "| All functions against the peer's whole stack | {:.2}× |",
                f / p
            )?;
        }
    }
    writeln!(
        md,
        "| Environments started during the runs (cold starts, in the figures above) | {} |",
        med("cpu_ms_per_task.cold_starts").unwrap_or(0.0)
    )?;
    Ok(md)
}

/// Critical queue-to-start at each backlog, the emulator's part of it, and the peer's.
pub fn priority_markdown(levels: &Value, peer_levels: &Value) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "| Background backlog (still queued when the critical tasks came) | Critical queue-to-start p50 / p99, ms | In the emulator p50 / p99 | Outside it p50 / p99 | Background started meanwhile | Emulator mean per request, ms | BullMQ peer p50 / p99 |")?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    let pair = |l: &Value| format!("{} / {}", l["p50"], l["p99"]);
    for (n, level) in levels["levels"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let peer = &peer_levels[n]["critical_start_ms"];
        let peer = if peer.is_object() {
            pair(peer)
        } else {
            "n/a".into()
        };
        writeln!(
            md,
            "| {} ({}) | {} | {} | {} | {} | {} | {} |",
            level["backlog"],
            level["background_waiting_when_critical_created"],
            pair(&level["critical_start_ms"]),
            pair(&level["critical_emulator_ms"]),
            pair(&level["critical_outside_emulator_ms"]),
            level["background_started_meanwhile"],
            level["window_mean_emulator_ms"],
            peer
        )?;
    }
    let goal = levels["goal_p99_ratio_at_most"]
        .as_f64()
        .unwrap_or(crate::priority::GOAL_P99_RATIO);
    let verdict = match levels["p99_ratio_largest_to_none"].as_f64() {
        Some(r) if r <= goal => format!("{r}×: met"),
        Some(r) => format!("{r}×: missed by {:.2}×", r - goal),
        None => "n/a".into(),
    };
    writeln!(
        md,
        "\nCritical p99 at the largest backlog against none: {verdict} (goal ≤ {goal}×); outside the emulator {}×, in the emulator {}×.",
        levels["outside_emulator_p99_ratio"], levels["emulator_p99_ratio"]
    )?;
    Ok(md)
}

/// "55 % (goal ≥ 70 %: missed by 15 points)".
pub fn ceiling_share(share: f64) -> String {
    let goal = GOAL_CEILING_SHARE * 100.0;
    let pct = share * 100.0;
    if pct >= goal {
        format!("{pct:.0} % (goal ≥ {goal:.0} %: met)")
    } else {
        format!(
            "{pct:.0} % (goal ≥ {goal:.0} %: missed by {:.0} points)",
            goal - pct
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(tph: f64, functions_ms: f64, p99: f64) -> Value {
        json!({
            "date": "2026-12-01T10:00:00Z",
            "throughput_median_tasks_per_hour": tph,
            "throughput_runs": [
                {"cpu_ms_per_task": {"functions_total_ms": functions_ms, "functions_ms": {"api": 0.5}}},
                {"cpu_ms_per_task": {"functions_total_ms": functions_ms * 3.0}},
                {"cpu_ms_per_task": {"functions_total_ms": functions_ms * 2.0}},
            ],
            "priority": {"critical_start_ms": {"p50": 100.0, "p99": p99}},
        })
    }

    #[test]
    fn figures_read_paths_and_medians_over_the_runs() {
        let results = run(1000.0, 1.0, 300.0);
        assert_eq!(
            figure(&results, "throughput_median_tasks_per_hour"),
            Some(1000.0)
        );
        assert_eq!(
            figure(&results, "runs.cpu_ms_per_task.functions_total_ms"),
            Some(2.0)
        );
        assert_eq!(
            figure(&results, "priority.critical_start_ms.p99"),
            Some(300.0)
        );
        assert_eq!(figure(&results, "batch.items_per_second"), None);
        assert_eq!(figure(&json!({"a": [{"b": 4}]}), "a.0.b"), Some(4.0));
    }

    #[test]
    fn changes_are_flagged_by_direction_beyond_the_threshold() {
        // Throughput down 20 %: worse. CPU down 20 %: better.
        assert_eq!(change(100.0, 80.0, Better::Higher), Some((-20.0, true)));
        assert_eq!(change(100.0, 80.0, Better::Lower), Some((-20.0, false)));
        // Within the threshold is not flagged.
        assert_eq!(change(100.0, 109.0, Better::Lower), Some((9.0, false)));
        assert_eq!(change(100.0, 111.0, Better::Lower).map(|c| c.1), Some(true));
        assert_eq!(change(0.0, 5.0, Better::Lower), None);
    }

    #[test]
    fn the_comparison_table_flags_regressions() {
        let md =
            comparison_markdown(Some(&run(1000.0, 1.0, 300.0)), &run(700.0, 0.5, 310.0)).unwrap();
        let row = |label: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| {label} |")))
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            row("Throughput, tasks/hour"),
            "| Throughput, tasks/hour | 1000 | 700 | -30.0 % | **regression** |"
        );
        assert_eq!(
            row("CPU ms per task, all functions"),
            "| CPU ms per task, all functions | 2 | 1 | -50.0 % |  |"
        );
        assert!(row("Critical start under backlog p99, ms").ends_with("| +3.3 % |  |"));
        assert!(row("Batch items per second").contains("| n/a | n/a | n/a |"));
        assert!(comparison_markdown(None, &run(1.0, 1.0, 1.0))
            .unwrap()
            .starts_with("No previous run"));
    }

    #[test]
    fn the_previous_run_is_kept_by_kind() {
        let dir = std::env::temp_dir().join(format!("bench-previous-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |v: Value| std::fs::write(dir.join("latest.json"), v.to_string()).unwrap();
        assert_eq!(keep_previous(&dir, false), None);
        write(json!({"quick": false, "date": "full-1"}));
        assert_eq!(keep_previous(&dir, false).unwrap()["date"], "full-1");
        // A quick run in between does not replace the full run's previous.
        write(json!({"quick": true, "date": "quick-1"}));
        assert_eq!(keep_previous(&dir, false).unwrap()["date"], "full-1");
        assert_eq!(keep_previous(&dir, true).unwrap()["date"], "quick-1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ceiling_share_names_the_miss() {
        assert_eq!(
            ceiling_share(0.55),
            "55 % (goal ≥ 70 %: missed by 15 points)"
        );
        assert_eq!(ceiling_share(0.72), "72 % (goal ≥ 70 %: met)");
    }

    #[test]
    fn cpu_and_priority_tables_state_the_goals() {
        let results = json!({
            "throughput_runs": [{"cpu_ms_per_task": {"functions_total_ms": 2.5, "harness_ms": 3.0,
                "emulator_ms": 9.0, "cold_starts": 0, "functions_ms": {"api": 1.0, "worker": 1.5}}}],
            "peer": {"throughput_runs": [{"cpu": {"total_ms_per_task": 0.5}}]},
        });
        let md = cpu_markdown(&results).unwrap();
        assert!(md.contains("| worker | 1.500 |"), "{md}");
        assert!(
            md.contains("goal ≤ 1 ms: missed by 1.500 ms (2.5×)) | 2.500 |"),
            "{md}"
        );
        assert!(
            md.contains("| All functions against the peer's whole stack | 5.00× |"),
            "{md}"
        );
        let levels = json!({"goal_p99_ratio_at_most": 1.5, "p99_ratio_largest_to_none": 2.0,
            "outside_emulator_p99_ratio": 1.1, "emulator_p99_ratio": 3.0,
            "levels": [{"backlog": 0, "background_waiting_when_critical_created": 0,
                "critical_start_ms": {"p50": 1.0, "p99": 2.0}}]});
        let md = priority_markdown(
            &levels,
            &json!([{"critical_start_ms": {"p50": 5, "p99": 7}}]),
        )
        .unwrap();
        assert!(md.contains("| 0 (0) | 1.0 / 2.0 |"), "{md}");
        assert!(md.contains("| 5 / 7 |"), "{md}");
        assert!(md.contains("2×: missed by 0.50× (goal ≤ 1.5×)"), "{md}");
    }
}
