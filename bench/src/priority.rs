//! Priority under backlog (issue 16, item 4): critical queue-to-start behind background
//! backlogs of several sizes in one run (0, 500 and 2,000; QUICK 0, 100 and 400), each level in
//! an agency of its own; once its critical tasks have started, what is left of its backlog is
//! cancelled (one agency's background backlog drains at about one task per second behind its
//! dispatch window, so waiting for it would take half an hour). Each critical task's
//! wait is split into time in the emulator (the requests that name the task between its
//! creation and its start, as the counting proxy timed them) and the rest (our code, the
//! local host's queue polling and process hops).

use crate::client::{between, Api};
use crate::counting_proxy::{CountingProxy, Traced};
use crate::stats::Latency;
use crate::workloads::create_many;
use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// The goal: p99 at the largest backlog at most this many times p99 with none.
pub const GOAL_P99_RATIO: f64 = 1.5;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Priority {
    pub backlog: usize,
    pub critical: usize,
    pub critical_start_ms: Latency,
    pub background_started_meanwhile: usize,
    /// Background tasks not yet started when the first critical task was created.
    pub background_waiting_when_critical_created: usize,
    pub critical_sla_ms: f64,
    /// Per critical task: the emulator's time on its path and the rest.
    pub critical_emulator_ms: Latency,
    pub critical_outside_emulator_ms: Latency,
    /// Every request while the critical tasks waited: how many, and the emulator's mean time.
    pub window_requests: usize,
    pub window_mean_emulator_ms: f64,
}

/// The levels in one run, with the ratio of the largest backlog's p99 to the smallest's.
pub async fn levels(
    api_for: impl Fn(usize) -> Api,
    backlogs: &[usize],
    critical: usize,
    proxy: &CountingProxy,
) -> Result<Value> {
    let mut levels = Vec::new();
    for &backlog in backlogs {
        let api = api_for(backlog);
        tracing::info!("==> priority: {backlog} background then {critical} critical");
        let (level, backlog_ids) = level(&api, backlog, critical, proxy).await?;
        // Each level sees only its own backlog, and the later scenarios none.
        cancel(&api, &backlog_ids).await?;
        levels.push(level);
    }
    Ok(summary(levels))
}

fn summary(levels: Vec<Priority>) -> Value {
    let (first, last) = (levels.first(), levels.last());
    let ratio = |f: fn(&Priority) -> f64| match (first, last) {
        (Some(a), Some(b)) if f(a) > 0.0 => Some((f(b) / f(a) * 100.0).round() / 100.0),
        _ => None,
    };
    let p99_ratio = ratio(|l| l.critical_start_ms.p99);
    json!({
        "goal_p99_ratio_at_most": GOAL_P99_RATIO,
        "p99_ratio_largest_to_none": p99_ratio,
        "goal_met": p99_ratio.map(|r| r <= GOAL_P99_RATIO),
        // The same ratio for the part of the wait outside the emulator: our own share.
        "outside_emulator_p99_ratio": ratio(|l| l.critical_outside_emulator_ms.p99),
        "emulator_p99_ratio": ratio(|l| l.critical_emulator_ms.p99),
        "levels": levels,
    })
}

/// Cancels `ids`, 16 at a time; a task that has already started or finished refuses (409),
/// which is fine.
async fn cancel(api: &Api, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(16) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (api, path) = (api.clone(), format!("/api/tasks/{id}/cancel"));
                tokio::spawn(async move { api.post(&path, &json!({})).await })
            })
            .collect();
        for call in calls {
            let (status, body, _) = call.await??;
            anyhow::ensure!(
                status == 200 || status == 409,
                "cancelling the backlog: {status} {body}"
            );
        }
    }
    Ok(())
}

/// One level: the backlog, then the critical tasks; returns the backlog's ids.
async fn level(
    api: &Api,
    backlog: usize,
    critical: usize,
    proxy: &CountingProxy,
) -> Result<(Priority, Vec<String>)> {
    let (backlog_ids, _) = create_many(api, backlog, 16, |n| {
        json!({"title": format!("backlog {n}"), "priority": "background", "autoDispatch": true,
               "executor": {"type": "sleep", "config": {"seconds": 1}}})
    })
    .await?;
    proxy.start_trace();
    let (ids, _) = create_many(api, critical, 10, |n| {
        json!({"title": format!("urgent {n}"), "priority": "critical", "autoDispatch": true, "executor": {"type": "echo"}})
    })
    .await?;
    let done = api.wait_all(&ids, Duration::from_secs(600)).await;
    let trace = proxy.take_trace();
    let done = done?;
    let starts: Vec<f64> = done
        .iter()
        .filter_map(|t| between(t, "createdAt", "startedAt"))
        .collect();
    let emulator: Vec<f64> = done.iter().map(|t| emulator_ms(t, &trace)).collect();
    let outside: Vec<f64> = done
        .iter()
        .zip(&emulator)
        .filter_map(|(t, e)| Some(between(t, "createdAt", "startedAt")? - e))
        .collect();
    let first_created = done.iter().filter_map(|t| at(t, "createdAt")).min();
    let last_started = done.iter().filter_map(|t| at(t, "startedAt")).max();
    let background = list_background(api).await?;
    let started = |t: &Value| at(t, "startedAt");
    let meanwhile = background
        .iter()
        .filter_map(started)
        .filter(|s| Some(*s) >= first_created && Some(*s) <= last_started)
        .count();
    let waiting = background
        .iter()
        .filter(|t| match (started(t), first_created) {
            (Some(s), Some(first)) => s > first,
            (None, _) => true,
            _ => false,
        })
        .count();
    let mean = if trace.is_empty() {
        0.0
    } else {
        trace.iter().map(|r| r.took.as_secs_f64()).sum::<f64>() * 1000.0 / trace.len() as f64
    };
    let level = Priority {
        backlog,
        critical,
        critical_start_ms: Latency::of(&starts),
        background_started_meanwhile: meanwhile,
        background_waiting_when_critical_created: waiting,
        critical_sla_ms: 60_000.0,
        critical_emulator_ms: Latency::of(&emulator),
        critical_outside_emulator_ms: Latency::of(&outside),
        window_requests: trace.len(),
        window_mean_emulator_ms: crate::cpu::ms3(mean),
    };
    Ok((level, backlog_ids))
}

