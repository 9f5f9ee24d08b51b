//! Priority tiers end to end: dispatch, workers, retries, the DLQ, exactly-once
//! effects, takeover after a crash, auto-assignment and aging.

use integration_tests::{
    eventually, isolated_stack, stack, unique_agency, wait_for_status, worker_config, Client,
    ScriptedEndpoint,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

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
    let flaky = ScriptedEndpoint::start(vec![503]).await;
    let id = boss
        .create_task(
            &json!({"title": "Flaky hook", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": flaky.url, "timeoutSeconds": 10}},
            "retry": {"maxAttempts": 3, "baseDelaySeconds": 1}}),
        )
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["attempts"], 2);
    assert_eq!(task["result"], json!({"call": 2}));
    assert_eq!(flaky.hits(), 2);

    let rejecting = ScriptedEndpoint::start(vec![422, 422, 422]).await;
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
    assert_eq!(rejecting.hits(), 1);
}

#[tokio::test]
async fn exhausted_retries_fail_the_task_and_dead_letter_the_message() {
    let boss = manager();
    let id = boss
        .create_task(
            &json!({"title": "Always fails", "priority": "high", "autoDispatch": true,
            "executor": {"type": "sleep", "config": {"seconds": 0, "failAttempts": 10}},
            "retry": {"maxAttempts": 2, "baseDelaySeconds": 1}}),
        )
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "failed");
    assert_eq!(task["attempts"], 2);
    assert!(
        task["error"].as_str().unwrap().contains("fails by request"),
        "{task}"
    );

    // The message is on the high tier's DLQ, with the error recorded.
    let clients = stack().clients().await;
    let dlq = &stack().refs["HighDeadLetterQueue"];
    let dead = eventually("the dead letter", Duration::from_secs(20), || async {
        let out = clients
            .sqs
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .visibility_timeout(0)
            .send()
            .await
            .ok()?;
        out.messages
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.body.as_deref().is_some_and(|b| b.contains(&id)))
    })
    .await;
    let error = dead.message_attributes.unwrap_or_default()["error"]
        .string_value
        .clone()
        .unwrap_or_default();
    assert!(error.contains("fails by request"), "{error}");

    // A manual retry queues it again from the first attempt.
    let retried = boss
        .post(&format!("/api/tasks/{id}/retry"), &json!({}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    assert!(["queued", "in_progress", "failed"].contains(&retried.body["status"].as_str().unwrap()));
    assert_eq!(retried.body["attempts"], 0);
}

#[tokio::test]
async fn a_duplicate_delivery_runs_the_task_once() {
    let boss = manager();
    let endpoint = ScriptedEndpoint::start(vec![]).await;
    let created = boss
        .post(
            "/api/tasks",
            &json!({"title": "Once", "priority": "critical", "autoDispatch": true,
            "executor": {"type": "http", "config": {"url": endpoint.url}}}),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    // Deliver the very same dispatch a second time, as SQS may.
    let duplicate = json!({
        "taskId": id, "agencyId": created.body["agencyId"], "dispatchId": created.body["dispatchId"],
        "priority": "critical", "enqueuedAt": created.body["queuedAt"],
    });
    let clients = stack().clients().await;
    clients
        .sqs
        .send_message()
        .queue_url(&stack().refs["CriticalQueue"])
        .message_body(duplicate.to_string())
        .send()
        .await
        .unwrap();
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed");
    // Both deliveries have been consumed once the critical queue holds nothing for this task.
    integration_tests::wait_until_drained(&stack().refs["CriticalQueue"]).await;
    assert_eq!(endpoint.hits(), 1, "the executor ran once");
    let after = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(after["attempts"], 1);
    assert_eq!(after["version"], task["version"]);
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
    first.kill_functions();

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
    let queues = boss.get("/api/queues").await.body;
    let low = queues["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "low")
        .cloned()
        .unwrap();
    assert_eq!(low["breachesLastHour"], 1, "{queues}");
    assert_eq!(low["slaSeconds"], 7200);
    isolated.stop().await;
}
