//! Batch creation and retry rounds record a pending batch and queue its preparation; the
//! preparer records the round and starts it. Starts that fail, against the in-memory ports:
//! nothing is left pending for good, and nothing starts twice.

use crate::domain::{AgencyId, BatchJob, BatchStatus, Caller, Role, TaskId, TaskStatus, UserId};
use crate::ports::{BatchStore, ObjectStore, Orchestrator, TaskStore};
use crate::service::Prepared;
use crate::testing::MemoryWorld;
use crate::AppError;
use serde_json::json;
use std::sync::atomic::Ordering;

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

async fn batch_of(world: &MemoryWorld, id: TaskId) -> BatchJob {
    world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .expect("the batch")
}

async fn prepare(world: &MemoryWorld) -> Vec<Result<Prepared, AppError>> {
    world
        .run_preparations(&world.services().batch_preparer)
        .await
}

/// Creates an inline batch of `n` items and runs its preparation to the start.
async fn started_batch(world: &MemoryWorld, n: usize) -> TaskId {
    let items: Vec<u64> = (0..n as u64).collect();
    let view = world
        .services()
        .batches
        .create(&boss(), &json!({"items": items, "itemsPerBatch": 2}))
        .await
        .unwrap();
    assert_eq!(
        prepare(world).await.pop().unwrap().unwrap(),
        Prepared::Started
    );
    view.batch.id
}

/// A finished batch whose item 1 failed.
async fn failed_batch(world: &MemoryWorld) -> BatchJob {
    let id = started_batch(world, 3).await;
    let mut batch = batch_of(world, id).await;
    batch.status = BatchStatus::Failed;
    batch.success_items = 2;
    batch.failed_items = 1;
    batch.processed_items = 3;
    world.batches.put(&batch).await.unwrap();
    world
        .batches
        .record_failures(
            &boss().agency,
            id,
            &[crate::domain::ItemFailure {
                index: 1,
                error: "boom".into(),
            }],
        )
        .await
        .unwrap();
    batch
}

#[tokio::test]
async fn a_new_batch_is_pending_until_its_preparation_starts_it() {
    let world = MemoryWorld::new();
    let view = world
        .services()
        .batches
        .create(&boss(), &json!({"items": [1, 2, 3], "itemsPerBatch": 2}))
        .await
        .unwrap();
    let id = view.batch.id;
    assert_eq!(view.batch.status, BatchStatus::Pending);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
    let input = format!("batches/a1/{id}/input.json");
    assert_eq!(world.objects.puts_of(&input), 1, "the items, stored once");

    assert_eq!(prepare(&world).await.len(), 1, "one preparation queued");
    let batch = batch_of(&world, id).await;
    assert_eq!(
        (batch.status, batch.total_items, batch.chunk_count),
        (BatchStatus::Processing, 3, 2)
    );
    assert_eq!(batch.preparation, None);
    let started = world.orchestrator.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    assert_eq!(
        batch.execution_arn.as_deref(),
        Some(world.orchestrator.execution_arn(&started[0].0).as_str())
    );
    let manifest: Vec<crate::domain::ManifestEntry> = serde_json::from_slice(
        &world
            .objects
            .get(started[0].1["manifestKey"].as_str().unwrap(), usize::MAX)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest
            .iter()
            .map(|m| (m.first, m.count))
            .collect::<Vec<_>>(),
        [(0, 2), (2, 1)]
    );
}

#[tokio::test]
async fn a_batch_whose_preparation_cannot_be_queued_is_failed_with_the_reason() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    world.preparations.refuse.store(true, Ordering::SeqCst);
    let err = batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503);

    let task = world.store.all_tasks().pop().expect("the batch's task");
    let batch = batch_of(&world, task.id).await;
    assert_eq!(batch.status, BatchStatus::Failed);
    assert!(
        batch
            .error
            .as_deref()
            .unwrap()
            .contains("could not be prepared"),
        "{:?}",
        batch.error
    );
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, batch.error);
    let retry = batches.retry_failed(&boss(), task.id).await.unwrap_err();
    assert_eq!(retry.status_code(), 409);
    assert!(retry.to_string().contains("never ran"), "{retry}");
}

