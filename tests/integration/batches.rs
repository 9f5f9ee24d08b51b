//! Batch jobs on the Distributed Map, against the local stack.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sfn::types::ExecutionStatus;
use integration_tests::{eventually, stack, unique_agency, wait_for_batch, Client, PickyEndpoint};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

fn manager() -> (String, Client) {
    let agency = unique_agency("batch");
    let client = Client::as_user(&agency, "boss", "manager");
    (agency, client)
}

async fn create(client: &Client, body: Value) -> String {
    let reply = client.post("/api/batches", &body).await;
    // Accepted: recorded pending, prepared in the background.
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending", "{}", reply.body);
    reply.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ten_thousand_items_complete_with_exact_counts() {
    let (_, boss) = manager();
    let items: Vec<Value> = (0..10_000).map(|n| json!({"n": n})).collect();
    let id = create(
        &boss,
        json!({"items": items, "itemsPerBatch": 500, "parallelism": 5, "priority": "high"}),
    )
    .await;
    let batch = wait_for_batch(&boss, &id).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        (
            batch["totalItems"].as_u64(),
            batch["processedItems"].as_u64()
        ),
        (Some(10_000), Some(10_000))
    );
    assert_eq!(
        (
            batch["successItems"].as_u64(),
            batch["failedItems"].as_u64()
        ),
        (Some(10_000), Some(0))
    );
    assert_eq!(batch["chunkCount"], 20);
    let clients = integration_tests::stack().clients().await;
    let arn = batch["executionArn"].as_str().expect("executionArn");
    let oversize = integration_tests::limits::oversize_states(&clients.sfn, arn).await;
    assert!(oversize.is_empty(), "{oversize:?}");
    assert_eq!(batch["progressPercent"], 100.0);
    // The results summary is downloadable.
    let url = batch["resultsUrl"].as_str().expect("results url");
    let summary: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(summary["successItems"], 10_000);
    let task = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(
        (task["type"].as_str(), task["status"].as_str()),
        (Some("batch"), Some("completed"))
    );
}

/// A chunk that needs longer than the worker's Timeout (20 s in the test stack: 240 items of
/// 2 s, 16 at a time) stops starting items in time and goes on in a new delivery, so every
/// item runs exactly once. Before, the chunk ran until Lambda killed it, came back, and started
/// again from item 0.
#[tokio::test]
async fn a_chunk_longer_than_the_worker_timeout_runs_each_item_once() {
    if stack().functions.is_empty() {
        return; // in-process hosting cuts no invocation off
    }
    let ledger = integration_tests::ledger::Ledger::start();
    let (_, boss) = manager();
    let items: Vec<Value> = (0..240).map(|n| json!({"n": n, "delayMs": 2000})).collect();
    let id = create(
        &boss,
        json!({"items": items, "itemsPerBatch": 240, "priority": "low",
            "executor": {"type": "http", "config": {"url": ledger.url, "timeoutSeconds": 8}}}),
    )
    .await;
    let batch = wait_for_batch(&boss, &id).await;
    // Every item is processed once. (On a loaded machine an item may miss its 8 s timeout
    // and fail: that is one run too, and the batch then fails its 0 % tolerance.)
    assert_eq!(batch["processedItems"].as_u64(), Some(240), "{batch}");
    let mut indexes: Vec<u64> = ledger
        .runs_of(&id)
        .iter()
        .filter_map(|r| r.item_index)
        .collect();
    indexes.sort_unstable();
    assert_eq!(
        indexes,
        (0..240).collect::<Vec<u64>>(),
        "each item exactly once"
    );
}

