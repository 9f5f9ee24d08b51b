//! Per-agency quotas on DynamoDB (moto): the request bucket's conditional writes, and both
//! quotas end to end on a stack of their own with small limits set as template parameters.

use integration_tests::{isolated_options, stack, unique_agency, Client, Reply};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::domain::AgencyId;
use shared::ports::RequestBuckets;
use shared::store::DynamoRequestBuckets;

fn agency(prefix: &str) -> AgencyId {
    AgencyId::parse(&unique_agency(prefix)).expect("valid agency")
}

#[tokio::test]
async fn the_request_bucket_admits_its_burst_then_its_rate_even_to_concurrent_callers() {
    let clients = stack().clients().await;
    let buckets = DynamoRequestBuckets::new(clients.dynamodb.clone(), &stack().config.table_name);
    // 10 requests/s (one every 100 ms), bursts of 3.
    let (interval, tolerance) = (100_000, 200_000);
    let acme = agency("bucket");
    let t0 = 1_800_000_000_000_000;
    for n in 0..3 {
        let admitted = buckets.admit(&acme, t0, interval, tolerance, 1).await;
        assert_eq!(
            admitted.expect("dynamodb"),
            Ok(()),
            "request {n} of the burst"
        );
    }
    let refused = buckets.admit(&acme, t0, interval, tolerance, 1).await;
    assert_eq!(refused.expect("dynamodb"), Err(t0 + 300_000));
    // Another agency has its own bucket.
    let other = agency("bucket-other");
    assert_eq!(
        buckets
            .admit(&other, t0, interval, tolerance, 1)
            .await
            .expect("dynamodb"),
        Ok(())
    );
    // One token comes back every 100 ms, not sooner.
    let early = buckets
        .admit(&acme, t0 + 99_999, interval, tolerance, 1)
        .await;
    assert!(early.expect("dynamodb").is_err());
    let refilled = buckets
        .admit(&acme, t0 + 100_000, interval, tolerance, 1)
        .await;
    assert_eq!(refilled.expect("dynamodb"), Ok(()));

    // Many callers at the same instant (Lambda instances): exactly the burst passes.
    let later = t0 + 60_000_000;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (buckets, acme) = (buckets.clone(), acme.clone());
        calls.spawn(async move { buckets.admit(&acme, later, interval, tolerance, 1).await });
    }
    let results = calls.join_all().await;
    let admitted = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(admitted, 3, "{results:?}");

    // A lease takes several tokens in one write, and only as many as the bucket holds.
    let leased = agency("bucket-lease");
    let lease = |at, tokens| buckets.admit(&leased, at, interval, tolerance, tokens);
    assert_eq!(
        lease(t0, 4).await.expect("dynamodb"),
        Err(t0),
        "more than the burst"
    );
    assert_eq!(
        lease(t0, 2).await.expect("dynamodb"),
        Ok(()),
        "from a full bucket"
    );
    let short = lease(t0, 2).await.expect("dynamodb");
    assert_eq!(short, Err(t0 + 200_000), "one token left, two asked");
    assert_eq!(
        lease(t0, 1).await.expect("dynamodb"),
        Ok(()),
        "the last token"
    );
    assert_eq!(
        lease(t0 + 200_000, 2).await.expect("dynamodb"),
        Ok(()),
        "refilled by two"
    );
}

#[track_caller]
fn assert_quota_refusal(reply: &Reply, quota: &str, limit: u64) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], "quota_exceeded");
    assert_eq!(
        reply.body["error"]["fields"],
        json!({"quota": quota, "limit": limit})
    );
    let retry_after = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .expect("Retry-After in seconds");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
}

fn items(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"n": i})).collect())
}