#[tokio::test]
async fn a_source_with_nothing_uploaded_or_too_big_is_refused_at_once() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    let missing = batches
        .create(
            &boss(),
            &json!({"source": {"key": "inputs/a1/x/orders.csv"}}),
        )
        .await
        .unwrap_err();
    assert_eq!(missing.status_code(), 400);
    assert!(
        missing.to_string().contains("nothing was uploaded"),
        "{missing}"
    );

    let big = "inputs/a1/y/big.jsonl";
    let limit = crate::domain::batch_input::MAX_INPUT_BYTES;
    world
        .objects
        .put(big, vec![b'\n'; limit + 1], "application/octet-stream")
        .await
        .unwrap();
    let err = batches
        .create(&boss(), &json!({"source": {"key": big}}))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 400);
    assert!(err.to_string().contains("the limit is 67108864"), "{err}");
    assert!(world.store.all_tasks().is_empty(), "nothing recorded");
}

/// The batch is recorded as processing before its execution starts: when that write fails,
/// nothing starts (a started execution would find its batch pending, and every chunk would
/// refuse to run). The preparation is retried, and goes on from its written chunks.
#[tokio::test]
async fn a_batch_whose_processing_mark_fails_never_starts_until_the_retry() {
    let world = MemoryWorld::new();
    let id = world
        .services()
        .batches
        .create(&boss(), &json!({"items": [1, 2, 3], "itemsPerBatch": 1}))
        .await
        .unwrap()
        .batch
        .id;
    let requests = world.preparations.take();
    let preparer = world.services().batch_preparer;
    world.batches.refuse_next_put.store(true, Ordering::SeqCst);
    let far = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let err = preparer.prepare(&requests[0], far).await.unwrap_err();
    assert_eq!(err.status_code(), 503);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
    assert_eq!(batch_of(&world, id).await.status, BatchStatus::Pending);

    // SQS delivers the message again.
    assert_eq!(
        preparer.prepare(&requests[0], far).await.unwrap(),
        Prepared::Started
    );
    assert_eq!(batch_of(&world, id).await.status, BatchStatus::Processing);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
}