/// Cancelling a batch task stops the batch: the running chunk starts no item after its next
/// flush, later chunks never run, the execution ends, and neither the batch nor its task is
/// settled afterwards. Before, only the task was cancelled: every chunk ran, and the finalizer
/// set the task to completed.
#[tokio::test]
async fn cancelling_a_running_batch_stops_it_and_it_stays_cancelled() {
    let ledger = integration_tests::ledger::Ledger::start();
    let (_, boss) = manager();
    // Three chunks of 100, one at a time; the first chunk's first items are held open, so the
    // batch is provably running when it is cancelled.
    ledger.hold();
    let items: Vec<Value> = (0..300).map(|n| json!({"n": n, "delayMs": 20})).collect();
    let id = create(
        &boss,
        json!({"items": items, "itemsPerBatch": 100, "parallelism": 1, "priority": "high",
            "executor": {"type": "http", "config": {"url": ledger.url}}}),
    )
    .await;
    ledger
        .wait_for("the first items to run", 1, |r| r.task_id == id)
        .await;
    let reply = boss
        .post(&format!("/api/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled");
    let batch = boss.get(&format!("/api/batches/{id}")).await.body;
    assert_eq!(batch["status"], "cancelled", "{batch}");
    ledger.release();

    // The execution ends. AWS aborts it at once; moto 5.2.5 keeps an execution waiting on a
    // task token running after StopExecution, so there it ends because the chunk answers its
    // token and the other chunks and the finalizer find the batch cancelled.
    let arn = batch["executionArn"]
        .as_str()
        .expect("executionArn")
        .to_owned();
    let sfn = stack().clients().await.sfn;
    let status = eventually(
        "the batch's execution to end",
        integration_tests::scaled(Duration::from_secs(60)),
        || async {
            let out = sfn
                .describe_execution()
                .execution_arn(&arn)
                .send()
                .await
                .ok()?;
            (out.status != ExecutionStatus::Running).then_some(out.status)
        },
    )
    .await;
    assert!(
        matches!(
            status,
            ExecutionStatus::Aborted | ExecutionStatus::Succeeded | ExecutionStatus::Failed
        ),
        "{status:?}"
    );

    // Only the first chunk ran, and it stopped: after the cancel, at most the items up to
    // its next flush (50, or a second's worth) and those already running (16) started.
    let runs = ledger.runs_of(&id);
    let mut indexes: Vec<u64> = runs.iter().filter_map(|r| r.item_index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), runs.len(), "no item ran twice: {runs:?}");
    assert!(
        indexes.iter().all(|&i| i < 100),
        "a later chunk ran: {indexes:?}"
    );
    assert!(
        runs.len() < 100,
        "the first chunk ran to its end ({} runs)",
        runs.len()
    );

    // Whatever finished after the cancel settled nothing.
    let batch = boss.get(&format!("/api/batches/{id}")).await.body;
    assert_eq!(batch["status"], "cancelled", "{batch}");
    let task = boss.get(&format!("/api/tasks/{id}")).await.body;
    assert_eq!(task["status"], "cancelled", "{task}");
    assert!(task["result"].is_null(), "{task}");
    assert_eq!(ledger.runs_of(&id).len(), runs.len(), "nothing ran since");
}

