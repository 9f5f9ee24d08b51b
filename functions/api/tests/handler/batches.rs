//! The batch routes: creating from inline items or an uploaded file, reading
//! progress and failed items, and retrying them. Every reply also passes the
//! contract check in `support`.

use crate::support::*;
use serde_json::{json, Value};
use shared::domain::{BatchStatus, ItemFailure, TaskId};
use shared::ports::{BatchStore, ObjectStore};

const BATCHES: &str = "/api/batches";
const UPLOADS: &str = "/api/batches/uploads";

fn create(body: &Value) -> Event {
    Event::load("api-create-batch").body(body)
}

fn get(id: &str) -> Event {
    Event::load("api-get-batch").id(id)
}

fn failures(id: &str, query: &[(&str, &str)]) -> Event {
    Event::load("api-get-batch")
        .to("GET", &format!("{BATCHES}/{id}/failures"))
        .query(query)
}

fn retry_failed(id: &str) -> Event {
    Event::load("api-get-batch").to("POST", &format!("{BATCHES}/{id}/retry-failed"))
}

fn upload(body: &Value) -> Event {
    Event::load("api-create-batch")
        .to("POST", UPLOADS)
        .body(body)
}

fn items(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"n": i})).collect())
}

fn other_agency(event: Event) -> Event {
    event.caller(MANAGER, "initech", "manager")
}

#[tokio::test]
async fn creating_an_inline_batch_chunks_it_and_starts_its_execution() {
    let api = Api::new();
    let body = json!({"title": "Nightly re-index", "items": items(250), "parallelism": 4,
        "itemsPerBatch": 100, "toleratedFailurePercentage": 2.5});
    let created = api.send(&create(&body)).await.expect(202);
    let id = created.id();
    let b = &created.body;
    assert_eq!(b["taskId"], json!(id));
    assert_eq!(b["agencyId"], AGENCY);
    // Recorded; its preparation is queued.
    assert_eq!(b["status"], "pending");
    assert_eq!(
        (&b["totalItems"], &b["chunkCount"]),
        (&json!(250), &json!(0))
    );
    assert!(api.orchestrator.started.lock().unwrap().is_empty());
    assert_eq!(api.prepare().await, [shared::service::Prepared::Started]);

    let prepared = api.send(&get(&id)).await.expect(200);
    let b = &prepared.body;
    assert_eq!(b["status"], "processing");
    assert_eq!(b["source"], "inline");
    assert!(b.get("sourceKey").is_none());
    assert_eq!(b["totalItems"], 250);
    // ceil(250 / 100)
    assert_eq!(b["chunkCount"], 3);
    assert_eq!(
        (&b["processedItems"], &b["successItems"], &b["failedItems"]),
        (&json!(0), &json!(0), &json!(0))
    );
    assert_eq!((&b["round"], &b["parallelism"]), (&json!(0), &json!(4)));
    assert_eq!(b["toleratedFailurePercentage"], 2.5);
    // Defaults.
    assert_eq!(b["priority"], "background");
    assert_eq!(b["executor"], json!({"type": "echo", "config": {}}));
    assert_eq!(b["progressPercent"], 0.0);
    assert_eq!(
        (&b["etaSeconds"], &b["resultsUrl"]),
        (&Value::Null, &Value::Null)
    );
    assert!(b["startedAt"].is_string() && b.get("completedAt").is_none());

    // The chunks and the manifest are in the bucket.
    let prefix = format!("batches/{AGENCY}/{id}/round-000");
    let manifest_key = format!("{prefix}/manifest.json");
    assert_eq!(b["manifestKey"], json!(manifest_key));
    let manifest = api.object(&manifest_key).expect("a manifest");
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(
        entries
            .iter()
            .map(|e| e["count"].clone())
            .collect::<Vec<_>>(),
        [json!(100), json!(100), json!(50)]
    );
    assert_eq!(entries[2]["first"], 200);
    let chunks = api.object_keys(&format!("{prefix}/chunks/"));
    assert_eq!(chunks.len(), 3);
    assert_eq!(entries[1]["key"], json!(chunks[1]));
    let last = api.object(&chunks[2]).unwrap();
    assert_eq!(last[0], json!({"index": 200, "item": {"n": 200}}));

    // One execution, with the manifest and the parallelism.
    let started = api.orchestrator.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    let input = &started[0].1;
    assert_eq!(input["batchId"], json!(id));
    assert_eq!(input["manifestKey"], json!(manifest_key));
    assert_eq!(input["parallelism"], 4);
    assert_eq!(input["round"], 0);
    assert!(b["executionArn"].as_str().unwrap().ends_with(&started[0].0));

    // It reads back the same (any role), and its task carries the title.
    let all_null = json!({"items": [1], "source": null, "title": null, "parallelism": null,
        "toleratedFailurePercentage": null, "priority": null, "executor": null,
        "itemsPerBatch": null});
    let defaults = api.send(&create(&all_null)).await.expect(202);
    assert_eq!(
        (
            &defaults.body["parallelism"],
            &defaults.body["itemsPerBatch"]
        ),
        (&json!(10), &json!(100))
    );
    let fetched = api.send(&get(&id).worker()).await.expect(200);
    assert_eq!(fetched.body, prepared.body);
    let task = api
        .send(&Event::load("api-get-task").id(&id))
        .await
        .expect(200);
    assert_eq!(
        (
            &task.body["type"],
            &task.body["title"],
            &task.body["status"]
        ),
        (
            &json!("batch"),
            &json!("Nightly re-index"),
            &json!("in_progress")
        )
    );
}