/// A start refused outright puts the round back to pending with every chunk saved: the
/// redelivery writes no chunk again, and starts it.
#[tokio::test]
async fn a_refused_start_is_made_by_the_redelivery_without_rewriting_chunks() {
    let world = MemoryWorld::new();
    let id = world
        .services()
        .batches
        .create(&boss(), &json!({"items": [1, 2, 3], "itemsPerBatch": 1}))
        .await
        .unwrap()
        .batch
        .id;
    let requests = world.preparations.take();
    let preparer = world.services().batch_preparer;
    let far = std::time::Instant::now() + std::time::Duration::from_secs(600);
    world
        .orchestrator
        .refuse_starts
        .store(true, Ordering::SeqCst);
    assert_eq!(
        preparer
            .prepare(&requests[0], far)
            .await
            .unwrap_err()
            .status_code(),
        503
    );
    let batch = batch_of(&world, id).await;
    assert_eq!(batch.status, BatchStatus::Pending);
    assert_eq!(batch.preparation.map(|p| p.chunks_written), Some(3));

    world
        .orchestrator
        .refuse_starts
        .store(false, Ordering::SeqCst);
    assert_eq!(
        preparer.prepare(&requests[0], far).await.unwrap(),
        Prepared::Started
    );
    for chunk in 0..3 {
        let key = format!("batches/a1/{id}/round-000/chunks/{chunk:05}.json");
        assert_eq!(world.objects.puts_of(&key), 1, "{key}");
    }
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_retry_round_is_pending_until_prepared_and_runs_only_the_failed_items() {
    let world = MemoryWorld::new();
    let batch = failed_batch(&world).await;
    let view = world
        .services()
        .batches
        .retry_failed(&boss(), batch.id)
        .await
        .unwrap();
    assert_eq!(
        (view.batch.round, view.batch.status),
        (1, BatchStatus::Pending)
    );
    assert_eq!(
        (
            view.batch.processed_items,
            view.batch.success_items,
            view.batch.failed_items
        ),
        (2, 2, 0),
        "the retried item is neither processed nor failed while it waits"
    );
    assert_eq!(
        prepare(&world).await.pop().unwrap().unwrap(),
        Prepared::Started
    );
    let after = batch_of(&world, batch.id).await;
    assert_eq!(
        (
            after.round,
            after.status,
            after.failed_items,
            after.chunk_count
        ),
        (1, BatchStatus::Processing, 1, 1)
    );
    let chunk: Vec<crate::domain::ChunkItem> = serde_json::from_slice(
        &world
            .objects
            .get(
                &format!("batches/a1/{}/round-001/chunks/00000.json", batch.id),
                usize::MAX,
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        chunk,
        [crate::domain::ChunkItem {
            index: 1,
            item: json!(1)
        }]
    );
}

/// Thousands of failures are read a page at a time, each round-0 chunk once.
#[tokio::test]
async fn a_retry_round_of_many_failures_reads_them_in_pages() {
    let world = MemoryWorld::new();
    let id = started_batch(&world, 2_500).await;
    let mut batch = batch_of(&world, id).await;
    batch.status = BatchStatus::Failed;
    world.batches.put(&batch).await.unwrap();
    // Every odd item failed: 1,250 failures, more than a page.
    let failures: Vec<_> = (0..2_500u64)
        .filter(|i| i % 2 == 1)
        .map(|index| crate::domain::ItemFailure {
            index,
            error: "boom".into(),
        })
        .collect();
    world
        .batches
        .record_failures(&boss().agency, id, &failures)
        .await
        .unwrap();
    world
        .services()
        .batches
        .retry_failed(&boss(), id)
        .await
        .unwrap();
    assert_eq!(
        prepare(&world).await.pop().unwrap().unwrap(),
        Prepared::Started
    );
    let after = batch_of(&world, id).await;
    assert_eq!((after.failed_items, after.chunk_count), (1_250, 625));
    let last: Vec<crate::domain::ChunkItem> = serde_json::from_slice(
        &world
            .objects
            .get(
                &format!("batches/a1/{id}/round-001/chunks/00624.json"),
                usize::MAX,
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        last.iter().map(|i| i.index).collect::<Vec<_>>(),
        [2_497, 2_499]
    );
}

#[tokio::test]
async fn a_retry_round_that_cannot_be_queued_leaves_the_batch_as_it_was() {
    let world = MemoryWorld::new();
    let batch = failed_batch(&world).await;
    let batches = world.services().batches;
    world.preparations.refuse.store(true, Ordering::SeqCst);
    let err = batches.retry_failed(&boss(), batch.id).await.unwrap_err();
    assert_eq!(err.status_code(), 503);
    assert_eq!(
        batch_of(&world, batch.id).await,
        batch,
        "put back as it was"
    );

    // Once SQS answers again, the same retry goes through as round 1.
    world.preparations.refuse.store(false, Ordering::SeqCst);
    let retried = batches.retry_failed(&boss(), batch.id).await.unwrap();
    assert_eq!(retried.batch.round, 1);
    assert_eq!(
        prepare(&world).await.pop().unwrap().unwrap(),
        Prepared::Started
    );
}

/// Records the agency (it is known once it has a task) and puts an upload; answers its key.
async fn uploaded(world: &MemoryWorld, name: &str, body: &[u8]) -> String {
    world
        .services()
        .tasks
        .create(&boss(), &json!({"title": "first"}), None)
        .await
        .unwrap();
    let key = format!("uploads/a1/{name}");
    world
        .objects
        .put(&key, body.to_vec(), "application/octet-stream")
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn an_upload_event_delivered_again_creates_nothing_and_starts_nothing_twice() {
    let world = MemoryWorld::new();
    let key = uploaded(&world, "orders.jsonl", b"{\"n\": 1}\n{\"n\": 2}\n").await;
    let batches = world.services().batches;
    let id = batches
        .create_from_upload(&key, "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch_of(&world, id).await.status, BatchStatus::Pending);
    // The same event again before the preparation ran: it asks again, creates nothing.
    assert_eq!(batches.create_from_upload(&key, "v1").await.unwrap(), None);
    let outcomes: Vec<Prepared> = prepare(&world)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(outcomes, [Prepared::Started, Prepared::Nothing]);
    let batch = batch_of(&world, id).await;
    assert_eq!(
        (batch.status, batch.total_items),
        (BatchStatus::Processing, 2)
    );
    // And again once it runs: still one batch, one start.
    assert_eq!(batches.create_from_upload(&key, "v1").await.unwrap(), None);
    prepare(&world).await;
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
    let batch_tasks = world
        .store
        .all_tasks()
        .into_iter()
        .filter(|t| t.task_type == crate::domain::TaskType::Batch)
        .count();
    assert_eq!(batch_tasks, 1);
}

#[tokio::test]
async fn a_malformed_upload_fails_its_batch_naming_where_and_starts_nothing() {
    let world = MemoryWorld::new();
    let key = uploaded(
        &world,
        "orders.jsonl",
        b"{\"n\": 1}\n{\"n\": 2}\nnot json\n",
    )
    .await;
    let id = world
        .services()
        .batches
        .create_from_upload(&key, "v1")
        .await
        .unwrap()
        .unwrap();
    let outcome = prepare(&world).await.pop().unwrap().unwrap();
    assert!(
        matches!(&outcome, Prepared::Failed(reason) if reason.starts_with("line 3: invalid JSON")),
        "{outcome:?}"
    );
    let batch = batch_of(&world, id).await;
    assert_eq!(batch.status, BatchStatus::Failed);
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_pending_batch_cancelled_before_its_preparation_never_starts() {
    let world = MemoryWorld::new();
    let key = uploaded(&world, "orders.json", b"[1, 2]").await;
    let id = world
        .services()
        .batches
        .create_from_upload(&key, "v1")
        .await
        .unwrap()
        .unwrap();
    let task = world
        .services()
        .tasks
        .cancel(&boss(), id, None)
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    let batch = batch_of(&world, id).await;
    assert_eq!(batch.status, BatchStatus::Cancelled);

    assert_eq!(
        prepare(&world).await.pop().unwrap().unwrap(),
        Prepared::Nothing
    );
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
    assert_eq!(batch_of(&world, id).await, batch);
}

/// ExecutionAlreadyExists for an execution that has already ended is not a start: the
/// batch fails with the reason instead of staying processing under a closed execution that
/// will never finalize it.
#[tokio::test]
async fn a_round_whose_execution_already_ended_fails_the_batch() {
    let world = MemoryWorld::new();
    let key = uploaded(&world, "orders.json", b"[1, 2]").await;
    let id = world
        .services()
        .batches
        .create_from_upload(&key, "v1")
        .await
        .unwrap()
        .unwrap();
    world
        .orchestrator
        .executions
        .lock()
        .unwrap()
        .insert(format!("{id}-r0"), crate::ports::ExecutionStatus::Failed);
    let outcome = prepare(&world).await.pop().unwrap().unwrap();
    assert!(matches!(outcome, Prepared::Failed(_)), "{outcome:?}");
    let batch = batch_of(&world, id).await;
    assert_eq!(batch.status, BatchStatus::Failed);
    let error = batch.error.clone().unwrap();
    assert!(error.contains("already ended (FAILED)"), "{error}");
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
}

/// When neither the start nor a describe answers, the round stays recorded as processing
/// (it may be running). The redelivery describes again: a running execution is left alone,
/// a missing one is started.
#[tokio::test]
async fn an_unresolved_start_is_finished_by_the_redelivery() {
    for started_before in [true, false] {
        let world = MemoryWorld::new();
        let id = world
            .services()
            .batches
            .create(&boss(), &json!({"items": [1, 2]}))
            .await
            .unwrap()
            .batch
            .id;
        let requests = world.preparations.take();
        let preparer = world.services().batch_preparer;
        let far = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let orchestrator = &world.orchestrator;
        orchestrator.refuse_describes.store(true, Ordering::SeqCst);
        if started_before {
            orchestrator
                .lose_start_replies
                .store(true, Ordering::SeqCst);
        } else {
            orchestrator.refuse_starts.store(true, Ordering::SeqCst);
        }
        let err = preparer.prepare(&requests[0], far).await.unwrap_err();
        assert!(err.to_string().contains("may not have started"), "{err}");
        assert_eq!(
            batch_of(&world, id).await.status,
            BatchStatus::Processing,
            "not undone"
        );

        orchestrator.refuse_describes.store(false, Ordering::SeqCst);
        orchestrator
            .lose_start_replies
            .store(false, Ordering::SeqCst);
        orchestrator.refuse_starts.store(false, Ordering::SeqCst);
        let again = preparer.prepare(&requests[0], far).await.unwrap();
        let expected = if started_before {
            Prepared::Nothing
        } else {
            Prepared::Started
        };
        assert_eq!(again, expected);
        assert_eq!(
            orchestrator.started.lock().unwrap().len(),
            1,
            "started exactly once (started before: {started_before})"
        );
        assert_eq!(
            orchestrator
                .executions
                .lock()
                .unwrap()
                .get(&format!("{id}-r0")),
            Some(&crate::ports::ExecutionStatus::Running)
        );
        assert_eq!(batch_of(&world, id).await.status, BatchStatus::Processing);
    }
}

/// A start whose reply is lost is resolved by describing the round's execution: it runs, so
/// the batch is processing (before: failed, with its execution running and every chunk
/// refusing to run). Retry rounds alike.
#[tokio::test]
async fn a_round_whose_start_reply_is_lost_is_processing() {
    let world = MemoryWorld::new();
    world
        .orchestrator
        .lose_start_replies
        .store(true, Ordering::SeqCst);
    let batch = failed_batch(&world).await;
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
    world
        .services()
        .batches
        .retry_failed(&boss(), batch.id)
        .await
        .unwrap();
    assert_eq!(
        prepare(&world).await.pop().unwrap().unwrap(),
        Prepared::Started
    );
    let after = batch_of(&world, batch.id).await;
    assert_eq!((after.round, after.status), (1, BatchStatus::Processing));
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 2);
}

/// Once items have settled, a running batch estimates the time left from its rate so far:
/// 25 of 100 items in 10 s leaves about 30 s. Before any item settles there is no rate.
#[tokio::test]
async fn a_running_batch_estimates_its_time_left_from_its_rate() {
    let world = MemoryWorld::new();
    let id = started_batch(&world, 100).await;
    let mut batch = batch_of(&world, id).await;
    batch.started_at = Some(chrono::Utc::now() - chrono::Duration::seconds(10));
    world.batches.put(&batch).await.unwrap();
    let batches = world.services().batches;
    assert_eq!(batches.get(&boss(), id).await.unwrap().eta_seconds, None);

    world
        .batches
        .start_chunk(&boss().agency, id, 0, 0, "attempt-1")
        .await
        .unwrap();
    let counts = crate::domain::ChunkCounts {
        processed: 25,
        success: 25,
        failed: 0,
    };
    assert!(world
        .batches
        .add_counts(
            &boss().agency,
            id,
            0,
            0,
            "attempt-1",
            counts,
            &crate::domain::ChunkDone::default()
        )
        .await
        .unwrap());
    let view = batches.get(&boss(), id).await.unwrap();
    assert_eq!(view.progress_percent, 25.0);
    let eta = view.eta_seconds.expect("a rate is known");
    assert!((30..=31).contains(&eta), "{eta}");
}