#[tokio::test]
async fn small_quotas_from_template_parameters_answer_429() {
    let mut options = isolated_options("taskflow-quotas");
    options.parameter_overrides.extend(
        [
            ("QuotaRequestsPerSecond", "1"),
            ("QuotaRequestBurst", "4"),
            ("QuotaBatchItemsPerDay", "5"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let host = local_stack::LocalStack::start(options)
        .await
        .expect("stack with small quotas");

    // The request rate: the burst passes, then a 429 (a token may refill meanwhile). Requests go
    // in concurrent waves: on a loaded machine one request at a time can take as long as a token
    // takes to refill, and the bucket would never run dry.
    let flooder = Client::as_user(&unique_agency("flood"), "boss", "manager").at(&host.api_url());
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let refused = loop {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no 429 after {admitted} requests"
        );
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let flooder = flooder.clone();
            wave.spawn(async move { flooder.get("/api/tasks").await });
        }
        let mut refused = None;
        for reply in wave.join_all().await {
            match reply.status {
                StatusCode::OK => admitted += 1,
                _ => refused = refused.or(Some(reply)),
            }
        }
        if let Some(refused) = refused {
            break refused;
        }
    };
    // The burst, plus at most one token per second since the first request.
    let refills = started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        (4..=4 + refills).contains(&admitted),
        "{admitted} requests passed in {refills} s"
    );
    assert_quota_refusal(&refused, "requestRate", 1);
    // Another agency is unaffected.
    let bystander = Client::as_user(&unique_agency("calm"), "boss", "manager").at(&host.api_url());
    assert_eq!(bystander.get("/api/tasks").await.status, StatusCode::OK);

    // Batch items per day: 3 + 3 > 5 is refused and counts nothing, so 2 more still fit.
    let batcher = Client::as_user(&unique_agency("batcher"), "boss", "manager").at(&host.api_url());
    let first = batcher
        .post(
            "/api/batches",
            &json!({"title": "quota", "items": items(3)}),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let over = batcher
        .post(
            "/api/batches",
            &json!({"title": "quota", "items": items(3)}),
        )
        .await;
    assert_quota_refusal(&over, "batchItemsPerDay", 5);
    let rest = batcher
        .post(
            "/api/batches",
            &json!({"title": "quota", "items": items(2)}),
        )
        .await;
    assert_eq!(rest.status, StatusCode::ACCEPTED, "{}", rest.body);
    let listed = batcher.get("/api/tasks").await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        listed.body
    );
    host.stop().await;
}

/// A task as the API would store it: pending, version 1.
fn new_task(agency: &AgencyId, title: &str) -> shared::domain::Task {
    let now = chrono::Utc::now();
    serde_json::from_value(json!({
        "id": shared::domain::TaskId::generate().to_string(),
        "agencyId": agency.as_str(),
        "createdBy": "boss",
        "title": title,
        "type": "simple",
        "priority": "normal",
        "status": "pending",
        "version": 1,
        "createdAt": now,
        "updatedAt": now,
    }))
    .expect("a valid task")
}

/// `task` moved to `status` as the next version (what a service writes over `version - 1`).
fn moved(task: &shared::domain::Task, status: shared::domain::TaskStatus) -> shared::domain::Task {
    let mut next = task.clone();
    next.status = status;
    next.version += 1;
    next
}