fn at(task: &Value, field: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(task[field].as_str()?).ok()
}

/// The emulator's time on a task's path: the requests that name its id, sent between its
/// creation and its start. The queue receive that delivers it names no id (nor does a long
/// poll's wait belong to the emulator's work), so it is not counted.
pub fn emulator_ms(task: &Value, trace: &[Traced]) -> f64 {
    let (Some(id), Some(from), Some(to)) = (
        task["id"].as_str(),
        at(task, "createdAt"),
        at(task, "startedAt"),
    ) else {
        return 0.0;
    };
    let (from, to) = (SystemTime::from(from), SystemTime::from(to));
    trace
        .iter()
        .filter(|r| r.at >= from && r.at <= to && r.operation != "sqs:ReceiveMessage")
        .filter(|r| names(&r.body, id.as_bytes()))
        .map(|r| r.took.as_secs_f64() * 1000.0)
        .sum()
}

fn names(body: &[u8], id: &[u8]) -> bool {
    !id.is_empty() && body.windows(id.len()).any(|w| w == id)
}

async fn list_background(api: &Api) -> Result<Vec<Value>> {
    let mut tasks = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/tasks?priority=background&limit=100&cursor={c}"),
            None => "/api/tasks?priority=background&limit=100".to_owned(),
        };
        let page = api.get(&path).await?;
        tasks.extend(page["items"].as_array().context("list")?.iter().cloned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traced(at: &str, ms: u64, body: &str) -> Traced {
        Traced {
            at: DateTime::parse_from_rfc3339(at).unwrap().into(),
            took: Duration::from_millis(ms),
            operation: "dynamodb:UpdateItem".into(),
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn the_emulator_time_counts_the_requests_naming_the_task_in_its_wait() {
        let task = json!({"id": "01abc", "createdAt": "2026-12-01T00:00:10Z",
                          "startedAt": "2026-12-01T00:00:11Z"});
        let trace = [
            traced("2026-12-01T00:00:09.999Z", 50, r#"{"PK":"TASK#01abc"}"#), // before
            traced("2026-12-01T00:00:10Z", 7, r#"{"PK":"TASK#01abc"}"#),
            traced(
                "2026-12-01T00:00:10.5Z",
                3,
                r#"{"MessageBody":"{\"taskId\":\"01abc\"}"}"#,
            ),
            traced("2026-12-01T00:00:10.6Z", 40, r#"{"PK":"TASK#01xyz"}"#), // another task
            traced("2026-12-01T00:00:11Z", 2, "01abc"),
            traced("2026-12-01T00:00:11.001Z", 90, "01abc"), // after
        ];
        assert_eq!(emulator_ms(&task, &trace), 12.0);
        assert_eq!(emulator_ms(&json!({"id": "01abc"}), &trace), 0.0);
    }

    fn level(backlog: usize, p99: f64, outside_p99: f64) -> Priority {
        let latency = |p99| Latency {
            p50: 1.0,
            p95: p99,
            p99,
            samples: 20,
        };
        Priority {
            backlog,
            critical: 20,
            critical_start_ms: latency(p99),
            background_started_meanwhile: 0,
            background_waiting_when_critical_created: backlog,
            critical_sla_ms: 60_000.0,
            critical_emulator_ms: latency(p99 - outside_p99),
            critical_outside_emulator_ms: latency(outside_p99),
            window_requests: 0,
            window_mean_emulator_ms: 0.0,
        }
    }

    #[test]
    fn the_ratio_compares_the_largest_backlog_with_none() {
        let met = summary(vec![
            level(0, 200.0, 100.0),
            level(500, 250.0, 110.0),
            level(2000, 290.0, 120.0),
        ]);
        assert_eq!(met["p99_ratio_largest_to_none"], 1.45);
        assert_eq!(met["goal_met"], true);
        assert_eq!(met["outside_emulator_p99_ratio"], 1.2);
        assert_eq!(met["levels"].as_array().unwrap().len(), 3);
        let missed = summary(vec![level(0, 200.0, 100.0), level(2000, 320.0, 100.0)]);
        assert_eq!(missed["p99_ratio_largest_to_none"], 1.6);
        assert_eq!(missed["goal_met"], false);
        assert_eq!(summary(vec![])["goal_met"], Value::Null);
    }
}
