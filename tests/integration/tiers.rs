//! Priority tiers end to end: dispatch, workers, retries, the DLQ, exactly-once
//! effects, takeover after a crash, auto-assignment and aging.

use integration_tests::ledger::attempts;
use integration_tests::{
    dead_letter, isolated_stack, stack, unique_agency, wait_for_status, worker_config, Client,
    Ledger,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn manager() -> Client {
    Client::as_user(&unique_agency("tiers"), "boss", "manager")
}

#[tokio::test]
async fn echo_task_runs_and_records_its_timings() {
    let boss = manager();
    let input = json!({"invoice": 42, "lines": ["a", "b"]});
    let id = boss
        .create_task(&json!({"title": "Echo", "priority": "high", "executor": {"type": "echo"}, "input": input, "autoDispatch": true}))
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["result"], input);
    assert_eq!(task["attempts"], 1);
    assert!(task["queueWaitMs"].is_u64(), "{task}");
    assert!(task["startedAt"].as_str() <= task["completedAt"].as_str());
}

#[tokio::test]
async fn http_executor_retries_5xx_then_succeeds_and_never_retries_4xx() {
    let boss = manager();
    // The first run of each task gets a 503, later runs a 200.
    let flaky = Ledger::answering(|_, earlier| if earlier.is_empty() { 503 } else { 200 });
    let id = boss
        .create_task(
            &json!({"title": "Flaky hook", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": flaky.url, "timeoutSeconds": 5}},
            "retry": {"maxAttempts": 3, "baseDelaySeconds": 1}}),
        )
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["attempts"], 2);
    let runs = flaky.runs_of(&id);
    let dispatch = task["dispatchId"].as_str().map(str::to_owned);
    assert_eq!(
        attempts(&runs),
        [(1, dispatch.clone()), (2, dispatch)],
        "one run per attempt"
    );
    assert_eq!(
        task["result"],
        json!({"run": runs[1].seq}),
        "the last run's answer"
    );

    let rejecting = Ledger::answering(|_, _| 422);
    let id = boss
        .create_task(
            &json!({"title": "Bad request", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": rejecting.url}},
            "retry": {"maxAttempts": 3, "baseDelaySeconds": 1}}),
        )
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 1, "4xx is not retried: {task}");
    assert!(task["error"].as_str().unwrap().contains("422"), "{task}");
    assert_eq!(rejecting.runs_of(&id).len(), 1);
}

#[tokio::test]
async fn exhausted_retries_fail_the_task_and_a_manual_retry_runs_it_again() {
    let boss = manager();
    // Two failing runs exhaust the task's attempts; the run after the manual retry succeeds.
    let ledger = Ledger::answering(|_, earlier| if earlier.len() < 2 { 503 } else { 200 });
    let id = boss
        .create_task(
            &json!({"title": "Fails, then is fixed", "priority": "high", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": ledger.url}},
            "retry": {"maxAttempts": 2, "baseDelaySeconds": 1}}),
        )
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 2);
    assert!(task["error"].as_str().unwrap().contains("503"), "{task}");
    let first_dispatch = task["dispatchId"].as_str().map(str::to_owned);

    // The message is on the high tier's DLQ, with the error recorded.
    let dlq = &stack().refs["HighDeadLetterQueue"];
    let dead = dead_letter(dlq, "the dead letter", |body| body.contains(&id)).await;
    let error = dead.message_attributes.unwrap_or_default()["error"]
        .string_value
        .clone()
        .unwrap_or_default();
    assert!(error.contains("503"), "{error}");

    // A manual retry queues it again from the first attempt, under a new dispatch, and it runs.
    let retried = boss
        .post(&format!("/api/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert_eq!(retried.body["attempts"], 0);
    let task = wait_for_status(&boss, &id, &["completed"]).await;
    let second_dispatch = task["dispatchId"].as_str().map(str::to_owned);
    assert_ne!(second_dispatch, first_dispatch);
    let runs = ledger.runs_of(&id);
    assert_eq!(
        attempts(&runs),
        [
            (1, first_dispatch.clone()),
            (2, first_dispatch),
            (1, second_dispatch)
        ],
        "two failed runs, then exactly one run after the retry"
    );
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["result"], json!({"run": runs[2].seq}));
}

