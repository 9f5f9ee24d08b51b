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
    assert_eq!(batch.status, StatusCode::ACCEPTED, "{}", batch.body);
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

/// `GET /api/queues`: a member sees their own agency's figures per tier, never another's; the
/// system-wide figures (the queues themselves, with dead letters) are the operator's.
#[tokio::test]
async fn a_member_sees_only_their_agencys_queue_figures() {
    use integration_tests::{eventually, scaled};
    let ours = unique_agency("queues-ours");
    let boss = Client::as_user(&ours, "boss", "manager");
    let member = Client::as_user(&ours, "alice", "member");
    // People's tasks, not yet picked up: they wait in their tier without a worker touching them.
    for n in 0..3 {
        boss.create_task(&json!({"title": format!("ours {n}"), "priority": "low"}))
            .await;
    }
    let theirs = Client::as_user(&unique_agency("queues-theirs"), "boss", "manager");
    for n in 0..2 {
        theirs
            .create_task(&json!({"title": format!("theirs {n}"), "priority": "low"}))
            .await;
    }

    let tier = |body: &serde_json::Value, name: &str| {
        body["tiers"]
            .as_array()
            .and_then(|tiers| tiers.iter().find(|t| t["tier"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} tier in {body}"))
    };
    // The index is read eventually consistently: poll until the tasks show.
    let low = eventually(
        "our low backlog shows 3",
        scaled(std::time::Duration::from_secs(20)),
        || async {
            let reply = member.get("/api/queues").await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            let low = tier(&reply.body, "low");
            (low["backlog"] == 3).then_some((reply.body, low))
        },
    )
    .await;
    let (body, low) = low;
    assert_eq!(body["scope"], "agency");
    assert_eq!(body["agencyId"], ours.as_str());
    assert_eq!(low["exact"], true, "{low}");
    assert_eq!(low["inFlight"], 0);
    assert!(
        low.get("deadLetters").is_none(),
        "a queue's dead letters are every agency's: {low}"
    );
    for other in ["critical", "high", "normal", "background"] {
        assert_eq!(tier(&body, other)["backlog"], 0, "{other}: {body}");
    }

    // The other agency sees its own two, not our three.
    let their_low = tier(&theirs.get("/api/queues").await.body, "low");
    assert_eq!(their_low["backlog"], 2, "{their_low}");

    // An operator sees the deployment: the queues themselves.
    let operator = Client::as_user(&ours, "ops", "operator");
    let reply = operator.get("/api/queues").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["scope"], "system");
    assert!(reply.body.get("agencyId").is_none());
    assert!(tier(&reply.body, "low").get("deadLetters").is_some());
}