#[tokio::test]
async fn partial_failures_below_and_above_the_tolerance_and_retry_failed() {
    let (_, boss) = manager();
    let endpoint = PickyEndpoint::start().await;
    let items: Vec<Value> = (0..100)
        .map(|n| json!({"n": n, "bad": n % 20 == 0}))
        .collect(); // 5 % bad
    let executor = json!({"type": "http", "config": {"url": endpoint.url}});
    let tolerant = create(&boss, json!({"items": items, "executor": executor, "itemsPerBatch": 25, "toleratedFailurePercentage": 10})).await;
    let strict = create(&boss, json!({"items": items, "executor": executor, "itemsPerBatch": 25, "toleratedFailurePercentage": 2.5})).await;

    let batch = wait_for_batch(&boss, &tolerant).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        (
            batch["successItems"].as_u64(),
            batch["failedItems"].as_u64()
        ),
        (Some(95), Some(5))
    );
    // Every item ran exactly once: one run per index in the ledger.
    let mut indexes: Vec<u64> = endpoint
        .ledger
        .runs_of(&tolerant)
        .iter()
        .map(|r| r.item_index.expect("an item run"))
        .collect();
    indexes.sort();
    assert_eq!(indexes, (0..100).collect::<Vec<u64>>());
    let batch = wait_for_batch(&boss, &strict).await;
    assert_eq!(batch["status"], "failed", "{batch}");
    assert_eq!(batch["failedItems"], 5);
    assert!(
        batch["error"]
            .as_str()
            .unwrap()
            .contains("above the tolerated 2.5 %"),
        "{batch}"
    );

    // Failed items are listed with their index and error, paged.
    let first = boss
        .get(&format!("/api/batches/{strict}/failures?limit=3"))
        .await
        .body;
    let second = boss
        .get(&format!(
            "/api/batches/{strict}/failures?limit=3&cursor={}",
            first["nextCursor"].as_str().unwrap()
        ))
        .await
        .body;
    let indexes: Vec<u64> = [&first, &second]
        .iter()
        .flat_map(|p| {
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["index"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(indexes, [0, 20, 40, 60, 80]);
    assert!(first["items"][0]["error"].as_str().unwrap().contains("422"));

    // Once the endpoint accepts them, retry-failed runs only those five again.
    endpoint.accept_all();
    let runs_before = endpoint.ledger.runs().len();
    let retry = boss
        .post(&format!("/api/batches/{strict}/retry-failed"), &json!({}))
        .await;
    assert_eq!(retry.status, StatusCode::ACCEPTED, "{}", retry.body);
    let batch = eventually(
        "the retry round to finish",
        Duration::from_secs(60),
        || async {
            let b = boss.get(&format!("/api/batches/{strict}")).await.body;
            let running = b["status"] == "pending" || b["status"] == "processing";
            (b["round"] == 1 && !running).then_some(b)
        },
    )
    .await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(
        (
            batch["successItems"].as_u64(),
            batch["failedItems"].as_u64()
        ),
        (Some(100), Some(0))
    );
    // The ledger saw exactly those five items again, once each.
    let mut rerun: Vec<u64> = endpoint.ledger.runs()[runs_before..]
        .iter()
        .map(|r| r.item_index.expect("an item run"))
        .collect();
    rerun.sort();
    assert_eq!(rerun, [0, 20, 40, 60, 80]);
    let failures = boss
        .get(&format!("/api/batches/{strict}/failures"))
        .await
        .body;
    assert_eq!(failures["items"], json!([]));
}

#[tokio::test]
async fn progress_can_be_read_while_the_batch_runs() {
    let (_, boss) = manager();
    let items: Vec<Value> = (0..60).map(|n| json!({"n": n})).collect();
    let id = create(
        &boss,
        json!({"items": items, "itemsPerBatch": 10, "parallelism": 1, "priority": "critical",
        "executor": {"type": "sleep", "config": {"seconds": 0.05}}}),
    )
    .await;
    let mut seen = Vec::new();
    let done = loop {
        let batch = boss.get(&format!("/api/batches/{id}")).await.body;
        seen.push(batch["processedItems"].as_u64().unwrap());
        if batch["status"] != "processing" && batch["status"] != "pending" {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.len() < 600, "the batch did not finish");
    };
    assert_eq!(done["status"], "completed");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {seen:?}"
    );
    assert!(
        seen.iter().any(|p| *p > 0 && *p < 60),
        "no partial progress was visible: {seen:?}"
    );
}

async fn upload(agency: &str, name: &str, body: &[u8], metadata: &[(&str, &str)]) -> String {
    let clients = stack().clients().await;
    let key = format!("uploads/{agency}/{name}");
    let mut put = clients
        .s3
        .put_object()
        .bucket(stack().config.batch_bucket.clone())
        .key(&key)
        .body(body.to_vec().into());
    for (k, v) in metadata {
        put = put.metadata(*k, *v);
    }
    put.send().await.expect("upload");
    key
}

/// The batches of an agency, from its task list.
async fn batches_of(client: &Client) -> Vec<Value> {
    client.get("/api/tasks?type=batch").await.body["items"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn uploads_in_each_format_trigger_batches_and_bad_ones_fail_clearly() {
    let (agency, boss) = manager();
    // The agency must be known: it has a task.
    boss.create_task(&json!({"title": "hello"})).await;
    upload(
        &agency,
        "orders.json",
        br#"[{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]"#,
        &[("priority", "high")],
    )
    .await;
    upload(
        &agency,
        "orders.jsonl",
        b"{\"sku\": \"a\"}\n{\"sku\": \"b\"}\n",
        &[],
    )
    .await;
    upload(
        &agency,
        "my orders.csv",
        b"sku,qty\na,1\nb,2\nc,3\nd,4\n",
        &[("items-per-batch", "2")],
    )
    .await;
    upload(&agency, "broken.csv", b"sku,qty\na,1\nb\n", &[]).await;
    upload(&agency, "bad-meta.json", b"[1]", &[("parallelism", "zero")]).await;

    let batches = eventually("five upload batches", Duration::from_secs(60), || async {
        let batches = batches_of(&boss).await;
        (batches.len() == 5).then_some(batches)
    })
    .await;
    let mut by_title = std::collections::HashMap::new();
    for task in &batches {
        let id = task["id"].as_str().unwrap();
        let batch = wait_for_batch(&boss, id).await;
        by_title.insert(task["title"].as_str().unwrap().to_owned(), batch);
    }
    let ok = |title: &str, total: u64| {
        let b = &by_title[title];
        assert_eq!(
            (b["status"].as_str(), b["totalItems"].as_u64()),
            (Some("completed"), Some(total)),
            "{b}"
        );
        assert_eq!(b["source"], "s3_trigger");
    };
    ok("Upload orders.json", 3);
    ok("Upload orders.jsonl", 2);
    ok("Upload my orders.csv", 4);
    assert_eq!(by_title["Upload orders.json"]["priority"], "high");
    assert_eq!(by_title["Upload my orders.csv"]["chunkCount"], 2);
    let broken = &by_title["Upload broken.csv"];
    assert_eq!(broken["status"], "failed");
    assert_eq!(broken["error"], "row 3: 1 fields, but the header has 2");
    let bad_meta = &by_title["Upload bad-meta.json"];
    assert_eq!(bad_meta["status"], "failed");
    assert!(
        bad_meta["error"]
            .as_str()
            .unwrap()
            .contains("x-amz-meta-parallelism"),
        "{bad_meta}"
    );
}

/// Sends the notification the bucket sent for `uploads/<agency>/<name>` again, `copies`
/// times, as a redelivery would, and waits until the trigger has consumed them.
async fn replay_upload_event(agency: &str, name: &str, copies: usize) {
    let clients = stack().clients().await;
    let key = format!("uploads/{agency}/{name}");
    let head = clients
        .s3
        .head_object()
        .bucket(stack().config.batch_bucket.clone())
        .key(&key)
        .send()
        .await
        .unwrap();
    let event = json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1", "eventTime": "2026-01-01T00:00:00.000Z",
        "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": "x"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {}, "s3": {"s3SchemaVersion": "1.0", "configurationId": "c",
            "bucket": {"name": stack().config.batch_bucket, "ownerIdentity": {"principalId": "x"}, "arn": "arn:aws:s3:::b"},
            "object": {"key": key, "size": head.content_length().unwrap_or_default(), "eTag": head.e_tag().unwrap_or_default().trim_matches('"'), "sequencer": "0"}}
    }]});
    for _ in 0..copies {
        clients
            .sqs
            .send_message()
            .queue_url(&stack().refs["BatchUploadsQueue"])
            .message_body(event.to_string())
            .send()
            .await
            .unwrap();
    }
    integration_tests::wait_until_drained(&stack().refs["BatchUploadsQueue"]).await;
}