#[tokio::test]
async fn bad_batches_are_400_naming_the_field_and_create_nothing() {
    let api = Api::new();
    let source = json!({"key": format!("inputs/{AGENCY}/01JD0000000000000000000000/a.csv")});
    let cases = [
        (json!({"items": [1], "source": source}), vec!["items"]),
        (json!({"items": []}), vec!["items"]),
        (json!({"items": items(10_001)}), vec!["items"]),
        (json!({"items": {"n": 1}}), vec!["items"]),
        (json!({"title": "Nothing to do"}), vec!["items"]),
        (json!({}), vec!["items"]),
        (json!({"items": [1], "parallelism": 0}), vec!["parallelism"]),
        (
            json!({"items": [1], "parallelism": 1001}),
            vec!["parallelism"],
        ),
        (
            json!({"items": [1], "parallelism": 2.5}),
            vec!["parallelism"],
        ),
        (
            json!({"items": [1], "itemsPerBatch": 0}),
            vec!["itemsPerBatch"],
        ),
        (
            json!({"items": [1], "toleratedFailurePercentage": 101}),
            vec!["toleratedFailurePercentage"],
        ),
        (
            json!({"items": [1], "priority": "urgent"}),
            vec!["priority"],
        ),
        (json!({"items": [1], "title": " "}), vec!["title"]),
        (
            json!({"items": [1], "executor": {"type": "manual"}}),
            vec!["executor"],
        ),
        (
            json!({"items": [1], "executor": {"type": "teleport"}}),
            vec!["executor"],
        ),
        (
            json!({"items": [1], "executor": {"type": "http"}}),
            vec!["executor"],
        ),
        (json!({"items": [1], "source": "a.csv"}), vec!["source"]),
        // JSON numbers and objects only: text is for S3 metadata.
        (
            json!({"items": [1], "parallelism": "5"}),
            vec!["parallelism"],
        ),
        (
            json!({"items": [1], "executor": "{\"type\": \"echo\"}"}),
            vec!["executor"],
        ),
        (
            json!({"items": [1], "executor": {"type": "echo", "retries": 2}}),
            vec!["executor"],
        ),
        (
            json!({"source": {"key": source["key"], "bucket": "x"}}),
            vec!["source"],
        ),
        (json!({"items": [1], "retries": 3}), vec!["retries"]),
        (
            json!({"items": [], "parallelism": 0, "executor": {"type": "manual"}}),
            vec!["executor", "items", "parallelism"],
        ),
    ];
    for (body, fields) in &cases {
        let reply = api.send(&create(body)).await.expect(400);
        assert_eq!(reply.code(), "validation_failed", "{body}");
        assert_eq!(&reply.fields(), fields, "{body}");
    }
    let not_json = api
        .send(&create(&json!(null)).raw_body("[1,"))
        .await
        .expect(400);
    assert_eq!(not_json.code(), "malformed_json");
    let array = api.send(&create(&json!([1, 2]))).await.expect(400);
    assert_eq!(array.fields(), ["body"]);

    // Members may not create batches, nor upload their inputs.
    let denied = api
        .send(&create(&json!({"items": [1]})).worker())
        .await
        .expect(403);
    assert_eq!(denied.code(), "forbidden");
    api.send(&upload(&json!({"fileName": "a.csv"})).worker())
        .await
        .expect(403);

    assert!(api.store.all_tasks().is_empty(), "nothing was created");
    assert!(api.orchestrator.started.lock().unwrap().is_empty());
    assert!(api.object_keys("").is_empty());
}

