//! The handler fed from `events/*.json`. Every reply also passes the contract
//! check in `support` (documented status, body schema and headers).

use crate::schema::doc;
use crate::support::*;
use lambda_http::request::from_str;
use serde_json::{json, Value};
use shared::domain::limits::MAX_BODY_BYTES;
use shared::domain::{StepStatus, Task, TaskStatus, TaskType};

type Seed = fn(&mut Task);

/// What a fixture needs in the store.
enum Given {
    Nothing,
    /// The fixtures' task (with steps fetch and render), changed by the seed.
    Task(Seed),
    /// The fixtures' batch (see `base_batch`).
    Batch,
}

/// Each fixture as it is, against a store holding the task it needs.
#[tokio::test]
async fn every_fixture_gets_its_expected_status() {
    let pending: Seed = |_| {};
    let assigned: Seed = |t| assigned_to_worker(TaskStatus::Assigned)(t);
    let started: Seed = |t| assigned_to_worker(TaskStatus::InProgress)(t);
    let multi: Seed = |t| t.task_type = TaskType::MultiStep;
    let cases: &[(&str, Given, u16)] = &[
        ("api-list-tasks", Given::Task(pending), 200),
        ("api-create-task", Given::Nothing, 201),
        ("api-get-task", Given::Task(pending), 200),
        ("api-update-task", Given::Task(pending), 200),
        ("api-delete-task", Given::Task(pending), 200),
        ("api-assign-task", Given::Task(pending), 200),
        ("api-start-task", Given::Task(assigned), 200),
        ("api-complete-task", Given::Task(started), 200),
        ("api-cancel-task", Given::Task(pending), 200),
        ("api-task-steps", Given::Task(multi), 200),
        ("api-add-attachment", Given::Task(pending), 201),
        ("api-create-batch", Given::Nothing, 202),
        ("api-get-batch", Given::Batch, 200),
        ("api-openapi", Given::Nothing, 200),
        ("api-no-identity", Given::Nothing, 401),
    ];
    assert_eq!(cases.len(), API_EVENTS.len(), "every fixture has a case");
    for (name, given, status) in cases {
        let api = Api::new();
        match given {
            Given::Nothing => {}
            Given::Task(seed) => {
                api.seed_with_steps(seed, &["fetch", "render"]).await;
            }
            Given::Batch => {
                api.seed_batch(|_| {}).await;
            }
        }
        let request = from_str(raw_event(name)).expect("fixture parses");
        let reply = api.call(request).await;
        assert_eq!(reply.status, *status, "{name}: {:#}", reply.body);
        match *name {
            "api-list-tasks" => assert_eq!(reply.body["items"][0]["id"], TASK_ID),
            "api-create-task" => {
                assert_eq!(reply.header("etag"), Some("\"1\""));
                let location = format!("/api/tasks/{}", reply.id());
                assert_eq!(reply.header("location"), Some(location.as_str()));
                assert_eq!(reply.header("idempotent-replayed"), None);
                assert_eq!(reply.body["status"], "pending");
                assert_eq!(reply.body["priority"], "high");
                assert_eq!(reply.body["createdBy"], MANAGER);
            }
            "api-get-task" => {
                assert_eq!(reply.body["id"], TASK_ID);
                assert_eq!(reply.header("etag"), Some("\"1\""));
            }
            "api-update-task" => {
                assert_eq!(reply.body["title"], "Quarterly report (final)");
                assert_eq!(reply.header("etag"), Some("\"2\""));
            }
            "api-delete-task" => {
                assert_eq!(reply.body["status"], "archived");
                assert_eq!(reply.body["archivedFrom"], "pending");
            }
            "api-assign-task" => assert_eq!(reply.body["assignedTo"], WORKER),
            "api-start-task" => assert_eq!(reply.body["status"], "in_progress"),
            "api-complete-task" => {
                assert_eq!(reply.body["status"], "completed");
                assert_eq!(reply.body["result"], json!({"pages": 12, "approved": true}));
            }
            "api-cancel-task" => assert_eq!(reply.body["status"], "cancelled"),
            "api-task-steps" => {
                assert_eq!(reply.body["progress"]["total"], 2);
                assert_eq!(reply.body["steps"][1]["name"], "render");
            }
            "api-add-attachment" => {
                assert_eq!(reply.body["attachment"]["fileName"], "q3-figures.pdf");
                assert_eq!(reply.body["upload"]["method"], "PUT");
                assert_eq!(reply.header("etag"), Some("\"2\""));
            }
            "api-create-batch" => {
                // 5 items, 2 per chunk; the execution runs 2 chunks at a time.
                assert_eq!(reply.body["status"], "pending");
                assert_eq!(reply.body["source"], "inline");
                assert_eq!(reply.body["totalItems"], 5);
                assert_eq!(reply.body["priority"], "low");
                let id = reply.body["id"].as_str().unwrap();
                assert_eq!(
                    reply.header("location"),
                    Some(format!("/api/batches/{id}").as_str())
                );
                api.prepare().await;
                let started = api.orchestrator.started.lock().unwrap().clone();
                assert_eq!(started.len(), 1);
                assert_eq!(started[0].1["parallelism"], 2);
            }
            "api-get-batch" => {
                assert_eq!(reply.body["id"], TASK_ID);
                assert_eq!(reply.body["status"], "processing");
                assert_eq!(reply.body["progressPercent"], 0.0);
            }
            "api-openapi" => assert_eq!(&reply.body, doc()),
            "api-no-identity" => assert_eq!(reply.code(), "unauthorized"),
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn fixtures_for_an_unknown_task_are_404() {
    let api = Api::new();
    let mut seen = 0;
    for (name, raw) in API_EVENTS {
        let event = Event::load(name);
        if !event.path().contains(TASK_ID) {
            continue;
        }
        seen += 1;
        let what = if event.path().starts_with("/api/batches/") {
            "batch"
        } else {
            "task"
        };
        let reply = api.call(from_str(raw).unwrap()).await;
        assert_eq!(reply.status, 404, "{name}");
        assert_eq!(reply.code(), "not_found", "{name}");
        assert_eq!(reply.body["error"]["message"], format!("{what} not found"));
        assert_eq!(reply.body["error"]["fields"], json!({}));
    }
    assert_eq!(seen, 10);
    // Ids that are not ULIDs cannot exist.
    let reply = api.send(&Event::load("api-get-task").id("nope")).await;
    assert_eq!((reply.status, reply.code()), (404, "not_found"));
}

#[tokio::test]
async fn full_flow_create_assign_start_complete() {
    let api = Api::new();
    let (boss, worker) = ("boss-7", "worker-7");
    let as_boss = |e: Event| e.caller(boss, "globex", "manager");
    let as_worker = |e: Event| e.caller(worker, "globex", "agent");

    let created = api
        .send(&as_boss(Event::load("api-create-task")))
        .await
        .expect(201);
    let id = created.id();
    assert_eq!(created.body["agencyId"], "globex");
    let step = |name: &str| Event::load(name).id(&id);

    let assigned = api
        .send(&as_boss(step("api-assign-task")).body(&json!({"assignee": worker})))
        .await
        .expect(200);
    assert_eq!(
        (&assigned.body["status"], &assigned.body["assignedTo"]),
        (&json!("assigned"), &json!(worker))
    );
    let started = api
        .send(&as_worker(step("api-start-task")).header("If-Match", "\"2\""))
        .await
        .expect(200);
    assert_eq!(started.body["status"], "in_progress");
    assert!(started.body["startedAt"].is_string());
    let completed = api
        .send(&as_worker(step("api-complete-task")))
        .await
        .expect(200);
    assert_eq!(completed.body["status"], "completed");
    assert_eq!(completed.body["version"], 4);
    assert_eq!(completed.header("etag"), Some("\"4\""));
    assert!(completed.body["completedAt"].is_string());

    let fetched = api.send(&as_worker(step("api-get-task"))).await.expect(200);
    assert_eq!(fetched.body, completed.body);
    // The fixture's agency cannot see it.
    api.send(&step("api-get-task")).await.expect(404);

    let steps = api
        .send(&as_worker(step("api-task-steps")))
        .await
        .expect(200);
    assert_eq!(steps.body["status"], "completed");
    assert_eq!(steps.body["steps"], json!([]));

    // Finished: it cannot be started again, but it can be archived...
    let again = api
        .send(&as_worker(step("api-start-task")))
        .await
        .expect(409);
    assert_eq!(again.code(), "invalid_transition");
    api.send(&as_boss(step("api-delete-task")))
        .await
        .expect(200);
    let listed =
        |extra: &'static [(&str, &str)]| as_boss(Event::load("api-list-tasks")).query(extra);
    let default = api.send(&listed(&[])).await.expect(200);
    assert_eq!(default.body["items"], json!([]));
    let all = api
        .send(&listed(&[("includeArchived", "true")]))
        .await
        .expect(200);
    assert_eq!(all.body["items"][0]["archivedFrom"], "completed");
    // ...and then deleted for good, under If-Match like every other change: a malformed or
    // stale version refuses it.
    let hard = || as_boss(step("api-delete-task")).query(&[("hard", "true")]);
    let malformed = api.send(&hard().header("If-Match", "")).await.expect(400);
    assert_eq!(malformed.fields(), ["If-Match"]);
    let stale = api
        .send(&hard().header("If-Match", "\"1\""))
        .await
        .expect(409);
    assert_eq!(stale.code(), "version_conflict");
    let current = api.send(&as_boss(step("api-get-task"))).await.expect(200);
    let etag = current.header("etag").expect("an ETag").to_owned();
    let gone = api
        .send(&hard().header("If-Match", &etag))
        .await
        .expect(204);
    assert!(gone.body.is_null());
    api.send(&as_boss(step("api-get-task"))).await.expect(404);
}

#[tokio::test]
async fn failing_a_task_and_the_steps_view_of_a_chain() {
    let api = Api::new();
    // Step configs are checked at creation: `input` is what the executor gets.
    let body = json!({"title": "Chain", "type": "multi_step", "assignedTo": WORKER, "steps": [
        {"name": "publish", "dependsOn": ["build"], "order": 2},
        {"name": "build", "order": 1, "config": {"input": {"target": "web"}}},
    ]});
    let created = api
        .send(
            &Event::load("api-create-task")
                .without_header("Idempotency-Key")
                .body(&body),
        )
        .await
        .expect(201);
    assert_eq!(created.body["status"], "assigned");
    let id = created.id();
    let steps = api
        .send(&Event::load("api-task-steps").id(&id))
        .await
        .expect(200);
    assert_eq!(
        steps.body["progress"],
        json!({"total": 2, "pending": 2, "running": 0, "waiting": 0, "completed": 0,
               "failed": 0, "skipped": 0, "percent": 0.0})
    );
    assert_eq!(steps.body["steps"][0]["name"], "build");
    assert_eq!(
        steps.body["steps"][0]["config"],
        json!({"input": {"target": "web"}})
    );
    assert_eq!(steps.body["steps"][0]["attempts"], 0);
    assert_eq!(steps.body["steps"][1]["dependsOn"], json!(["build"]));

    // Starting a chain starts its execution, which runs build, then publish.
    let started = api
        .send(&Event::load("api-start-task").id(&id))
        .await
        .expect(200);
    assert_eq!(started.body["status"], "in_progress");
    let arn = started.body["executionArn"].as_str().expect("an execution");
    let executions = api.orchestrator.started.lock().unwrap().clone();
    assert_eq!(executions.len(), 1);
    assert!(arn.ends_with(&executions[0].0) && executions[0].0.starts_with(&id));
    // Two automated waves are one segment: each wave's step at its 300 s timeout plus 60 s,
    // and 900 s of margin; ten minutes of heartbeat window, as neither step asks for one.
    assert_eq!(executions[0].1["route"], "one_segment");
    assert_eq!(
        executions[0].1["segment"],
        json!({"kind": "automated", "firstWave": "0", "lastWave": "1", "finish": "yes",
            "timeoutSeconds": 2 * 360 + 900, "heartbeatSeconds": 600})
    );
    // A chain settles itself; completing the whole task by hand is refused.
    let refused = api
        .send(
            &Event::load("api-complete-task")
                .id(&id)
                .body(&json!({"error": "render farm offline"})),
        )
        .await
        .expect(409);
    assert_eq!(refused.code(), "conflict");
    // A simple task fails through the same endpoint.
    let api = Api::new();
    api.seed(assigned_to_worker(TaskStatus::InProgress)).await;
    let failed = api
        .send(&Event::load("api-complete-task").body(&json!({"error": "render farm offline"})))
        .await
        .expect(200);
    assert_eq!(failed.body["status"], "failed");
    assert_eq!(failed.body["error"], "render farm offline");
    // An empty body completes without a result.
    let api = Api::new();
    api.seed(assigned_to_worker(TaskStatus::InProgress)).await;
    let done = api
        .send(&Event::load("api-complete-task").no_body())
        .await
        .expect(200);
    assert_eq!(done.body["status"], "completed");
    assert!(done.body.get("result").is_none());
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let api = Api::new();
    let event = Event::load("api-create-task").header("Content-Type", "text/plain");
    let reply = api.send(&event).await.expect(415);
    assert_eq!(reply.code(), "unsupported_media_type");
    // No content type at all is just as wrong; a +json type is fine.
    api.send(&Event::load("api-create-task").without_header("Content-Type"))
        .await
        .expect(415);
    api.send(
        &Event::load("api-create-task").header("content-type", "application/merge-patch+json"),
    )
    .await
    .expect(201);
    assert!(api.store.all_tasks().len() == 1);
}

#[tokio::test]
async fn body_over_256_kib_is_413() {
    let api = Api::new();
    let sized = |len: usize| {
        let padding = len - r#"{"title":""}"#.len();
        format!(r#"{{"title":"{}"}}"#, "x".repeat(padding))
    };
    let over = sized(MAX_BODY_BYTES + 1);
    assert_eq!(over.len(), 256 * 1024 + 1);
    let reply = api
        .send(&Event::load("api-create-task").raw_body(&over))
        .await
        .expect(413);
    assert_eq!(reply.code(), "payload_too_large");
    // At the limit the body is read (and its title is then too long).
    let at_limit = api
        .send(&Event::load("api-create-task").raw_body(&sized(MAX_BODY_BYTES)))
        .await
        .expect(400);
    assert_eq!(at_limit.fields(), ["title"]);
}

#[tokio::test]
async fn bad_input_names_every_bad_field() {
    let api = Api::new();
    let body = json!({"title": "  ", "priority": "urgent", "type": "epic", "dueAt": "tomorrow",
        "metadata": [1], "assignedTo": "a#b", "description": 7, "colour": "red"});
    let reply = api
        .send(&Event::load("api-create-task").body(&body))
        .await
        .expect(400);
    assert_eq!(reply.code(), "validation_failed");
    assert_eq!(
        reply.fields(),
        [
            "assignedTo",
            "colour",
            "description",
            "dueAt",
            "metadata",
            "priority",
            "title",
            "type"
        ]
    );
    assert!(reply.body["error"]["fields"]["priority"]
        .as_str()
        .unwrap()
        .contains("critical, high, normal, low, background"));

    // JSON DynamoDB cannot store: an empty key anywhere, a number out of its range.
    let unstorable = json!({"title": "t", "metadata": {"a": {"": 1}}, "input": [1e-200]});
    let reply = api
        .send(&Event::load("api-create-task").body(&unstorable))
        .await
        .expect(400);
    assert_eq!(reply.fields(), ["input", "metadata"]);
    let fields = &reply.body["error"]["fields"];
    assert!(
        fields["metadata"]
            .as_str()
            .unwrap()
            .contains("empty key at a"),
        "{fields}"
    );
    assert!(
        fields["input"].as_str().unwrap().contains("at [0]"),
        "{fields}"
    );
    let step_input = json!({"title": "t", "type": "multi_step",
        "steps": [{"name": "s", "config": {"input": {"x": 1e130}}}]});
    let reply = api
        .send(&Event::load("api-create-task").body(&step_input))
        .await
        .expect(400);
    assert_eq!(reply.fields(), ["steps[0].config.input"]);
    assert!(api.store.all_tasks().is_empty());

    let steps = json!({"title": "t", "type": "multi_step", "steps": [
        {"name": "a", "depends_on": ["b"]}, {"name": "a"}, {"name": "c", "dependsOn": ["zzz"]}]});
    let reply = api
        .send(&Event::load("api-create-task").body(&steps))
        .await
        .expect(400);
    assert_eq!(
        reply.fields(),
        ["steps[0].depends_on", "steps[1].name", "steps[2].dependsOn"]
    );

    let malformed = api
        .send(&Event::load("api-create-task").raw_body("{\"title\": "))
        .await
        .expect(400);
    assert_eq!(malformed.code(), "malformed_json");

    let query = api
        .send(&Event::load("api-list-tasks").query(&[
            ("limit", "0"),
            ("status", "done"),
            ("sort", "title"),
            ("dueBefore", "soon"),
        ]))
        .await
        .expect(400);
    assert_eq!(query.fields(), ["dueBefore", "limit", "sort", "status"]);

    api.seed(|_| {}).await;
    for bad in ["version one", "\"1", "+1", "\"\"1\"\"", "W/1x", "\"\""] {
        let if_match = api
            .send(&Event::load("api-update-task").header("If-Match", bad))
            .await
            .expect(400);
        assert_eq!(if_match.fields(), ["If-Match"], "{bad}");
    }
    let hard = api
        .send(&Event::load("api-delete-task").query(&[("hard", "yes")]))
        .await
        .expect(400);
    assert_eq!(hard.fields(), ["hard"]);
    let patch = api
        .send(&Event::load("api-update-task").body(&json!({})))
        .await
        .expect(400);
    assert_eq!(patch.fields(), ["body"]);
}

#[tokio::test]
async fn invalid_transition_is_409_naming_both_states() {
    let api = Api::new();
    api.seed(assigned_to_worker(TaskStatus::Completed)).await;
    let reply = api.send(&Event::load("api-start-task")).await.expect(409);
    assert_eq!(reply.code(), "invalid_transition");
    assert_eq!(
        reply.body["error"]["fields"],
        json!({"currentStatus": "completed", "requestedStatus": "in_progress"})
    );
    assert_eq!(
        reply.body["error"]["message"],
        "cannot move task from 'completed' to 'in_progress'"
    );
}

#[tokio::test]
async fn stale_if_match_is_409_and_changes_nothing() {
    let api = Api::new();
    let seeded = api.seed(|t| t.version = 2).await;
    // The fixture sends If-Match: "1".
    let reply = api.send(&Event::load("api-update-task")).await.expect(409);
    assert_eq!(reply.code(), "version_conflict");
    assert_eq!(
        reply.body["error"]["fields"],
        json!({"expectedVersion": 1, "currentVersion": 2})
    );
    assert_eq!(api.store.all_tasks(), vec![seeded]);
    // The current ETag (or *) works.
    for tag in ["\"2\"", "W/\"3\"", "4", "*"] {
        let reply = api
            .send(&Event::load("api-update-task").header("If-Match", tag))
            .await
            .expect(200);
        assert_eq!(
            reply.header("etag").unwrap(),
            format!("\"{}\"", reply.body["version"])
        );
    }
}

#[tokio::test]
async fn roles_are_enforced_with_403() {
    let api = Api::new();
    let reply = api
        .send(&Event::load("api-create-task").worker())
        .await
        .expect(403);
    assert_eq!(reply.code(), "forbidden");
    assert!(api.store.all_tasks().is_empty());

    api.seed(assigned_to_worker(TaskStatus::Assigned)).await;
    // Only the assignee starts it, not even a manager...
    api.send(&Event::load("api-start-task").manager())
        .await
        .expect(403);
    // ...and only managers assign, cancel, edit or delete.
    for name in [
        "api-assign-task",
        "api-cancel-task",
        "api-update-task",
        "api-delete-task",
    ] {
        api.send(&Event::load(name).worker()).await.expect(403);
    }
    // The assignee may add attachments; another member may not.
    api.send(&Event::load("api-add-attachment").worker())
        .await
        .expect(201);
    api.send(&Event::load("api-add-attachment").caller("someone", AGENCY, "member"))
        .await
        .expect(403);
    // Claims that do not make an identity are a 401.
    api.send(&Event::load("api-get-task").caller(MANAGER, AGENCY, "admin"))
        .await
        .expect(401);
}

#[tokio::test]
async fn idempotency_key_replays_and_rejects_a_different_body() {
    let api = Api::new();
    let first = api.send(&Event::load("api-create-task")).await.expect(201);
    let replay = api.send(&Event::load("api-create-task")).await.expect(201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("location"), first.header("location"));
    assert_eq!(api.store.all_tasks().len(), 1);

    let other = Event::load("api-create-task").body(&json!({"title": "Something else"}));
    let reply = api.send(&other).await.expect(422);
    assert_eq!(reply.code(), "idempotency_key_reused");
    assert_eq!(api.store.all_tasks().len(), 1);
    // Keys belong to an agency.
    api.send(&Event::load("api-create-task").caller(MANAGER, "initech", "manager"))
        .await
        .expect(201);
    let bad_key = Event::load("api-create-task").header("Idempotency-Key", &"k".repeat(256));
    assert_eq!(
        api.send(&bad_key).await.expect(400).fields(),
        ["Idempotency-Key"]
    );
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow_and_unknown_paths_404() {
    let api = Api::new();
    let task = format!("/api/tasks/{TASK_ID}");
    let cases = [
        ("PATCH", "/api/tasks".to_owned(), "GET, POST"),
        ("POST", task.clone(), "GET, PUT, DELETE"),
        ("GET", format!("{task}/start"), "POST"),
        ("DELETE", format!("{task}/steps/"), "GET"),
        ("POST", "/api/openapi.json".to_owned(), "GET"),
        ("PUT", "/api/batches".to_owned(), "GET, POST"),
        ("DELETE", format!("/api/batches/{TASK_ID}"), "GET"),
        (
            "GET",
            format!("/api/batches/{TASK_ID}/retry-failed"),
            "POST",
        ),
    ];
    for (method, path, allow) in cases {
        let reply = api
            .send(&Event::load("api-get-task").to(method, &path))
            .await
            .expect(405);
        assert_eq!(reply.code(), "method_not_allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    let reply = api
        .send(&Event::load("api-get-task").to("GET", "/api/batch"))
        .await
        .expect(404);
    assert_eq!(reply.code(), "no_route");
    // Without an identity nothing but the document is revealed.
    api.send(&Event::load("api-openapi").to("POST", "/api/openapi.json"))
        .await
        .expect(401);
    api.send(&Event::load("api-no-identity").to("PATCH", "/api/tasks"))
        .await
        .expect(401);
    // With one, the document is served too.
    let doc_reply = api
        .send(&Event::load("api-openapi").manager())
        .await
        .expect(200);
    assert_eq!(&doc_reply.body, doc());
}

#[tokio::test]
async fn lists_page_newest_first_and_filter() {
    let api = Api::new();
    let mut ids = Vec::new();
    for (title, priority) in [("one", "low"), ("two", "high"), ("three", "low")] {
        let event = Event::load("api-create-task")
            .without_header("Idempotency-Key")
            .body(&json!({"title": title, "priority": priority}));
        ids.push(api.send(&event).await.expect(201).id());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let list = |q: &[(&str, &str)]| Event::load("api-list-tasks").query(q);
    let page = api.send(&list(&[("limit", "2")])).await.expect(200);
    let ids_of = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids_of(&page.body), [ids[2].clone(), ids[1].clone()]);
    let cursor = page.body["nextCursor"].as_str().unwrap().to_owned();
    let rest = api
        .send(&list(&[("limit", "2"), ("cursor", &cursor)]))
        .await
        .expect(200);
    assert_eq!(ids_of(&rest.body), [ids[0].clone()]);
    assert_eq!(rest.body["nextCursor"], Value::Null);
    let low = api.send(&list(&[("priority", "low")])).await.expect(200);
    assert_eq!(ids_of(&low.body), [ids[2].clone(), ids[0].clone()]);
    // The fixture's own query: pending, at most 10.
    let fixture = api.send(&Event::load("api-list-tasks")).await.expect(200);
    assert_eq!(ids_of(&fixture.body).len(), 3);
}

/// `assignedTo` names the assignee on every request, as it does on every task reply; the old
/// `assignee` (assign, step config, list filter) is still accepted as a deprecated alias, and
/// naming both is a 400 naming `assignee`.
#[tokio::test]
async fn the_assignee_is_assigned_to_everywhere_and_the_old_assignee_still_works() {
    let api = Api::new();
    let create = |body: Value| {
        Event::load("api-create-task")
            .without_header("Idempotency-Key")
            .body(&body)
    };
    for (round, spelling) in ["assignedTo", "assignee"].into_iter().enumerate() {
        let created = api
            .send(&create(json!({"title": "t", (spelling): WORKER})))
            .await
            .expect(201);
        assert_eq!(
            created.body["assignedTo"], WORKER,
            "created with {spelling}"
        );
        assert!(created.body.get("assignee").is_none());

        let pending = api.send(&create(json!({"title": "t"}))).await.expect(201);
        let assigned = api
            .send(
                &Event::load("api-assign-task")
                    .id(&pending.id())
                    .body(&json!({ (spelling): WORKER })),
            )
            .await
            .expect(200);
        assert_eq!(
            assigned.body["assignedTo"], WORKER,
            "assigned with {spelling}"
        );

        let listed = api
            .send(
                &Event::load("api-list-tasks").query(&[(spelling, WORKER), ("status", "assigned")]),
            )
            .await
            .expect(200);
        assert_eq!(
            listed.body["items"].as_array().map(Vec::len),
            Some(2 * (round + 1)),
            "filtered by {spelling}"
        );

        let chain = api
            .send(&create(
                json!({"title": "c", "type": "multi_step", "steps": [
                {"name": "sign", "config": {"executor": {"type": "manual"}, (spelling): WORKER}}]}),
            ))
            .await
            .expect(201);
        let steps = api
            .send(&Event::load("api-task-steps").id(&chain.id()))
            .await
            .expect(200);
        assert_eq!(
            steps.body["steps"][0]["config"],
            json!({"executor": {"type": "manual"}, "assignedTo": WORKER}),
            "a step's config shows the one name, whichever was given"
        );
    }

    let both = json!({"assignedTo": WORKER, "assignee": MANAGER});
    let mut with_title = both.clone();
    with_title["title"] = json!("t");
    let refused = api.send(&create(with_title)).await.expect(400);
    assert_eq!(refused.fields(), ["assignee"]);
    let refused = api
        .send(
            &Event::load("api-assign-task")
                .id(&api.store.all_tasks()[0].id.to_string())
                .body(&both),
        )
        .await
        .expect(400);
    assert_eq!(refused.fields(), ["assignee"]);
    let refused = api
        .send(&Event::load("api-list-tasks").query(&[("assignedTo", WORKER), ("assignee", WORKER)]))
        .await
        .expect(400);
    assert_eq!(refused.fields(), ["assignee"]);
    let mut manual = both.clone();
    manual["executor"] = json!({"type": "manual"});
    let refused = api
        .send(&create(
            json!({"title": "c", "type": "multi_step", "steps": [
            {"name": "sign", "config": manual}]}),
        ))
        .await
        .expect(400);
    assert_eq!(refused.fields(), ["steps[0].config.assignee"]);
    // A bad value is reported under the spelling the caller sent.
    for spelling in ["assignedTo", "assignee"] {
        let refused = api
            .send(&create(json!({"title": "t", (spelling): "a#b"})))
            .await
            .expect(400);
        assert_eq!(refused.fields(), [spelling]);
    }
}

/// Each step's `config` is checked when the task is created; every problem is
/// named by its field within the step's config.
#[tokio::test]
async fn step_configs_are_checked_at_creation() {
    let api = Api::new();
    let manual = json!({"executor": {"type": "manual"}, "assignedTo": WORKER});
    let good = json!({"title": "Review", "type": "multi_step", "steps": [
        {"name": "draft", "config": {"executor": {"type": "echo"}, "input": {"n": 1},
            "retry": {"maxAttempts": 5}, "timeoutSeconds": 60, "heartbeatSeconds": 30,
            "onFailure": "skip_dependents"}},
        {"name": "approve", "dependsOn": ["draft"], "config": manual},
        {"name": "defaults", "config": {}},
    ]});
    let created = api
        .send(
            &Event::load("api-create-task")
                .without_header("Idempotency-Key")
                .body(&good),
        )
        .await
        .expect(201);
    // Stored as given.
    let steps = api
        .send(&Event::load("api-task-steps").id(&created.id()))
        .await
        .expect(200);
    assert_eq!(steps.body["steps"][1]["config"], manual);

    let bad = json!({"title": "Review", "type": "multi_step", "steps": [
        {"name": "a", "config": {"onFailure": "explode"}},
        {"name": "b", "config": {"executor": {"type": "teleport"}}},
        {"name": "c", "config": {"executor": {"type": "manual"}}},
        {"name": "d", "config": {"retry": {"maxAttempts": 6}}},
        {"name": "e", "config": {"timeoutSeconds": 10, "heartbeatSeconds": 20}},
        {"name": "f", "config": {"target": "web"}},
        {"name": "g", "config": {"executor": {"type": "manual", "config": {"x": 1}}, "assignee": WORKER}},
    ]});
    let reply = api
        .send(
            &Event::load("api-create-task")
                .without_header("Idempotency-Key")
                .body(&bad),
        )
        .await
        .expect(400);
    assert_eq!(reply.code(), "validation_failed");
    assert_eq!(
        reply.fields(),
        [
            "steps[0].config.onFailure",
            "steps[1].config.executor",
            "steps[2].config.assignedTo",
            "steps[3].config.retry",
            "steps[4].config.heartbeatSeconds",
            "steps[5].config.target",
            "steps[6].config.executor",
        ]
    );
    assert_eq!(api.store.all_tasks().len(), 1, "nothing was created");
}

/// A chain starts (by a manager or its assignee), runs in an execution, and
/// cancelling it stops the execution and skips the steps not yet finished.
#[tokio::test]
async fn starting_and_cancelling_a_chain() {
    let api = Api::new();
    api.seed_with_steps(
        |t| {
            t.task_type = TaskType::MultiStep;
            t.assigned_to = Some(shared::domain::UserId::parse(WORKER).unwrap());
            t.status = TaskStatus::Assigned;
        },
        &["fetch", "render"],
    )
    .await;
    // Unlike a human task, a manager may start it; others may not.
    api.send(&Event::load("api-start-task").caller("someone", AGENCY, "member"))
        .await
        .expect(403);
    let started = api
        .send(&Event::load("api-start-task").manager())
        .await
        .expect(200);
    assert_eq!(started.body["status"], "in_progress");
    assert!(started.body["executionArn"].is_string());
    assert_eq!(api.orchestrator.started.lock().unwrap().len(), 1);
    let again = api.send(&Event::load("api-start-task")).await.expect(409);
    assert_eq!(again.code(), "invalid_transition");
    assert_eq!(api.orchestrator.started.lock().unwrap().len(), 1);

    let cancelled = api.send(&Event::load("api-cancel-task")).await.expect(200);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(
        *api.orchestrator.stopped.lock().unwrap(),
        [started.body["executionArn"].as_str().unwrap()]
    );
    let steps = api.send(&Event::load("api-task-steps")).await.expect(200);
    assert_eq!(steps.body["progress"]["skipped"], 2);

    // autoDispatch starts a multi_step task's chain without an executor.
    let api = Api::new();
    let body = json!({"title": "Auto", "type": "multi_step", "autoDispatch": true,
        "steps": [{"name": "only"}]});
    let created = api
        .send(&Event::load("api-create-task").body(&body))
        .await
        .expect(201);
    assert_eq!(created.body["autoDispatch"], true);
    assert_eq!(api.orchestrator.started.lock().unwrap().len(), 1);
    let fetched = api
        .send(&Event::load("api-get-task").id(&created.id()))
        .await
        .expect(200);
    assert_eq!(fetched.body["status"], "in_progress");
    assert!(fetched.body["executionArn"].is_string());
}

/// POST /api/tasks/{id}/steps/{stepId}/complete answers the token a manual
/// step waits with; only the step's assignee and managers may.
#[tokio::test]
async fn completing_a_manual_step() {
    const REVIEWER: &str = "33333333-3333-4333-8333-333333333333";
    let manual = json!({"executor": {"type": "manual"}, "assignee": REVIEWER});
    let api = Api::new();
    let task = api
        .seed_chain(&[
            (
                chain_step(0, "approve", StepStatus::Running, manual.clone()),
                Some("token-approve"),
            ),
            (
                chain_step(1, "sign", StepStatus::Running, manual.clone()),
                Some("token-sign"),
            ),
            (
                chain_step(2, "build", StepStatus::Running, json!({})),
                Some("token-build"),
            ),
            // Running, but the worker has not stored its token yet.
            (
                chain_step(3, "check", StepStatus::Running, manual.clone()),
                None,
            ),
            (
                chain_step(4, "publish", StepStatus::Pending, manual.clone()),
                None,
            ),
        ])
        .await;
    let complete =
        |step: &str| Event::load("api-complete-task").to("POST", &step_path(task.id, step));
    let as_reviewer = |e: Event| e.caller(REVIEWER, AGENCY, "member");
    let answers = || api.orchestrator.answers.lock().unwrap().clone();

    // Not the step's assignee: not even the task's assignee may answer.
    let denied = api
        .send(&complete("approve").worker().body(&json!({"result": 1})))
        .await
        .expect(403);
    assert_eq!(denied.code(), "forbidden");
    api.send(&as_reviewer(complete("approve")).caller("someone", AGENCY, "member"))
        .await
        .expect(403);
    assert!(answers().is_empty());

    // The assignee completes it: the chain's token is answered with success.
    let done = api
        .send(&as_reviewer(complete("approve")).body(&json!({"result": {"approved": true}})))
        .await
        .expect(200);
    assert_eq!(done.body["id"], "approve");
    assert_eq!(done.body["taskId"], json!(task.id));
    assert_eq!(done.body["status"], "completed");
    assert_eq!(done.body["result"], json!({"approved": true}));
    assert!(done.body["completedAt"].is_string());
    assert_eq!(done.body["attempts"], 1);
    assert_eq!(
        answers(),
        [(
            "token-approve".to_owned(),
            "success".to_owned(),
            json!({"status": "completed"}).to_string()
        )]
    );
    let steps = api.send(&Event::load("api-task-steps")).await.expect(200);
    assert_eq!(steps.body["steps"][0], done.body);
    // Once done it no longer waits.
    let twice = api
        .send(&as_reviewer(complete("approve")).no_body())
        .await
        .expect(409);
    assert_eq!(twice.code(), "conflict");

    // A manager may answer too; an error fails the token (the chain then
    // records the failure), and the step shows the error meanwhile.
    let failed = api
        .send(
            &complete("sign")
                .manager()
                .body(&json!({"error": "not signed"})),
        )
        .await
        .expect(200);
    assert_eq!(failed.body["status"], "running");
    assert_eq!(failed.body["error"], "not signed");
    assert_eq!(
        answers()[1],
        (
            "token-sign".to_owned(),
            "Taskflow.Permanent".to_owned(),
            "not signed".to_owned()
        )
    );

    // Steps a worker runs, steps not waiting yet and steps not started are 409.
    for step in ["build", "check", "publish"] {
        let reply = api
            .send(&complete(step).manager().no_body())
            .await
            .expect(409);
        assert_eq!(reply.code(), "conflict", "{step}");
    }
    assert_eq!(answers().len(), 2);

    // Unknown steps and tasks are 404.
    let unknown = api
        .send(&complete("nope").manager().no_body())
        .await
        .expect(404);
    assert_eq!(
        (unknown.code(), &unknown.body["error"]["message"]),
        ("not_found", &json!("step not found"))
    );
    let other_task = Event::load("api-complete-task").to(
        "POST",
        &step_path(shared::domain::TaskId::generate(), "approve"),
    );
    let reply = api.send(&other_task.manager().no_body()).await.expect(404);
    assert_eq!(reply.body["error"]["message"], "task not found");
    api.send(
        &complete("sign")
            .caller(MANAGER, "initech", "manager")
            .no_body(),
    )
    .await
    .expect(404);

    // Bodies are parsed like a task's completion.
    let bad = api
        .send(&as_reviewer(complete("check")).body(&json!({"result": 1, "error": "x"})))
        .await
        .expect(400);
    assert_eq!(bad.fields(), ["error"]);
    // Only POST.
    let wrong = api
        .send(&complete("approve").to("GET", &step_path(task.id, "approve")))
        .await
        .expect(405);
    assert_eq!(wrong.header("allow"), Some("POST"));
}

/// A worker cuts a run off at its lease less 2 s (28 s with the handler tests' 30 s lease).
/// An executor config asking for a longer run is refused at creation, naming its field and
/// the limit, for a task, a chain step and a batch; at the limit it is accepted.
#[tokio::test]
async fn runs_longer_than_a_worker_gives_are_refused_at_creation() {
    let api = Api::new();
    let create = |body: Value| {
        Event::load("api-create-task")
            .without_header("Idempotency-Key")
            .body(&body)
    };
    let sleep = |seconds: f64| json!({"type": "sleep", "config": {"seconds": seconds}});
    let hook = |seconds: u64| json!({"type": "http", "config": {"url": "https://hooks.example/run", "timeoutSeconds": seconds}});

    let reply = api
        .send(&create(
            json!({"title": "Long sleep", "executor": sleep(28.5), "autoDispatch": true}),
        ))
        .await
        .expect(400);
    assert_eq!(reply.code(), "validation_failed");
    assert_eq!(reply.fields(), ["executor.config.seconds"]);
    let problem = reply.body["error"]["fields"]["executor.config.seconds"]
        .as_str()
        .unwrap();
    assert!(
        problem.contains("28.5 s") && problem.contains("at most 28"),
        "{problem}"
    );

    let chain = json!({"title": "Slow hook", "type": "multi_step", "steps": [
        {"name": "quick", "config": {"executor": hook(28)}},
        {"name": "slow", "config": {"executor": hook(29), "timeoutSeconds": 600}},
    ]});
    let reply = api.send(&create(chain)).await.expect(400);
    assert_eq!(
        reply.fields(),
        ["steps[1].config.executor.config.timeoutSeconds"]
    );
    assert!(
        reply.body["error"]["fields"]["steps[1].config.executor.config.timeoutSeconds"]
            .as_str()
            .unwrap()
            .contains("at most 28"),
        "{}",
        reply.body
    );

    let batch = json!({"items": [1], "executor": sleep(60.0)});
    let reply = api
        .send(&Event::load("api-create-batch").body(&batch))
        .await
        .expect(400);
    assert_eq!(reply.fields(), ["executor.config.seconds"]);
    assert!(api.store.all_tasks().is_empty(), "nothing was created");

    // At the limit, and a step window longer than the lease (it also covers the queue wait).
    api.send(&create(json!({"title": "Fits", "executor": sleep(28.0)})))
        .await
        .expect(201);
    let fits = json!({"title": "Fits", "type": "multi_step", "steps": [
        {"name": "hook", "config": {"executor": hook(28), "timeoutSeconds": 600}}]});
    api.send(&create(fits)).await.expect(201);
}

/// Issue 13 item 10: a chain of 100 steps with results at their 64 KiB limit came back as one
/// reply of about 6.6 MB, past Lambda's 6 MB response limit. The steps view now ends each page
/// at the byte budget with a cursor; `progress` still counts every step, and the pages hold
/// every step once, in order.
#[tokio::test]
async fn the_steps_of_the_largest_chain_come_in_pages_under_the_response_limit() {
    use shared::domain::limits::{MAX_PAGE_BYTES, MAX_RESULT_BYTES, MAX_STEPS};
    use shared::ports::TaskStore;
    let api = Api::new();
    let names: Vec<String> = (0..MAX_STEPS).map(|i| format!("step-{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let task = api
        .seed_with_steps(
            |t| {
                t.task_type = TaskType::MultiStep;
                t.status = TaskStatus::InProgress;
            },
            &refs,
        )
        .await;
    // `"` serializes as two bytes: the largest result the worker records.
    let result = json!({"r": "\"".repeat((MAX_RESULT_BYTES - r#"{"r":""}"#.len()) / 2)});
    assert!(serde_json::to_vec(&result).unwrap().len() <= MAX_RESULT_BYTES);
    for mut step in api.store.steps(&task.agency_id, task.id).await.unwrap() {
        let read = step.status;
        step.status = StepStatus::Completed;
        step.result = Some(result.clone());
        assert!(api
            .store
            .replace_step(&task.agency_id, &step, read)
            .await
            .unwrap());
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut event = Event::load("api-task-steps");
        if let Some(cursor) = &cursor {
            event = event.query(&[("cursor", cursor)]);
        }
        let reply = api.send(&event).await.expect(200);
        let body = serde_json::to_string(&reply.body).unwrap();
        assert!(body.len() <= MAX_PAGE_BYTES + 1024, "{} bytes", body.len());
        assert_eq!(reply.body["progress"]["completed"], MAX_STEPS);
        seen.extend(
            reply.body["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match reply.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < MAX_STEPS, "paging does not end");
    }
    assert!(pages > 1, "{pages} page(s)");
    assert_eq!(seen, names);

    // A cursor this API did not hand out is a 400 naming it: the document
    // allows 1-16 digits, so a longer run of zeros or a sign is refused too.
    for bad in ["x", "101", "+1", "00000000000000000"] {
        let reply = api
            .send(&Event::load("api-task-steps").query(&[("cursor", bad)]))
            .await
            .expect(400);
        assert!(
            reply.body["error"]["fields"]["cursor"].is_string(),
            "{}",
            reply.body
        );
    }
}

/// Issue 13 item 10: the agent list returned every agent of the agency in one reply, which
/// grows without bound (about 2.5 KB per agent at the capability limits: some 2,500 agents
/// pass Lambda's 6 MB). It now pages like the task list: at most `limit`, never past the byte
/// budget, every agent exactly once.
#[tokio::test]
async fn the_agent_list_comes_in_pages() {
    use shared::domain::limits::{MAX_CAPABILITIES, MAX_PAGE_BYTES, MAX_STEP_NAME_CHARS};
    let api = Api::new();
    let at = |method: &str, path: &str| Event::load("api-get-task").to(method, path);
    let capabilities: Vec<String> = (0..MAX_CAPABILITIES)
        .map(|i| format!("{i:02}{}", "c".repeat(MAX_STEP_NAME_CHARS - 2)))
        .collect();
    let body = json!({"capabilities": capabilities, "capacity": 5});
    let mut registered = Vec::new();
    for i in 0..250 {
        let id = format!("agent-{i:03}");
        api.send(
            &at("PUT", &format!("/api/agents/{id}"))
                .caller(&id, AGENCY, "agent")
                .body(&body),
        )
        .await
        .expect(200);
        registered.push(id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut event = at("GET", "/api/agents");
        if let Some(cursor) = &cursor {
            event = event.query(&[("limit", "100"), ("cursor", cursor)]);
        } else {
            event = event.query(&[("limit", "100")]);
        }
        let reply = api.send(&event).await.expect(200);
        let items = reply.body["items"].as_array().unwrap();
        assert!(items.len() <= 100);
        assert!(serde_json::to_string(&reply.body).unwrap().len() <= MAX_PAGE_BYTES + 1024);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        pages += 1;
        match reply.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, registered, "every agent once, in id order");
    // The default page is 50; a bad limit or cursor is a 400 naming it.
    let first = api.send(&at("GET", "/api/agents")).await.expect(200);
    assert_eq!(first.body["items"].as_array().unwrap().len(), 50);
    for (name, value) in [("limit", "0"), ("limit", "101"), ("cursor", "no$such")] {
        let reply = api
            .send(&at("GET", "/api/agents").query(&[(name, value)]))
            .await
            .expect(400);
        assert!(
            reply.body["error"]["fields"][name].is_string(),
            "{}",
            reply.body
        );
    }
}

/// `GET /api/tasks/{id}/attachments/{attachmentId}`: a presigned download URL for a file the
/// task lists, for any role of the agency; anything else is the same 404 as an unknown task.
#[tokio::test]
async fn attachments_download_through_presigned_urls() {
    let api = Api::new();
    api.seed(|_| {}).await;
    let added = api
        .send(&Event::load("api-add-attachment"))
        .await
        .expect(201);
    let attachment = added.body["attachment"]["id"].as_str().unwrap().to_owned();
    let key = added.body["attachment"]["key"].as_str().unwrap().to_owned();
    let path = format!("/api/tasks/{TASK_ID}/attachments/{attachment}");

    let download = api
        .send(&Event::load("api-get-task").to("GET", &path).worker())
        .await
        .expect(200);
    assert_eq!(download.body["attachment"]["id"], attachment.as_str());
    assert_eq!(download.body["download"]["method"], "GET");
    assert_eq!(
        download.body["download"]["url"],
        format!("https://downloads.example/{key}")
    );

    let unknown = format!("/api/tasks/{TASK_ID}/attachments/01JD0000000000000000000000");
    let reply = api
        .send(&Event::load("api-get-task").to("GET", &unknown))
        .await
        .expect(404);
    assert_eq!(reply.code(), "not_found");
    // Another agency's task reveals nothing, its files included.
    api.send(
        &Event::load("api-get-task")
            .to("GET", &path)
            .caller(MANAGER, "globex", "manager"),
    )
    .await
    .expect(404);
    // Only GET.
    api.send(&Event::load("api-get-task").to("DELETE", &path))
        .await
        .expect(405);
}