/// A redelivered upload event finds its batch pending although the round's execution has
/// already ended (a start whose record was put back): the start answers
/// ExecutionAlreadyExists, a describe finds the execution closed, and the batch fails with the
/// reason. Before, ExecutionAlreadyExists counted as started, and the batch showed processing
/// under a closed execution for good.
#[tokio::test]
async fn a_redelivered_upload_whose_execution_already_ended_fails_its_batch() {
    let (agency, boss) = manager();
    boss.create_task(&json!({"title": "known"})).await;
    upload(&agency, "ended.json", b"[1, 2]", &[]).await;
    let id = eventually("the upload batch", Duration::from_secs(30), || async {
        let batches = batches_of(&boss).await;
        (batches.len() == 1).then(|| batches[0]["id"].as_str().unwrap().to_owned())
    })
    .await;
    assert_eq!(wait_for_batch(&boss, &id).await["status"], "completed");
    let clients = stack().clients().await;
    clients
        .dynamodb
        .update_item()
        .table_name(&stack().config.table_name)
        .key(
            "PK",
            AttributeValue::S(format!("AGENCY#{agency}#TASK#{id}")),
        )
        .key("SK", AttributeValue::S("BATCH".into()))
        .update_expression("SET #status = :pending")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":pending", AttributeValue::S("pending".into()))
        .send()
        .await
        .expect("show the batch pending");

    replay_upload_event(&agency, "ended.json", 1).await;
    let batch = eventually(
        "the batch to settle",
        integration_tests::scaled(Duration::from_secs(30)),
        || async {
            let batch = boss.get(&format!("/api/batches/{id}")).await.body;
            (batch["status"] != "pending" && batch["status"] != "processing").then_some(batch)
        },
    )
    .await;
    assert_eq!(batch["status"], "failed", "{batch}");
    let error = batch["error"].as_str().unwrap_or_default();
    assert!(error.contains("already ended (SUCCEEDED)"), "{batch}");
}

