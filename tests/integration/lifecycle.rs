use integration_tests::{unique_agency, Client};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn create_list_update_assign_start_complete() {
    let agency = unique_agency("life");
    let boss = Client::as_user(&agency, "boss", "manager");
    let alice = Client::as_user(&agency, "alice", "member");

    let created = boss
        .post(
            "/api/tasks",
            &json!({
                "title": "Quarterly report", "description": "Numbers for Q3",
                "priority": "high", "dueAt": "2030-01-31T17:00:00Z", "metadata": {"team": "finance"}
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.etag(), "\"1\"");
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.headers["location"],
        format!("/api/tasks/{id}").as_str()
    );
    assert_eq!(created.body["status"], "pending");
    assert_eq!(created.body["agencyId"], agency.as_str());
    assert_eq!(created.body["createdBy"], "boss");

    let fetched = alice.get(&format!("/api/tasks/{id}")).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, created.body);

    let listed = alice.get("/api/tasks").await;
    assert_eq!(listed.body["items"][0]["id"], id.as_str());

    let updated = boss
        .send(
            Method::PUT,
            &format!("/api/tasks/{id}"),
            Some(&json!({"title": "Q3 report", "priority": "critical"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.body);
    assert_eq!(
        (
            updated.body["title"].as_str(),
            updated.body["priority"].as_str()
        ),
        (Some("Q3 report"), Some("critical"))
    );
    assert_eq!(updated.etag(), "\"2\"");

    let assigned = boss
        .post(
            &format!("/api/tasks/{id}/assign"),
            &json!({"assignee": "alice"}),
        )
        .await;
    assert_eq!(
        (assigned.status, assigned.body["status"].as_str()),
        (StatusCode::OK, Some("assigned"))
    );

    let started = alice
        .post(&format!("/api/tasks/{id}/start"), &json!({}))
        .await;
    assert_eq!(
        (started.status, started.body["status"].as_str()),
        (StatusCode::OK, Some("in_progress"))
    );
    assert!(started.body["startedAt"].is_string());

    let done = alice
        .post(
            &format!("/api/tasks/{id}/complete"),
            &json!({"result": {"pages": 12}}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["result"], json!({"pages": 12}));
    assert!(done.body["completedAt"].is_string());

    let mine = alice.get("/api/tasks?assignee=alice").await;
    assert_eq!(mine.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(mine.body["items"][0]["status"], "completed");
}

#[tokio::test]
async fn failing_cancelling_archiving_and_hard_delete() {
    let agency = unique_agency("end");
    let boss = Client::as_user(&agency, "boss", "manager");
    let bob = Client::as_user(&agency, "bob", "agent");

    let failed = boss
        .create_task(&json!({"title": "Will fail", "assignedTo": "bob"}))
        .await;
    assert_eq!(
        bob.post(&format!("/api/tasks/{failed}/start"), &json!({}))
            .await
            .status,
        StatusCode::OK
    );
    let reply = bob
        .post(
            &format!("/api/tasks/{failed}/complete"),
            &json!({"error": "upstream returned 502"}),
        )
        .await;
    assert_eq!(
        (reply.body["status"].as_str(), reply.body["error"].as_str()),
        (Some("failed"), Some("upstream returned 502"))
    );

    let cancelled = boss.create_task(&json!({"title": "Not needed"})).await;
    let reply = boss
        .post(&format!("/api/tasks/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(reply.body["status"], "cancelled");

    // DELETE archives: still readable, gone from default lists, back with includeArchived.
    let archived = boss.delete(&format!("/api/tasks/{cancelled}")).await;
    assert_eq!(
        (archived.status, archived.body["status"].as_str()),
        (StatusCode::OK, Some("archived"))
    );
    assert_eq!(archived.body["archivedFrom"], "cancelled");
    let ids = |reply: &integration_tests::Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&boss.get("/api/tasks").await), vec![failed.clone()]);
    assert_eq!(
        ids(&boss.get("/api/tasks?includeArchived=true").await),
        vec![cancelled.clone(), failed.clone()]
    );
    assert_eq!(
        ids(&boss.get("/api/tasks?status=archived").await),
        vec![cancelled.clone()]
    );

    let gone = boss.delete(&format!("/api/tasks/{failed}?hard=true")).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    assert_eq!(
        boss.get(&format!("/api/tasks/{failed}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        boss.delete(&format!("/api/tasks/{failed}?hard=true"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn multi_step_task_lists_its_steps() {
    let agency = unique_agency("steps");
    let boss = Client::as_user(&agency, "boss", "manager");
    let id = boss
        .create_task(&json!({"title": "Onboard", "type": "multi_step", "steps": [
            {"name": "account", "order": 0},
            {"name": "laptop", "order": 1, "dependsOn": ["account"]}
        ]}))
        .await;
    let steps = boss.get(&format!("/api/tasks/{id}/steps")).await;
    assert_eq!(steps.status, StatusCode::OK, "{}", steps.body);
    assert_eq!(steps.body["progress"]["total"], 2);
    assert_eq!(steps.body["progress"]["pending"], 2);
    assert_eq!(steps.body["steps"][1]["name"], "laptop");
    assert_eq!(steps.body["steps"][1]["dependsOn"], json!(["account"]));
}

#[tokio::test]
async fn idempotent_create_returns_the_original() {
    let agency = unique_agency("idem");
    let boss = Client::as_user(&agency, "boss", "manager");
    let body = json!({"title": "Exactly once"});
    let key = [("idempotency-key", "order-7781")];
    let first = boss
        .send(Method::POST, "/api/tasks", Some(&body), &key)
        .await;
    let retry = boss
        .send(Method::POST, "/api/tasks", Some(&body), &key)
        .await;
    assert_eq!(
        (first.status, retry.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first.body, retry.body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert!(first.headers.get("idempotent-replayed").is_none());

    // Concurrent retries still produce one task.
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let boss = boss.clone();
            let body = json!({"title": "Raced"});
            tokio::spawn(async move {
                boss.send(
                    Method::POST,
                    "/api/tasks",
                    Some(&body),
                    &[("idempotency-key", "race-1")],
                )
                .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for racer in racers {
        let reply = racer.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        ids.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one task for one key: {ids:?}");
    let all = boss.get("/api/tasks").await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);

    let reused = boss
        .send(
            Method::POST,
            "/api/tasks",
            Some(&json!({"title": "Different"})),
            &key,
        )
        .await;
    assert_eq!(
        (reused.status.as_u16(), reused.error_code()),
        (422, "idempotency_key_reused")
    );
}
