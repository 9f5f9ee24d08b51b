//! Priority accuracy: critical work overtakes a background backlog (PRD §9).

use chrono::{DateTime, Utc};
use integration_tests::{isolated_options, unique_agency, wait_for_status, Client};
use serde_json::{json, Value};

const BACKLOG: usize = 500;
const CRITICAL: usize = 20;

fn time(task: &Value, field: &str) -> DateTime<Utc> {
    task[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing: {task}"))
}

async fn create_many(boss: &Client, count: usize, body: Value) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(20) {
        let batch: Vec<_> = chunk
            .iter()
            .map(|_| {
                let (boss, body) = (boss.clone(), body.clone());
                tokio::spawn(async move { boss.create_task_retrying(&body).await })
            })
            .collect();
        for task in batch {
            ids.push(task.await.expect("create"));
        }
    }
    ids
}

#[tokio::test]
async fn critical_tasks_and_chains_start_before_a_tenth_of_a_background_backlog_drains() {
    // A stack of its own: the backlog it leaves would otherwise keep the shared stack's
    // background workers busy for minutes after the test, slowing every other test.
    let host = local_stack::LocalStack::start(isolated_options("taskflow-priority"))
        .await
        .expect("stack for the backlog");
    let agency = unique_agency("prio");
    let boss = Client::as_user(&agency, "boss", "manager").at(&host.api_url());
    let background = json!({"title": "bulk", "priority": "background", "autoDispatch": true,
        "executor": {"type": "sleep", "config": {"seconds": 2}}});
    create_many(&boss, BACKLOG, background).await;

    let critical = json!({"title": "page the on-call", "priority": "critical", "autoDispatch": true,
        "executor": {"type": "echo"}});
    let ids = create_many(&boss, CRITICAL, critical).await;
    // A critical chain: each of its steps is dispatched through the critical queue.
    let chain = boss
        .create_task_retrying(&json!({"title": "incident runbook", "type": "multi_step", "priority": "critical",
            "autoDispatch": true, "steps": [
                {"name": "page"}, {"name": "diagnose", "dependsOn": ["page"]}, {"name": "mitigate", "dependsOn": ["diagnose"]}
            ]}))
        .await;
    let mut first_created = None::<DateTime<Utc>>;
    let mut last_started = None::<DateTime<Utc>>;
    for id in &ids {
        let task = wait_for_status(&boss, id, &["completed", "failed"]).await;
        assert_eq!(task["status"], "completed", "{task}");
        // Ordering, not a wall-clock bound: the count of background starts inside the
        // critical window is checked below, on the system's own timestamps.
        let (created, started) = (time(&task, "createdAt"), time(&task, "startedAt"));
        first_created = Some(first_created.map_or(created, |t| t.min(created)));
        last_started = Some(last_started.map_or(started, |t| t.max(started)));
    }
    let chain_task = wait_for_status(&boss, &chain, &["completed", "failed"]).await;
    assert_eq!(chain_task["status"], "completed", "{chain_task}");
    let steps = boss.get(&format!("/api/tasks/{chain}/steps")).await.body;
    for step in steps["steps"].as_array().unwrap() {
        last_started = last_started.map(|t| t.max(time(step, "startedAt")));
    }
    let (window_start, window_end) = (first_created.unwrap(), last_started.unwrap());

    // Background work that started while the critical tasks were in flight.
    let mut drained = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/tasks?priority=background&limit=100&cursor={c}"),
            None => "/api/tasks?priority=background&limit=100".to_owned(),
        };
        let page = boss.get(&path).await.body;
        for task in page["items"].as_array().unwrap() {
            if let Some(started) = task["startedAt"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            {
                if started >= window_start && started <= window_end {
                    drained += 1;
                }
            }
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(
        drained < BACKLOG / 10,
        "{drained} background tasks started while critical work waited"
    );
}