#[tokio::test]
async fn a_duplicate_upload_event_creates_no_second_batch_and_unknown_agencies_fail() {
    let (agency, boss) = manager();
    boss.create_task(&json!({"title": "known"})).await;
    upload(&agency, "once.json", b"[1, 2]", &[]).await;
    let first = eventually("the upload batch", Duration::from_secs(30), || async {
        let batches = batches_of(&boss).await;
        (batches.len() == 1).then(|| batches[0]["id"].as_str().unwrap().to_owned())
    })
    .await;
    wait_for_batch(&boss, &first).await;
    replay_upload_event(&agency, "once.json", 2).await;
    let batches = batches_of(&boss).await;
    assert_eq!(
        batches.len(),
        1,
        "a repeated event made another batch: {batches:?}"
    );

    // An agency this system has never seen gets a failed batch, not silence.
    let stranger = unique_agency("stranger");
    upload(&stranger, "who.json", b"[1]", &[]).await;
    let stranger_client = Client::as_user(&stranger, "boss", "manager");
    let batch = eventually("the stranger's batch", Duration::from_secs(30), || async {
        batches_of(&stranger_client).await.first().cloned()
    })
    .await;
    let view = wait_for_batch(&stranger_client, batch["id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "failed");
    assert!(
        view["error"].as_str().unwrap().contains("unknown agency"),
        "{view}"
    );
}

/// Issue 13 item 5 on DynamoDB: a batch left pending (a preparation cut off, an upload whose
/// message went to the DLQ) is found through its GSI3 entry and failed with the reason once it
/// is 30 minutes old, and it leaves the index. Before, it showed pending for good.
/// A batch whose preparation request was lost stays pending with no progress; the sweeper
/// asks for its preparation again, and the stack's own preparer then starts it and it runs.
#[tokio::test]
async fn the_sweeper_repairs_a_batch_whose_preparation_was_lost() {
    let isolated = integration_tests::isolated_stack("taskflow-stuck-batches").await;
    let clients = stack().clients().await;
    let config = integration_tests::worker_config(&isolated);
    let services = shared::services::Services::new(&config, &clients);
    // The same wiring with a preparation queue that does not exist: the request is lost.
    let worker = isolated.resources.function("WorkerFunction").unwrap();
    let broken = shared::config::Config::from_lookup(|k| match k {
        "BATCH_PREPARATION_QUEUE_URL" => worker.environment.get(k).map(|url| format!("{url}-gone")),
        _ => worker.environment.get(k).cloned(),
    })
    .unwrap();
    let broken = shared::services::Services::new(&broken, &clients);

    let agency = unique_agency("stuck");
    let boss = shared::domain::Caller {
        user: shared::domain::UserId::parse("boss").unwrap(),
        agency: shared::domain::AgencyId::parse(&agency).unwrap(),
        role: shared::domain::Role::Manager,
    };
    let err = broken
        .batches
        .create(&boss, &json!({"items": [1, 2]}))
        .await
        .expect_err("the request is refused");
    assert!(err.to_string().contains("sqs:SendMessage"), "{err}");
    let id = services
        .tasks
        .list(
            &boss,
            &shared::ports::TaskQuery {
                task_type: Some(shared::domain::TaskType::Batch),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the batch")
        .id;
    let stored = || async {
        services
            .batches
            .batches
            .get(&boss.agency, id)
            .await
            .unwrap()
            .unwrap()
    };
    // That batch was failed with the refusal; show it pending, as a lost request leaves it.
    let mut batch = stored().await;
    batch.status = shared::domain::BatchStatus::Pending;
    batch.error = None;
    batch.completed_at = None;
    services.batches.batches.put(&batch).await.unwrap();

    let now = chrono::Utc::now();
    let young = services
        .sweeper
        .sweep(now + chrono::Duration::minutes(20))
        .await
        .expect("sweep");
    assert_eq!(young.preparations_repaired, 0, "{young:?}");
    let old = services
        .sweeper
        .sweep(now + chrono::Duration::minutes(31))
        .await
        .expect("sweep");
    assert_eq!(old.preparations_repaired, 1, "{old:?}");
    // The stack's preparer takes the request: the batch starts and runs to its end.
    let done = eventually(
        "the repaired batch runs",
        Duration::from_secs(60),
        || async {
            let batch = stored().await;
            (batch.status == shared::domain::BatchStatus::Completed).then_some(batch)
        },
    )
    .await;
    assert_eq!((done.total_items, done.success_items), (2, 2));
    let again = services
        .sweeper
        .sweep(now + chrono::Duration::minutes(32))
        .await
        .expect("sweep");
    assert_eq!(
        (again.preparations_repaired, again.batches_failed),
        (0, 0),
        "it left the index: {again:?}"
    );
    isolated.stop().await;
}
