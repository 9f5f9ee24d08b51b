//! `/api/schedules` through the handler: a bad expression or zone is a 400 that explains it,
//! a good one is stored with its next firings, and changes follow If-Match.

use crate::support::*;
use serde_json::json;

fn create(body: serde_json::Value) -> Event {
    Event::load("api-get-task")
        .to("POST", "/api/schedules")
        .manager()
        .body(&body)
}

#[tokio::test]
async fn bad_expressions_and_zones_are_400s_that_explain_them() {
    let api = Api::new();
    let reply = api
        .send(&create(json!({
            "name": "Nightly",
            "expression": "cron(0 2 * * MON *)",
            "timeZone": "Europe/Londn",
            "template": {"title": "Nightly", "priority": "urgent"}
        })))
        .await
        .expect(400);
    let text = reply.body.to_string();
    assert!(text.contains("use ? in one of them"), "{text}");
    assert!(
        text.contains("'Europe/Londn' is not an IANA time zone"),
        "{text}"
    );
    let mut fields = reply.fields();
    fields.sort();
    assert_eq!(fields, ["expression", "template.priority", "timeZone"]);
}

#[tokio::test]
async fn a_schedule_is_created_read_paused_and_deleted() {
    let api = Api::new();
    let reply = api
        .send(&create(json!({
            "name": "Reconcile invoices",
            "expression": "cron(0 6 ? * MON-FRI *)",
            "timeZone": "America/New_York",
            "overlapPolicy": "cancel_previous",
            "template": {"title": "Reconcile", "priority": "critical"}
        })))
        .await
        .expect(201);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    assert_eq!(reply.header("etag"), Some("\"1\""));
    assert_eq!(
        reply.header("location"),
        Some(format!("/api/schedules/{id}").as_str())
    );
    // 06:00 in New York is 10:00 or 11:00 UTC, on a weekday.
    let firings = reply.body["nextFirings"].as_array().unwrap();
    assert_eq!(firings.len(), 5);
    for firing in firings {
        let at = chrono::DateTime::parse_from_rfc3339(firing.as_str().unwrap()).unwrap();
        assert!(matches!(chrono::Timelike::hour(&at), 10 | 11), "{at}");
        assert_eq!(chrono::Timelike::minute(&at), 0);
    }
    let path = format!("/api/schedules/{id}");
    let event = |method: &str, path: &str| Event::load("api-get-task").to(method, path).manager();
    let got = api.send(&event("GET", &path)).await.expect(200);
    assert_eq!(got.body["template"]["title"], "Reconcile");
    let stale = api
        .send(
            &event("POST", &format!("{path}/pause"))
                .header("If-Match", "\"7\"")
                .no_body(),
        )
        .await
        .expect(409);
    assert_eq!(stale.code(), "version_conflict");
    let paused = api
        .send(
            &event("POST", &format!("{path}/pause"))
                .header("If-Match", "\"1\"")
                .no_body(),
        )
        .await
        .expect(200);
    assert_eq!(paused.body["state"], "paused");
    assert_eq!(paused.body["nextFirings"], json!([]));
    let listed = api.send(&event("GET", "/api/schedules")).await.expect(200);
    let items = listed.body["items"].as_array().unwrap();
    assert!(items
        .iter()
        .any(|s| s["id"] == json!(id) && s["state"] == "paused"));
    api.send(&event("DELETE", &path).header("If-Match", "\"2\""))
        .await
        .expect(204);
    api.send(&event("GET", &path)).await.expect(404);
    let calls = api.schedules.trigger.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[2], format!("delete {id}"));
}