#[tokio::test]
async fn other_agencies_batches_and_unknown_ids_are_404() {
    let api = Api::new();
    let created = api
        .send(&create(&json!({"items": [1, 2, 3]})))
        .await
        .expect(202);
    let id = created.id();
    let unknown = TaskId::generate().to_string();
    for event in [
        get(&unknown),
        get("not-a-batch"),
        failures(&unknown, &[]),
        retry_failed(&unknown),
        other_agency(get(&id)),
        other_agency(failures(&id, &[])),
        other_agency(retry_failed(&id)),
    ] {
        let reply = api.send(&event).await.expect(404);
        assert_eq!(reply.code(), "not_found", "{}", event.path());
        assert_eq!(reply.body["error"]["message"], "batch not found");
    }
    // A task id that is not a batch is not a batch.
    api.seed(|_| {}).await;
    api.send(&get(TASK_ID)).await.expect(404);
}

#[tokio::test]
async fn failures_page_by_index() {
    let api = Api::new();
    let batch = api.seed_batch(|_| {}).await;
    let id = batch.id.to_string();
    let empty = api.send(&failures(&id, &[])).await.expect(200);
    assert_eq!(empty.body, json!({"items": [], "nextCursor": null}));
    let empty = api
        .send(&failures(&id, &[("limit", "1")]).worker())
        .await
        .expect(200);
    assert_eq!(empty.body, json!({"items": [], "nextCursor": null}));

    // limit is 1..1000.
    for limit in ["0", "1001", "ten", "-1", ""] {
        let reply = api
            .send(&failures(&id, &[("limit", limit)]))
            .await
            .expect(400);
        assert_eq!(reply.fields(), ["limit"], "limit={limit}");
    }
    api.send(&failures(&id, &[("limit", "1000")]))
        .await
        .expect(200);

    let recorded =
        [(4, "timeout"), (0, "bad sku"), (9, "HTTP 500")].map(|(index, error)| ItemFailure {
            index,
            error: error.into(),
        });
    api.batches
        .record_failures(&batch.agency_id, batch.id, &recorded)
        .await
        .unwrap();
    let first = api
        .send(&failures(&id, &[("limit", "2")]))
        .await
        .expect(200);
    assert_eq!(
        first.body["items"],
        json!([{"index": 0, "error": "bad sku"}, {"index": 4, "error": "timeout"}])
    );
    let cursor = first.body["nextCursor"].as_str().expect("a next page");
    let rest = api
        .send(&failures(&id, &[("limit", "2"), ("cursor", cursor)]))
        .await
        .expect(200);
    assert_eq!(
        rest.body,
        json!({"items": [{"index": 9, "error": "HTTP 500"}], "nextCursor": null})
    );
}