#[tokio::test]
async fn the_open_tasks_counter_moves_with_each_transition_and_admits_exactly_the_ceiling() {
    use shared::domain::TaskStatus::*;
    use shared::ports::TaskStore;
    let clients = stack().clients().await;
    let store =
        shared::store::DynamoTaskStore::new(clients.dynamodb.clone(), &stack().config.table_name)
            .with_open_task_limit(5);
    let acme = agency("open");

    // 12 creations at once (Lambda instances): exactly the ceiling passes, over every shard.
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..12 {
        let (store, task) = (store.clone(), new_task(&acme, &format!("t{n}")));
        calls.spawn(async move { (store.insert(&task, &[], None).await, task) });
    }
    let results = calls.join_all().await;
    let mut open: Vec<_> = results
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, task)| task.clone())
        .collect();
    for (result, _) in &results {
        if let Err(err) = result {
            assert!(
                matches!(
                    err,
                    shared::error::AppError::QuotaExceeded {
                        quota: "openTasks",
                        limit: 5,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }
    assert_eq!(open.len(), 5, "{results:?}");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 5);

    // Open to open (claimed) moves nothing; closing frees one; a closed task archived frees
    // nothing more; an open task archived frees one.
    let claimed = moved(&open[0], InProgress);
    store.replace(&claimed, 1).await.expect("claimed");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 5);
    let completed = moved(&claimed, Completed);
    store.replace(&completed, 2).await.expect("completed");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 4);
    store
        .replace(&moved(&completed, Archived), 3)
        .await
        .expect("archived");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 4);
    store
        .replace(&moved(&open[1], Archived), 1)
        .await
        .expect("archived open");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 3);

    // A failed task reopened by a retry counts again, and is refused when the ceiling is full.
    let failed = moved(&open[2], Failed);
    store.replace(&failed, 1).await.expect("failed");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 2);
    for n in 0..3 {
        let task = new_task(&acme, &format!("refill {n}"));
        store.insert(&task, &[], None).await.expect("room");
        open.push(task);
    }
    let retry = moved(&failed, Queued);
    let refused = store.replace(&retry, 2).await.unwrap_err();
    assert!(
        matches!(refused, shared::error::AppError::QuotaExceeded { .. }),
        "{refused:?}"
    );
    assert_eq!(
        store
            .get(&acme, failed.id)
            .await
            .expect("read")
            .expect("kept")
            .status,
        Failed,
        "a refused reopening writes nothing"
    );
    // A stale write is still a version conflict, and moves nothing.
    let stale = store
        .replace(&moved(&open[3], Cancelled), 7)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, shared::error::AppError::VersionConflict { .. }),
        "{stale:?}"
    );
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 5);
    // Deleting an open task frees its slot; the retry then fits.
    assert!(store.delete(&acme, open[3].id).await.expect("deleted"));
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 4);
    store.replace(&retry, 2).await.expect("reopened");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 5);

    // Closing everything returns the counter to zero.
    for task in [&open[4], &open[5], &open[6], &open[7]] {
        store
            .replace(&moved(task, Cancelled), 1)
            .await
            .expect("cancelled");
    }
    store
        .replace(&moved(&retry, Cancelled), 3)
        .await
        .expect("cancelled");
    assert_eq!(store.open_tasks(&acme).await.expect("count"), 0);
}

