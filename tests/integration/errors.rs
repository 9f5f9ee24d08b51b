//! Every error status the API promises, over real HTTP, in the one error shape.

use integration_tests::{unique_agency, Client, Reply};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    assert_eq!(reply.error_code(), code, "{}", reply.body);
    assert!(reply.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(reply.body["error"]["fields"].is_object());
    assert_eq!(reply.headers["content-type"], "application/json");
}

#[tokio::test]
async fn missing_or_bad_identity_is_401() {
    let anonymous = Client::with_token(None);
    assert_error(&anonymous.get("/api/tasks").await, 401, "unauthorized");
    let forged = Client::with_token(Some("eyJhbGciOiJIUzI1NiJ9.e30.bm9wZQ".into()));
    assert_error(&forged.get("/api/tasks").await, 401, "unauthorized");
    // Refused before routing: an unknown task id reveals nothing either.
    assert_error(
        &anonymous.get("/api/tasks/01JD0000000000000000000000").await,
        401,
        "unauthorized",
    );
    // The OpenAPI document is public.
    let doc = anonymous.get("/api/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
}

#[tokio::test]
async fn validation_names_every_bad_field() {
    let boss = Client::as_user(&unique_agency("val"), "boss", "manager");
    let reply = boss
        .post("/api/tasks", &json!({"title": "", "priority": "urgent", "type": "epic", "dueAt": "soon", "colour": 1}))
        .await;
    assert_error(&reply, 400, "validation_failed");
    let fields: Vec<&String> = reply.body["error"]["fields"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(fields, ["colour", "dueAt", "priority", "title", "type"]);
    assert!(reply.body["error"]["fields"]["priority"]
        .as_str()
        .unwrap()
        .contains("critical"));

    let bad_query = boss.get("/api/tasks?limit=0&status=done").await;
    assert_error(&bad_query, 400, "validation_failed");
    assert!(bad_query.body["error"]["fields"]["limit"].is_string());
    assert!(bad_query.body["error"]["fields"]["status"].is_string());
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversized_bodies() {
    let boss = Client::as_user(&unique_agency("body"), "boss", "manager");
    let raw = |body: &'static str, content_type: &'static str| {
        let boss = boss.clone();
        async move {
            boss.send_raw(
                Method::POST,
                "/api/tasks",
                body.as_bytes().to_vec(),
                content_type,
            )
            .await
        }
    };
    assert_error(
        &raw("{\"title\": ", "application/json").await,
        400,
        "malformed_json",
    );
    assert_error(
        &raw("title=x", "application/x-www-form-urlencoded").await,
        415,
        "unsupported_media_type",
    );
    let huge = json!({"title": "big", "description": "x".repeat(300 * 1024)});
    assert_error(
        &boss.post("/api/tasks", &huge).await,
        413,
        "payload_too_large",
    );
}

#[tokio::test]
async fn roles_unknown_tasks_conflicts_and_methods() {
    let agency = unique_agency("codes");
    let boss = Client::as_user(&agency, "boss", "manager");
    let member = Client::as_user(&agency, "mia", "member");

    assert_error(
        &member.post("/api/tasks", &json!({"title": "nope"})).await,
        403,
        "forbidden",
    );
    assert_error(
        &boss.get("/api/tasks/01JD0000000000000000000000").await,
        404,
        "not_found",
    );
    assert_error(&boss.get("/api/tasks/not-a-task").await, 404, "not_found");
    assert_error(&boss.get("/api/nothing-here").await, 404, "no_route");
    assert_error(
        &boss
            .send(Method::PATCH, "/api/tasks", Some(&json!({})), &[])
            .await,
        405,
        "method_not_allowed",
    );

    let id = boss.create_task(&json!({"title": "t"})).await;
    // Only the assignee starts a task.
    boss.post(
        &format!("/api/tasks/{id}/assign"),
        &json!({"assignee": "mia"}),
    )
    .await;
    assert_error(
        &boss
            .post(&format!("/api/tasks/{id}/start"), &json!({}))
            .await,
        403,
        "forbidden",
    );
    // Completing before starting is an invalid transition naming both states.
    let reply = member
        .post(&format!("/api/tasks/{id}/complete"), &json!({"result": 1}))
        .await;
    assert_error(&reply, 409, "invalid_transition");
    assert_eq!(
        reply.body["error"]["fields"],
        json!({"currentStatus": "assigned", "requestedStatus": "completed"})
    );
    // A stale If-Match is a 409 and changes nothing.
    let stale = boss
        .send(
            Method::PUT,
            &format!("/api/tasks/{id}"),
            Some(&json!({"title": "late"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_error(&stale, 409, "version_conflict");
    let current: Value = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(current["title"], "t");
}