#[tokio::test]
async fn retrying_failed_items() {
    let api = Api::new();
    let created = api
        .send(&create(&json!({"items": items(5), "itemsPerBatch": 2})))
        .await
        .expect(202);
    let id = created.id();
    let retry = retry_failed(&id);

    // While the batch is prepared or runs there is nothing to retry yet.
    api.send(&retry).await.expect(409);
    api.prepare().await;
    let running = api.send(&retry).await.expect(409);
    assert_eq!(running.code(), "conflict");
    api.send(&retry.clone().worker()).await.expect(403);

    // Finished without failures: still nothing to retry.
    let mut batch = api
        .batches
        .get(
            &shared::domain::AgencyId::parse(AGENCY).unwrap(),
            TaskId::parse(&id).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    batch.status = BatchStatus::Completed;
    batch.processed_items = 5;
    batch.success_items = 5;
    batch.completed_at = Some(chrono::Utc::now());
    batch.results_key = Some(format!("batches/{AGENCY}/{id}/round-000/results.json"));
    api.batches.put(&batch).await.unwrap();
    let done = api.send(&get(&id)).await.expect(200);
    assert_eq!(done.body["progressPercent"], 100.0);
    assert!(done.body["resultsUrl"]
        .as_str()
        .unwrap()
        .ends_with("results.json"));
    let nothing = api.send(&retry).await.expect(409);
    assert_eq!(nothing.code(), "conflict");

    // Two items failed: a new round runs just those.
    batch.status = BatchStatus::Failed;
    batch.success_items = 3;
    batch.failed_items = 2;
    api.batches.put(&batch).await.unwrap();
    let failed = [1, 4].map(|index| ItemFailure {
        index,
        error: "boom".into(),
    });
    api.batches
        .record_failures(&batch.agency_id, batch.id, &failed)
        .await
        .unwrap();
    let retried = api.send(&retry).await.expect(202);
    let b = &retried.body;
    assert_eq!((&b["status"], &b["round"]), (&json!("pending"), &json!(1)));
    // The two items being retried count as neither processed nor failed until they settle.
    assert_eq!(
        (&b["processedItems"], &b["failedItems"]),
        (&json!(3), &json!(0))
    );
    assert_eq!(b["resultsUrl"], Value::Null);
    assert_eq!(api.prepare().await, [shared::service::Prepared::Started]);
    let running = api.send(&get(&id)).await.expect(200);
    let b = &running.body;
    assert_eq!(
        (&b["status"], &b["round"]),
        (&json!("processing"), &json!(1))
    );
    assert_eq!(
        (&b["processedItems"], &b["failedItems"], &b["chunkCount"]),
        (&json!(3), &json!(0), &json!(1))
    );
    let manifest_key = format!("batches/{AGENCY}/{id}/round-001/manifest.json");
    assert_eq!(b["manifestKey"], json!(manifest_key));
    let chunk_key = api.object(&manifest_key).unwrap()[0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.object(&chunk_key).unwrap(),
        json!([{"index": 1, "item": {"n": 1}}, {"index": 4, "item": {"n": 4}}])
    );
    let started = api.orchestrator.started.lock().unwrap().clone();
    assert_eq!(started.len(), 2);
    assert_eq!(started[1].1["round"], 1);
    // And it is running again.
    api.send(&retry).await.expect(409);
}

#[tokio::test]
async fn uploading_an_input_file_then_creating_its_batch() {
    let api = Api::new();
    let reply = api
        .send(&upload(&json!({"fileName": "orders.csv"})))
        .await
        .expect(201);
    let key = reply.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("inputs/{AGENCY}/")), "{key}");
    assert!(key.ends_with("/orders.csv"), "{key}");
    let upload_request = &reply.body["upload"];
    assert_eq!(upload_request["method"], "PUT");
    assert!(upload_request["url"].as_str().unwrap().ends_with(&key));
    assert_eq!(
        upload_request["headers"],
        json!({"Content-Type": "application/octet-stream"})
    );
    // Each request gets its own key.
    let again = api
        .send(&upload(&json!({"fileName": "orders.csv"})))
        .await
        .expect(201);
    assert_ne!(again.body["key"], json!(key));

    // The client PUTs the file; then the batch reads it.
    api.objects
        .put(&key, b"sku,qty\nA-1,2\nB-2,1\nC-3,7\n".to_vec(), "text/csv")
        .await
        .unwrap();
    // (null is the same as leaving a field out, items included.)
    let created = api
        .send(&create(
            &json!({"items": null, "source": {"key": key}, "itemsPerBatch": 2}),
        ))
        .await
        .expect(202);
    assert_eq!(created.body["totalItems"], 0, "counted as it is prepared");
    api.prepare().await;
    let prepared = api.send(&get(&created.id())).await.expect(200);
    let b = &prepared.body;
    assert_eq!(
        (&b["source"], &b["sourceKey"]),
        (&json!("upload"), &json!(key))
    );
    assert_eq!((&b["totalItems"], &b["chunkCount"]), (&json!(3), &json!(2)));
    let chunk = api
        .object(&format!(
            "batches/{AGENCY}/{}/round-000/chunks/00000.json",
            created.id()
        ))
        .unwrap();
    assert_eq!(
        chunk[1],
        json!({"index": 1, "item": {"sku": "B-2", "qty": "1"}})
    );

    // A malformed file fails its batch as it is prepared, with where and why.
    let bad_key = format!("inputs/{AGENCY}/01JD0000000000000000000000/broken.jsonl");
    api.objects
        .put(&bad_key, b"{\"a\": 1}\nnot json\n".to_vec(), "text/plain")
        .await
        .unwrap();
    let broken = api
        .send(&create(&json!({"source": {"key": bad_key}})))
        .await
        .expect(202);
    api.prepare().await;
    let failed = api.send(&get(&broken.id())).await.expect(200);
    assert_eq!(failed.body["status"], "failed");
    let problem = failed.body["error"].as_str().unwrap();
    assert!(problem.starts_with("line 2: invalid JSON"), "{problem}");
    // Nothing uploaded at the key: refused at once.
    let missing = format!("inputs/{AGENCY}/01JD0000000000000000000001/orders.csv");
    let reply = api
        .send(&create(&json!({"source": {"key": missing}})))
        .await
        .expect(400);
    assert_eq!(reply.fields(), ["source.key"]);
}