#[tokio::test]
async fn a_small_open_tasks_ceiling_from_the_template_answers_429_until_a_task_closes() {
    let mut options = isolated_options("taskflow-open-tasks");
    options
        .parameter_overrides
        .extend([("QuotaOpenTasks", "3")].map(|(k, v)| (k.to_owned(), v.to_owned())));
    let host = local_stack::LocalStack::start(options)
        .await
        .expect("stack with a small open-tasks ceiling");
    let boss = Client::as_user(&unique_agency("ceiling"), "boss", "manager").at(&host.api_url());
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = boss
            .post("/api/tasks", &json!({"title": format!("t{n}")}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        ids.push(reply.body["id"].as_str().expect("id").to_owned());
    }
    let over = boss
        .post("/api/tasks", &json!({"title": "one too many"}))
        .await;
    assert_quota_refusal(&over, "openTasks", 3);
    // Another agency has its own ceiling.
    let other = Client::as_user(&unique_agency("other"), "boss", "manager").at(&host.api_url());
    let reply = other
        .post("/api/tasks", &json!({"title": "elsewhere"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    // Cancelling one frees its slot.
    let cancelled = boss
        .post(&format!("/api/tasks/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    let reply = boss
        .post("/api/tasks", &json!({"title": "fits again"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let over = boss
        .post("/api/tasks", &json!({"title": "full again"}))
        .await;
    assert_quota_refusal(&over, "openTasks", 3);
    host.stop().await;
}

/// A new open task as the API would write it (queued, automated).
fn open_task(agency: &AgencyId) -> shared::domain::Task {
    let now = chrono::Utc::now();
    serde_json::from_value(json!({
        "id": shared::domain::TaskId::generate().to_string(),
        "agencyId": agency.as_str(),
        "createdBy": "boss",
        "title": "counted",
        "type": "simple",
        "priority": "normal",
        "status": "queued",
        "version": 1,
        "createdAt": now,
        "updatedAt": now,
    }))
    .expect("a task")
}

/// Writes `task` as its next version in `status`.
async fn write_status(
    store: &shared::store::DynamoTaskStore,
    task: &mut shared::domain::Task,
    status: shared::domain::TaskStatus,
) -> Result<(), shared::error::AppError> {
    let read = task.version;
    task.status = status;
    task.touch(chrono::Utc::now());
    shared::ports::TaskStore::replace(store, task, read).await
}

/// The open-tasks counter moves with single-item writes, not transactions (which bill
/// twice): an opening costs its task write plus one update, a closing the same, and a write
/// that neither opens nor closes only its put. A refused write gives its place back.
#[tokio::test]
async fn open_tasks_move_with_single_item_writes_and_a_refused_write_gives_its_place_back() {
    use shared::domain::TaskStatus::{Completed, Failed, InProgress, Queued};
    use shared::ports::{IdempotencyRecord, InsertOutcome, TaskStore};
    let clients = stack().clients().await;
    let (dynamodb, requests) = integration_tests::requests::counted_dynamodb(&clients.dynamodb);
    let table = &stack().config.table_name;
    // Each shard's share of 1,000 has room: an opening takes one update.
    let store =
        shared::store::DynamoTaskStore::new(dynamodb.clone(), table).with_open_task_limit(1_000);
    let tight = shared::store::DynamoTaskStore::new(dynamodb, table).with_open_task_limit(2);
    let counted = shared::store::DynamoTaskStore::new(clients.dynamodb.clone(), table);
    let acme = agency("open-count");

    let mut task = open_task(&acme);
    let created = store.insert(&task, &[], None).await.expect("insert");
    assert!(matches!(created, InsertOutcome::Inserted));
    assert_eq!(requests.take(), ["UpdateItem", "PutItem"]);
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 1);

    write_status(&store, &mut task, InProgress).await.unwrap();
    assert_eq!(requests.take(), ["PutItem"]);
    write_status(&store, &mut task, Completed).await.unwrap();
    assert_eq!(requests.take(), ["PutItem", "UpdateItem"]);
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 0);

    // A create whose idempotency key was used already is refused: its place is given back.
    let record = IdempotencyRecord {
        key: "once".into(),
        request_hash: "h".into(),
        response: json!({"status": 201}),
        created_at: chrono::Utc::now(),
    };
    let first = open_task(&acme);
    store.insert(&first, &[], Some(&record)).await.unwrap();
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 1);
    let replay = store
        .insert(&open_task(&acme), &[], Some(&record))
        .await
        .unwrap();
    assert!(matches!(replay, InsertOutcome::AlreadyDone(_)));
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 1);

    // Reopening (a retry of a failed task) takes a place before its write. (The store first
    // takes the stored task for open, as nearly every write finds it: one refused put.)
    let mut failed = open_task(&acme);
    store.insert(&failed, &[], None).await.unwrap();
    write_status(&store, &mut failed, Failed).await.unwrap();
    requests.take();
    write_status(&store, &mut failed, Queued).await.unwrap();
    assert_eq!(
        requests.take(),
        ["PutItem", "GetItem", "UpdateItem", "PutItem"]
    );
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 2);

    // At the ceiling an opening is refused before anything is written (an agency of its
    // own: the shards' shares depend on the limit).
    let small = agency("open-ceiling");
    for _ in 0..2 {
        tight.insert(&open_task(&small), &[], None).await.unwrap();
    }
    requests.take();
    let refused = tight
        .insert(&open_task(&small), &[], None)
        .await
        .unwrap_err();
    assert_eq!(refused.status_code(), 429, "{refused}");
    assert!(
        requests.take().iter().all(|op| op == "UpdateItem"),
        "only the counter's shards were tried"
    );
    assert_eq!(counted.open_tasks(&small).await.unwrap(), 2);
    // A stale write that would reopen is refused and gives its place back too.
    write_status(&store, &mut failed, Failed).await.unwrap();
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 1);
    let mut stale = failed.clone();
    write_status(&store, &mut failed, Failed).await.unwrap();
    let conflict = write_status(&store, &mut stale, Queued).await.unwrap_err();
    assert_eq!(conflict.status_code(), 409, "{conflict}");
    assert_eq!(counted.open_tasks(&acme).await.unwrap(), 1);
}
