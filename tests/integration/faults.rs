//! Faults: AWS briefly unreachable, poison messages, and a host killed mid-load.

use integration_tests::{
    eventually, isolated_options, isolated_stack, stack, unique_agency, wait_for_status, Client,
    Outage,
};
use local_stack::LocalStack;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_brief_outage_gives_retryable_errors_and_loses_nothing() {
    // On the hybrid backend both emulators go down: DynamoDB (moto) and SQS (LocalStack).
    let outage = Outage::in_front_of(&stack().attach);
    let mut options = isolated_options("taskflow-outage");
    options.backend = outage.backend.clone();
    let host = LocalStack::start(options)
        .await
        .expect("host behind the proxy");
    let boss = Client::as_user(&unique_agency("outage"), "boss", "manager").at(&host.api_url());
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            boss.create_task(
                &json!({"title": format!("work {n}"), "priority": "critical", "autoDispatch": true,
                "executor": {"type": "sleep", "config": {"seconds": 0.5}}}),
            )
            .await,
        );
    }
    outage.set_down(true);
    let refused = boss
        .post("/api/tasks", &json!({"title": "during the outage"}))
        .await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert_eq!(refused.error_code(), "service_unavailable");
    assert_eq!(refused.headers["retry-after"], "1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.set_down(false);

    for id in &ids {
        let task = wait_for_status(&boss, id, &["completed", "failed"]).await;
        assert_eq!(task["status"], "completed", "{task}");
    }
    host.stop().await;
}

#[tokio::test]
async fn a_poison_message_cannot_block_its_queue() {
    let clients = stack().clients().await;
    let queue = &stack().refs["HighQueue"];
    for garbage in ["not json at all", "{\"taskId\": 42}", "{}"] {
        clients
            .sqs
            .send_message()
            .queue_url(queue)
            .message_body(garbage)
            .send()
            .await
            .unwrap();
    }
    let boss = Client::as_user(&unique_agency("poison"), "boss", "manager");
    let id = boss
        .create_task(&json!({"title": "after the poison", "priority": "high", "autoDispatch": true, "executor": {"type": "echo"}}))
        .await;
    let task = wait_for_status(&boss, &id, &["completed", "failed"]).await;
    assert_eq!(task["status"], "completed");
    // The garbage was dead-lettered with its error, not retried forever.
    let dlq = &stack().refs["HighDeadLetterQueue"];
    let dead = eventually(
        "the poison messages in the DLQ",
        Duration::from_secs(30),
        || async {
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
            let messages = out.messages.unwrap_or_default();
            messages
                .iter()
                .find(|m| m.body.as_deref() == Some("not json at all"))
                .cloned()
        },
    )
    .await;
    let error = dead.message_attributes.unwrap_or_default()["error"]
        .string_value
        .clone()
        .unwrap_or_default();
    assert!(error.contains("malformed dispatch message"), "{error}");
}

#[tokio::test]
async fn a_host_killed_mid_load_still_finishes_every_task_once() {
    let mut first = isolated_stack("taskflow-kill-load").await;
    let boss = Client::as_user(&unique_agency("killload"), "boss", "manager").at(&first.api_url());
    let mut ids = Vec::new();
    for n in 0..20 {
        let priority = ["critical", "high", "normal"][n % 3];
        ids.push(
            boss.create_task_retrying(
                &json!({"title": format!("load {n}"), "priority": priority, "autoDispatch": true,
                "executor": {"type": "sleep", "config": {"seconds": 1}}}),
            )
            .await,
        );
    }
    // Kill it while work is in flight.
    eventually(
        "some work to be running",
        Duration::from_secs(30),
        || async {
            let running = boss.get("/api/tasks?status=in_progress&limit=1").await.body;
            (!running["items"].as_array().unwrap().is_empty()).then_some(())
        },
    )
    .await;
    first.kill_functions();

    let second = isolated_stack("taskflow-kill-load").await;
    let boss = boss.at(&second.api_url());
    for id in &ids {
        let task = wait_for_status(&boss, id, &["completed", "failed"]).await;
        assert_eq!(task["status"], "completed", "{task}");
        // One final state: completed once, never re-opened afterwards.
        assert!(task["attempts"].as_u64().unwrap() >= 1);
    }
    let listed = boss.get("/api/tasks?limit=100").await.body;
    let completed = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "completed")
        .count();
    assert_eq!(
        completed,
        ids.len(),
        "every task completed, none duplicated"
    );
    second.stop().await;
}