/// Sends a dispatch message for `task` with `dispatch_id` to the critical queue, as a
/// redelivery (or a stale message) would arrive.
async fn deliver(task: &Value, dispatch_id: &Value) {
    let message = json!({
        "taskId": task["id"], "agencyId": task["agencyId"], "dispatchId": dispatch_id,
        "priority": "critical", "enqueuedAt": task["queuedAt"],
    });
    stack()
        .clients()
        .await
        .sqs
        .send_message()
        .queue_url(&stack().refs["CriticalQueue"])
        .message_body(message.to_string())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn duplicate_and_stale_deliveries_never_run_a_task_again() {
    let boss = manager();
    // Each task's first run is refused (a permanent 4xx), later runs succeed.
    let ledger = Ledger::answering(|_, earlier| if earlier.is_empty() { 422 } else { 200 });
    ledger.hold();
    let created = boss
        .post(
            "/api/tasks",
            &json!({"title": "Once", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": ledger.url}}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let first_dispatch = created.body["dispatchId"].clone();
    // A duplicate of the live dispatch while its run is held open: the lease keeps it out.
    ledger
        .wait_for("the first run", 1, |r| r.task_id == id)
        .await;
    deliver(&created.body, &first_dispatch).await;
    ledger.release();
    let failed = wait_for_status(&boss, &id, &["failed"]).await;
    // A duplicate of a failed task's dispatch (a redrive): back to the DLQ, never run.
    deliver(&failed, &first_dispatch).await;

    // The manual retry dispatches anew; the old dispatch id is now stale.
    let retried = boss
        .post(&format!("/api/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    let completed = wait_for_status(&boss, &id, &["completed"]).await;
    deliver(&completed, &first_dispatch).await;
    deliver(&completed, &completed["dispatchId"]).await;
    // Every delivery has been consumed once the critical queue holds nothing.
    integration_tests::wait_until_drained(&stack().refs["CriticalQueue"]).await;

    let runs = ledger.runs_of(&id);
    assert_eq!(
        attempts(&runs),
        [
            (1, first_dispatch.as_str().map(str::to_owned)),
            (1, completed["dispatchId"].as_str().map(str::to_owned))
        ],
        "one run per dispatch: {runs:?}"
    );
    let after = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(after["attempts"], 1);
    assert_eq!(
        after["version"], completed["version"],
        "nothing wrote it again"
    );
}

#[tokio::test]
async fn a_killed_workers_task_still_completes() {
    let mut first = isolated_stack("taskflow-crash").await;
    let boss = manager().at(&first.api_url());
    let id = boss
        .create_task(
            &json!({"title": "Survives a crash", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "sleep", "config": {"seconds": 6}}}),
        )
        .await;
    wait_for_status(&boss, &id, &["in_progress"]).await;
    first.kill_functions().await;

    // A new host on the same queues and table takes over once the lease and visibility lapse.
    let second = isolated_stack("taskflow-crash").await;
    let boss = boss.at(&second.api_url());
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["attempts"], 2, "the lost run plus the takeover");
    second.stop().await;
}

#[tokio::test]
async fn concurrent_auto_assignment_never_exceeds_capacity() {
    let agency = unique_agency("agents");
    let boss = Client::as_user(&agency, "boss", "manager");
    for agent in ["bot-1", "bot-2"] {
        let me = Client::as_user(&agency, agent, "agent");
        let reply = me
            .put(
                &format!("/api/agents/{agent}"),
                &json!({"capabilities": ["ocr"], "capacity": 2}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    // Only the agent itself (or a manager) may heartbeat for it.
    let impostor = Client::as_user(&agency, "bot-1", "agent");
    assert_eq!(
        impostor
            .put("/api/agents/bot-2", &json!({"capacity": 9}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(
            boss.create_task(&json!({"title": format!("scan {n}"), "requiredCapability": "ocr"}))
                .await,
        );
    }
    let attempts: Vec<_> = ids
        .iter()
        .map(|id| {
            let (boss, id) = (boss.clone(), id.clone());
            tokio::spawn(async move {
                boss.post(&format!("/api/tasks/{id}/assign"), &json!({"auto": true}))
                    .await
            })
        })
        .collect();
    let mut assigned = 0;
    for attempt in attempts {
        let reply = attempt.await.unwrap();
        match reply.status.as_u16() {
            200 => assigned += 1,
            409 => {}
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(assigned, 4, "two agents with capacity 2");
    let agents = boss.get("/api/agents").await.body;
    for agent in agents["items"].as_array().unwrap() {
        assert_eq!(agent["activeTasks"], 2, "{agent}");
    }
    // Finishing a task frees capacity.
    let listed = boss.get("/api/tasks?assignee=bot-1").await.body;
    let first: Value = listed["items"][0].clone();
    let id = first["id"].as_str().unwrap();
    let bot = Client::as_user(&agency, "bot-1", "agent");
    assert_eq!(
        bot.post(&format!("/api/tasks/{id}/start"), &json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        bot.post(&format!("/api/tasks/{id}/complete"), &json!({"result": 1}))
            .await
            .status,
        StatusCode::OK
    );
    let bot1 = boss.get("/api/agents").await.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "bot-1")
        .cloned()
        .unwrap();
    assert_eq!(bot1["activeTasks"], 1);
}

#[tokio::test]
async fn a_bad_executor_config_is_a_clear_400() {
    let boss = manager();
    let reply = boss
        .post(
            "/api/tasks",
            &json!({"title": "x", "executor": {"type": "teleport"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.body["error"]["fields"]["executor"],
        "unknown executor 'teleport'; known: echo, http, manual, sleep"
    );
    let reply = boss
        .post(
            "/api/tasks",
            &json!({"title": "x", "executor": {"type": "http", "config": {"url": "ftp://files"}}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body["error"]["fields"]["executor"]
            .as_str()
            .unwrap()
            .contains("http or https"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn aging_promotes_a_starved_low_priority_task_and_records_the_breach() {
    // Its own table and queues: the sweep below sees only this test's work.
    let isolated = isolated_stack("taskflow-aging").await;
    let boss = manager().at(&isolated.api_url());
    let id = boss
        .create_task(&json!({"title": "Forgotten", "priority": "low"}))
        .await;
    let clients = stack().clients().await;
    let services = shared::services::Services::new(&worker_config(&isolated), &clients);
    // Two and a half hours from now this task has starved past the low tier's SLA.
    let later = chrono::Utc::now() + chrono::Duration::minutes(150);
    let report = services.sweeper.sweep(later).await.expect("sweep");
    assert!(report.promoted >= 1, "{report:?}");
    let task = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(task["priority"], "normal");
    assert_eq!(task["promotedFrom"], "low");
    assert!(task["slaBreachedAt"].is_string());
    // The breach happened at `later`: it counts in the hour up to `later`, and neither an
    // hour after it nor now, before it happened (the window is bounded on both sides).
    let low_breaches = |at| {
        let queues = services.queues.clone();
        async move {
            let tiers = queues.tiers_at(at).await.expect("queue overview");
            tiers
                .into_iter()
                .find(|t| t.tier == shared::domain::Priority::Low)
                .expect("low tier")
                .breaches_last_hour
        }
    };
    assert_eq!(low_breaches(later).await, 1);
    assert_eq!(low_breaches(later + chrono::Duration::minutes(61)).await, 0);
    let queues = boss.get("/api/queues").await.body;
    let low = queues["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "low")
        .cloned()
        .unwrap();
    assert_eq!(low["breachesLastHour"], 0, "not yet happened: {queues}");
    assert_eq!(low["slaSeconds"], 7200);
    isolated.stop().await;
}

/// Issue 13 item 8 on DynamoDB: the sweeper pages through more overdue work than one index
/// page (GSI4 paged by its own cursor), escalated tasks leave the index, and breached critical
/// work moves to a partition of its own while the queue overview still reports its wait.
#[tokio::test]
async fn the_sweeper_pages_past_a_full_page_and_handled_work_leaves_the_index() {
    let isolated = isolated_stack("taskflow-sweep-pages").await;
    let clients = stack().clients().await;
    let services = shared::services::Services::new(&worker_config(&isolated), &clients);
    let agency = unique_agency("sweep");
    let boss = shared::domain::Caller {
        user: shared::domain::UserId::parse("boss").unwrap(),
        agency: shared::domain::AgencyId::parse(&agency).unwrap(),
        role: shared::domain::Role::Manager,
    };
    let now = chrono::Utc::now();
    let overdue = (now - chrono::Duration::minutes(5)).to_rfc3339();
    for i in 0..150 {
        services
            .tasks
            .create(
                &boss,
                &json!({"title": format!("late {i}"), "priority": "normal", "dueAt": overdue}),
                None,
            )
            .await
            .expect("create");
    }
    let waiting = services
        .tasks
        .create(
            &boss,
            &json!({"title": "waits", "priority": "critical"}),
            None,
        )
        .await
        .expect("create");
    let waiting_id = waiting.task["id"].as_str().unwrap().to_owned();

    let later = now + chrono::Duration::minutes(2);
    let report = services.sweeper.sweep(later).await.expect("sweep");
    assert_eq!(report.escalated, 150, "{report:?}");
    assert_eq!(report.breaches, 1, "{report:?}");
    let api = Client::as_user(&agency, "boss", "manager").at(&isolated.api_url());
    let page = api.get("/api/tasks?priority=critical&limit=100").await.body;
    assert_eq!(page["items"].as_array().unwrap().len(), 100, "{page}");
    let task = api.get(&format!("/api/tasks/{waiting_id}")).await.body;
    assert!(task["slaBreachedAt"].is_string(), "{task}");

    // Everything handled left the pages: the next pass (before the escalated tasks have
    // waited long as critical work) escalates and records nothing.
    let report = services
        .sweeper
        .sweep(later + chrono::Duration::seconds(20))
        .await
        .expect("sweep");
    assert_eq!((report.escalated, report.breaches), (0, 0), "{report:?}");
    let critical = services
        .queues
        .tiers_at(later)
        .await
        .expect("overview")
        .into_iter()
        .find(|t| t.tier == shared::domain::Priority::Critical)
        .unwrap();
    // About two minutes (the task was created just after `now`); 0 had the breach write reset it.
    assert!(critical.oldest_waiting_seconds >= 100, "{critical:?}");
    isolated.stop().await;
}
