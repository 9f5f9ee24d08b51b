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
