//! The soak: a steady rate of tasks for SOAK_SECONDS (default 600), then every
//! task must complete exactly once. `make soak`; not part of `make test`.

use integration_tests::{eventually, unique_agency, Client, Ledger};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
#[ignore = "ten minutes long: run with `make soak`"]
async fn steady_load_loses_and_duplicates_nothing() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let per_second: u64 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let endpoint = Ledger::start();
    let boss = Client::as_user(&unique_agency("soak"), "boss", "manager");
    let started = Instant::now();
    let mut created = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / per_second.max(1)));
    while started.elapsed() < Duration::from_secs(seconds) {
        ticks.tick().await;
        let priority = ["critical", "high", "normal", "low", "background"][(created % 5) as usize];
        boss.create_task_retrying(&json!({"title": format!("soak {created}"), "priority": priority, "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": endpoint.url}}, "input": {"n": created}}))
            .await;
        created += 1;
        if created.is_multiple_of(100) {
            eprintln!("soak: {created} tasks created in {:?}", started.elapsed());
        }
    }
    let completed = eventually(
        "every soak task to complete",
        Duration::from_secs(900),
        || async {
            let mut completed = 0u64;
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(c) => format!("/api/tasks?status=completed&limit=100&cursor={c}"),
                    None => "/api/tasks?status=completed&limit=100".to_owned(),
                };
                let page = boss.get(&path).await.body;
                completed += page["items"].as_array()?.len() as u64;
                match page["nextCursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            eprintln!("soak: {completed}/{created} completed");
            (completed == created).then_some(completed)
        },
    )
    .await;
    let runs = endpoint.runs();
    let executions = runs.len() as u64;
    let mut units: Vec<_> = runs.iter().map(|r| r.task_id.clone()).collect();
    units.sort();
    units.dedup();
    eprintln!("soak: created {created}, completed {completed}, executor calls {executions}");
    assert_eq!(completed, created, "lost tasks");
    assert_eq!(units.len() as u64, created, "tasks that never ran");
    assert_eq!(executions, created, "duplicated executions");
}