#[tokio::test]
async fn source_keys_must_be_the_callers_uploads() {
    let api = Api::new();
    let theirs = api
        .send(&other_agency(upload(&json!({"fileName": "orders.json"}))))
        .await
        .expect(201);
    let key = theirs.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("inputs/initech/"), "{key}");
    api.objects
        .put(&key, b"[1, 2]".to_vec(), "application/json")
        .await
        .unwrap();
    let ulid = "01JD0000000000000000000000";
    for source in [
        json!({"key": key}),
        json!({"key": format!("uploads/{AGENCY}/orders.csv")}),
        json!({"key": format!("inputs/{AGENCY}/{ulid}/orders.xml")}),
        json!({"key": format!("inputs/{AGENCY}")}),
        json!({"key": 7}),
        json!({}),
    ] {
        let reply = api
            .send(&create(&json!({"source": source})))
            .await
            .expect(400);
        assert_eq!(reply.fields(), ["source.key"], "{source}");
    }
    assert!(api.store.all_tasks().is_empty());
    // The owner may use it.
    api.send(&other_agency(create(&json!({"source": {"key": key}}))))
        .await
        .expect(202);
}

#[tokio::test]
async fn upload_file_names_are_checked() {
    let api = Api::new();
    for name in [
        "a.json",
        "b.JSONL",
        "c.ndjson",
        "d.Csv",
        &format!("{}.csv", "x".repeat(196)),
    ] {
        api.send(&upload(&json!({"fileName": name})))
            .await
            .expect(201);
    }
    for body in [
        json!({"fileName": "orders.xlsx"}),
        json!({"fileName": "../orders.csv"}),
        json!({"fileName": "a\\b.csv"}),
        json!({"fileName": ""}),
        json!({"fileName": null}),
        json!({"fileName": 7}),
        json!({"fileName": format!("{}.csv", "x".repeat(197))}),
        json!({"fileName": format!("{}.csv", "é".repeat(197))}),
        json!({}),
    ] {
        let reply = api.send(&upload(&body)).await.expect(400);
        assert_eq!(reply.fields(), ["fileName"], "{body}");
    }
    // Only fileName: any other field is named.
    let reply = api
        .send(&upload(
            &json!({"fileName": "orders.csv", "contentType": "text/csv"}),
        ))
        .await
        .expect(400);
    assert_eq!(reply.fields(), ["contentType"]);
    // A body is required, and it must be JSON.
    api.send(&upload(&json!(null)).no_body()).await.expect(400);
    api.send(&upload(&json!({"fileName": "a.csv"})).header("Content-Type", "text/csv"))
        .await
        .expect(415);
}

fn list(query: &[(&str, &str)]) -> Event {
    Event::load("api-get-batch").to("GET", BATCHES).query(query)
}

