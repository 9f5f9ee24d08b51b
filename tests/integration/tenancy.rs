//! Another agency, even with a manager role and the right ids, reaches nothing.

use integration_tests::{unique_agency, Client};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn another_agency_cannot_read_or_change_a_task() {
    let victim_agency = unique_agency("victim");
    let victim = Client::as_user(&victim_agency, "boss", "manager");
    let id = victim
        .create_task(&json!({"title": "Secret plan", "assignedTo": "boss"}))
        .await;
    let before = victim.get(&format!("/api/tasks/{id}")).await.body;

    // Same user id, manager role, different agency.
    let attacker = Client::as_user(&unique_agency("attacker"), "boss", "manager");
    let task = format!("/api/tasks/{id}");
    let attempts: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, task.clone(), None),
        (Method::PUT, task.clone(), Some(json!({"title": "pwned"}))),
        (Method::DELETE, task.clone(), None),
        (Method::DELETE, format!("{task}?hard=true"), None),
        (
            Method::POST,
            format!("{task}/assign"),
            Some(json!({"assignee": "mallory"})),
        ),
        (Method::POST, format!("{task}/start"), Some(json!({}))),
        (
            Method::POST,
            format!("{task}/complete"),
            Some(json!({"result": 1})),
        ),
        (Method::POST, format!("{task}/cancel"), Some(json!({}))),
        (Method::GET, format!("{task}/steps"), None),
        (
            Method::POST,
            format!("{task}/attachments"),
            Some(json!({"fileName": "x.txt"})),
        ),
    ];
    for (method, path, body) in attempts {
        let reply = attacker
            .send(method.clone(), &path, body.as_ref(), &[])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.body
        );
    }
    let listed = attacker.get("/api/tasks?includeArchived=true").await;
    assert_eq!(listed.body["items"], json!([]));
    let by_assignee = attacker.get("/api/tasks?assignee=boss").await;
    assert_eq!(by_assignee.body["items"], json!([]));

    // Nothing changed.
    assert_eq!(victim.get(&format!("/api/tasks/{id}")).await.body, before);
}

#[tokio::test]
async fn another_agency_cannot_reach_batches_steps_agents_or_attachments() {
    let victim_agency = unique_agency("victim2");
    let victim = Client::as_user(&victim_agency, "boss", "manager");
    let bot = Client::as_user(&victim_agency, "bot-1", "agent");
    assert_eq!(
        bot.put("/api/agents/bot-1", &json!({"capacity": 2}))
            .await
            .status,
        StatusCode::OK
    );
    let batch = victim
        .post("/api/batches", &json!({"items": [1, 2, 3]}))
        .await;
    assert_eq!(batch.status, StatusCode::CREATED, "{}", batch.body);
    let batch_id = batch.body["id"].as_str().unwrap().to_owned();
    let chain = victim
        .create_task(&json!({"title": "chain", "type": "multi_step", "steps": [
            {"name": "approve", "config": {"executor": {"type": "manual"}, "assignee": "boss"}}
        ]}))
        .await;
    let with_file = victim.create_task(&json!({"title": "file"})).await;
    let attached = victim
        .post(
            &format!("/api/tasks/{with_file}/attachments"),
            &json!({"fileName": "a.txt"}),
        )
        .await;
    assert_eq!(attached.status, StatusCode::CREATED);
    let before_batch = victim.get(&format!("/api/batches/{batch_id}")).await.body["id"].clone();
    let before_file = victim.get(&format!("/api/tasks/{with_file}")).await.body;

    let attacker = Client::as_user(&unique_agency("attacker2"), "boss", "manager");
    let attempts: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, format!("/api/batches/{batch_id}"), None),
        (
            Method::GET,
            format!("/api/batches/{batch_id}/failures"),
            None,
        ),
        (
            Method::POST,
            format!("/api/batches/{batch_id}/retry-failed"),
            Some(json!({})),
        ),
        (
            Method::POST,
            format!("/api/tasks/{chain}/steps/approve/complete"),
            Some(json!({"result": 1})),
        ),
        (Method::GET, format!("/api/tasks/{chain}/steps"), None),
        (
            Method::POST,
            format!("/api/tasks/{with_file}/attachments"),
            Some(json!({"fileName": "b.txt"})),
        ),
        (Method::GET, format!("/api/tasks/{with_file}"), None),
    ];
    for (method, path, body) in attempts {
        let reply = attacker
            .send(method.clone(), &path, body.as_ref(), &[])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {}",
            reply.body
        );
    }
    // A batch source in another agency's input folder is refused.
    let stolen_source = attacker
        .post(
            "/api/batches",
            &json!({"source": {"key": format!("inputs/{victim_agency}/x/data.json")}}),
        )
        .await;
    assert_eq!(stolen_source.status, StatusCode::BAD_REQUEST);
    // Heartbeating the victim's agent id only registers an agent in the attacker's own agency.
    assert_eq!(
        attacker
            .put("/api/agents/bot-1", &json!({"capacity": 99}))
            .await
            .status,
        StatusCode::OK
    );
    let victims_agents = victim.get("/api/agents").await.body;
    assert_eq!(victims_agents["items"].as_array().unwrap().len(), 1);
    assert_eq!(victims_agents["items"][0]["capacity"], 2);

    assert_eq!(
        victim.get(&format!("/api/batches/{batch_id}")).await.body["id"],
        before_batch
    );
    assert_eq!(
        victim.get(&format!("/api/tasks/{with_file}")).await.body,
        before_file
    );
}