fn titles(reply: &Reply) -> Vec<&str> {
    reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["title"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn batches_are_listed_newest_first_with_filters_and_pages() {
    let api = Api::new();
    for (title, priority) in [("b0", "low"), ("b1", "high"), ("b2", "low")] {
        api.send(&create(
            &json!({"title": title, "items": [1, 2], "priority": priority}),
        ))
        .await
        .expect(202);
    }
    let all = api.send(&list(&[]).worker()).await.expect(200);
    // Newest first by id; ids made within one millisecond may come in any order.
    let order = titles(&all);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["b0", "b1", "b2"]);
    assert_eq!(all.body["items"][0]["status"], "pending");
    assert_eq!(all.body["nextCursor"], Value::Null);

    api.prepare().await;
    let processing = api
        .send(&list(&[("status", "processing")]))
        .await
        .expect(200);
    assert_eq!(titles(&processing), order);
    let pending = api.send(&list(&[("status", "pending")])).await.expect(200);
    assert_eq!(titles(&pending), Vec::<&str>::new());
    let high = api.send(&list(&[("priority", "high")])).await.expect(200);
    assert_eq!(titles(&high), ["b1"]);

    let first = api.send(&list(&[("limit", "2")])).await.expect(200);
    assert_eq!(titles(&first), order[..2]);
    let cursor = first.body["nextCursor"].as_str().expect("a next page");
    let rest = api
        .send(&list(&[("limit", "2"), ("cursor", cursor)]))
        .await
        .expect(200);
    assert_eq!(titles(&rest), order[2..]);
    assert_eq!(rest.body["nextCursor"], Value::Null);

    for (query, field) in [
        (("status", "done"), "status"),
        (("priority", "urgent"), "priority"),
        (("limit", "51"), "limit"),
        (("limit", "0"), "limit"),
        (("type", "batch"), "type"),
    ] {
        let reply = api.send(&list(&[query])).await.expect(400);
        assert_eq!(reply.fields(), [field], "{query:?}");
    }
    // Another agency sees none of them.
    let theirs = api.send(&other_agency(list(&[]))).await.expect(200);
    assert_eq!(theirs.body["items"], json!([]));
}

#[tokio::test]
async fn a_batch_without_a_title_is_named_after_its_file_or_its_size() {
    let api = Api::new();
    let inline = api
        .send(&create(&json!({"items": [1, 2, 3]})))
        .await
        .expect(202);
    assert_eq!(inline.body["title"], "Batch of 3 items");
    let reply = api
        .send(&upload(&json!({"fileName": "orders.csv"})))
        .await
        .expect(201);
    let key = reply.body["key"].as_str().unwrap().to_owned();
    api.objects
        .put(&key, b"sku\nA\n".to_vec(), "text/csv")
        .await
        .unwrap();
    let from_file = api
        .send(&create(&json!({"source": {"key": key}})))
        .await
        .expect(202);
    assert_eq!(from_file.body["title"], "Batch from orders.csv");
    let task = api
        .send(&Event::load("api-get-task").id(&from_file.id()))
        .await
        .expect(200);
    assert_eq!(task.body["title"], "Batch from orders.csv");
}

/// Found by make fuzz: a number DynamoDB cannot store (magnitude below 1e-130) in a stored
/// field failed the write as a 500; it is a 400 naming the field, for batches and tasks.
#[tokio::test]
async fn numbers_dynamodb_cannot_store_are_a_400_not_a_500() {
    let api = Api::new();
    for (body, field) in [
        (
            json!({"items": [{}, {}], "toleratedFailurePercentage": 1.5186260562932808e-156}),
            "toleratedFailurePercentage",
        ),
        (
            json!({"items": [1], "executor": {"type": "echo", "config": {"x": 1e-200}}}),
            "executor",
        ),
    ] {
        let reply = api.send(&create(&body)).await.expect(400);
        assert_eq!(reply.fields(), [field], "{body}");
    }
    let task = Event::load("api-create-task").body(&json!({
        "title": "tiny", "executor": {"type": "echo", "config": {"x": 1e-200}}
    }));
    let reply = api.send(&task).await.expect(400);
    assert_eq!(reply.fields(), ["executor"]);
    assert!(
        reply.body["error"]["fields"]["executor"]
            .as_str()
            .unwrap()
            .contains("1e-130"),
        "{}",
        reply.body
    );
    assert!(api.store.all_tasks().is_empty(), "nothing was created");
}
