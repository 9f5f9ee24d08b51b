//! Batch starts that fail, against the in-memory ports: nothing is left pending.

use crate::domain::{AgencyId, BatchStatus, Caller, Role, TaskId, TaskStatus, UserId};
use crate::ports::{BatchStore, ObjectStore, Orchestrator, TaskStore};
use crate::testing::MemoryWorld;
use serde_json::json;
use std::sync::atomic::Ordering;

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

#[tokio::test]
async fn a_batch_that_cannot_start_is_failed_with_the_reason() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    world
        .orchestrator
        .refuse_starts
        .store(true, Ordering::SeqCst);
    let err = batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503);

    let task = world.store.all_tasks().pop().expect("the batch's task");
    let batch = world
        .batches
        .get(&task.agency_id, task.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    assert!(
        batch.error.as_deref().unwrap().contains("could not start"),
        "{:?}",
        batch.error
    );
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, batch.error);
    let retry = batches.retry_failed(&boss(), task.id).await.unwrap_err();
    assert_eq!(retry.status_code(), 409);
    assert!(retry.to_string().contains("never ran"), "{retry}");
}

/// The batch is recorded as processing before its execution starts: when that write fails,
/// nothing is started (a started execution would find its batch pending, and every chunk would
/// refuse to run), and the batch is failed with the reason.
#[tokio::test]
async fn a_batch_whose_processing_mark_fails_never_starts() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    world.batches.refuse_next_put.store(true, Ordering::SeqCst);
    let err = batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
    let task = world.store.all_tasks().pop().expect("the batch's task");
    assert_eq!(task.status, TaskStatus::Failed);
    let batch = world
        .batches
        .get(&task.agency_id, task.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
}

#[tokio::test]
async fn a_started_batch_is_already_processing_under_its_execution() {
    let world = MemoryWorld::new();
    let view = world
        .services()
        .batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap();
    let started = world.orchestrator.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    let batch = world
        .batches
        .get(&boss().agency, view.batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Processing);
    assert_eq!(
        batch.execution_arn.as_deref(),
        Some(world.orchestrator.execution_arn(&started[0].0).as_str())
    );
}

#[tokio::test]
async fn a_retry_round_that_cannot_start_leaves_the_batch_as_it_was() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    let view = batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap();
    let id = view.batch.id;
    // Its round ended with one failed item.
    let mut batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    batch.status = BatchStatus::Failed;
    batch.failed_items = 1;
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

    world
        .orchestrator
        .refuse_starts
        .store(true, Ordering::SeqCst);
    let err = batches.retry_failed(&boss(), id).await.unwrap_err();
    assert_eq!(err.status_code(), 503);
    let after = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, batch, "put back as it was before the round");

    // Once the engine answers again, the same retry goes through as round 1.
    world
        .orchestrator
        .refuse_starts
        .store(false, Ordering::SeqCst);
    let retried = batches.retry_failed(&boss(), id).await.unwrap();
    assert_eq!(
        (retried.batch.round, retried.batch.status),
        (1, BatchStatus::Processing)
    );
}

#[tokio::test]
async fn a_redelivered_upload_event_starts_the_batch_an_earlier_delivery_could_not() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    // The agency is known once it has a task.
    world
        .services()
        .tasks
        .create(&boss(), &json!({"title": "first"}), None)
        .await
        .unwrap();
    let key = "uploads/a1/orders.jsonl";
    world
        .objects
        .put(
            key,
            b"{\"n\": 1}\n{\"n\": 2}\n".to_vec(),
            "application/x-ndjson",
        )
        .await
        .unwrap();

    world
        .orchestrator
        .refuse_starts
        .store(true, Ordering::SeqCst);
    batches.create_from_upload(key, "v1").await.unwrap_err();
    let pending = world
        .store
        .all_tasks()
        .into_iter()
        .find(|t| t.task_type == crate::domain::TaskType::Batch)
        .expect("recorded before the start failed");
    let id: TaskId = pending.id;

    world
        .orchestrator
        .refuse_starts
        .store(false, Ordering::SeqCst);
    assert_eq!(
        batches.create_from_upload(key, "v1").await.unwrap(),
        Some(id),
        "the retry starts the recorded batch"
    );
    let batch = world
        .batches
        .get(&pending.agency_id, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Processing);
    assert_eq!(batch.total_items, 2);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
    // Once started, a further copy of the event does nothing.
    assert_eq!(batches.create_from_upload(key, "v1").await.unwrap(), None);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
    assert!(world
        .store
        .get(&pending.agency_id, id)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn a_pending_batch_cancelled_before_its_start_never_starts() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    world
        .services()
        .tasks
        .create(&boss(), &json!({"title": "first"}), None)
        .await
        .unwrap();
    let key = "uploads/a1/orders.json";
    world
        .objects
        .put(key, b"[1, 2]".to_vec(), "application/json")
        .await
        .unwrap();
    // Recorded, but its start failed: the upload event will come again.
    world
        .orchestrator
        .refuse_starts
        .store(true, Ordering::SeqCst);
    batches.create_from_upload(key, "v1").await.unwrap_err();
    world
        .orchestrator
        .refuse_starts
        .store(false, Ordering::SeqCst);
    let id = world
        .store
        .all_tasks()
        .into_iter()
        .find(|t| t.task_type == crate::domain::TaskType::Batch)
        .unwrap()
        .id;

    let task = world
        .services()
        .tasks
        .cancel(&boss(), id, None)
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::Cancelled);
    let batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Cancelled);
    assert!(
        world.orchestrator.stopped.lock().unwrap().is_empty(),
        "nothing ran"
    );

    assert_eq!(batches.create_from_upload(key, "v1").await.unwrap(), None);
    assert!(
        world.orchestrator.started.lock().unwrap().is_empty(),
        "the redelivered event starts nothing"
    );
    assert_eq!(
        world
            .batches
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap(),
        batch
    );
}

/// An upload recorded as a pending batch, whose first start was refused; returns its id.
async fn pending_upload(world: &MemoryWorld, key: &str) -> TaskId {
    world
        .services()
        .tasks
        .create(&boss(), &json!({"title": "first"}), None)
        .await
        .unwrap();
    world
        .objects
        .put(key, b"[1, 2]".to_vec(), "application/json")
        .await
        .unwrap();
    world
        .orchestrator
        .refuse_starts
        .store(true, Ordering::SeqCst);
    world
        .services()
        .batches
        .create_from_upload(key, "v1")
        .await
        .unwrap_err();
    world
        .orchestrator
        .refuse_starts
        .store(false, Ordering::SeqCst);
    world
        .store
        .all_tasks()
        .into_iter()
        .find(|t| t.task_type == crate::domain::TaskType::Batch)
        .unwrap()
        .id
}

/// A start whose reply is lost is resolved by describing the round's execution: it runs, so
/// the batch stays processing (before: failed, with its execution running and every chunk
/// refusing to run).
#[tokio::test]
async fn a_batch_whose_start_reply_is_lost_is_processing() {
    let world = MemoryWorld::new();
    world
        .orchestrator
        .lose_start_replies
        .store(true, Ordering::SeqCst);
    let view = world
        .services()
        .batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap();
    assert_eq!(view.batch.status, BatchStatus::Processing);
    let stored = world
        .batches
        .get(&boss().agency, view.batch.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, BatchStatus::Processing);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
}

/// ExecutionAlreadyExists for an execution that has already ended is not a start: a
/// redelivered upload event fails the batch with the reason instead of leaving it processing
/// under a closed execution that will never finalize it.
#[tokio::test]
async fn a_redelivered_upload_whose_execution_already_ended_fails_the_batch() {
    let world = MemoryWorld::new();
    let id = pending_upload(&world, "uploads/a1/orders.json").await;
    // The round's execution ran and ended although the batch shows pending (a start whose
    // record was put back).
    world
        .orchestrator
        .executions
        .lock()
        .unwrap()
        .insert(format!("{id}-r0"), crate::ports::ExecutionStatus::Failed);
    let batches = world.services().batches;
    assert_eq!(
        batches
            .create_from_upload("uploads/a1/orders.json", "v1")
            .await
            .unwrap(),
        Some(id),
        "handled: no redelivery would change it"
    );
    let batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.status, BatchStatus::Failed);
    let error = batch.error.clone().unwrap();
    assert!(error.contains("already ended (FAILED)"), "{error}");
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());
}

/// When neither the start nor a describe answers, the round stays recorded as processing
/// (it may be running). The upload event's redelivery describes again: a running execution
/// is left alone, a missing one is started.
#[tokio::test]
async fn an_unresolved_upload_start_is_finished_by_the_redelivery() {
    for started_before in [true, false] {
        let world = MemoryWorld::new();
        let key = "uploads/a1/orders.json";
        let id = pending_upload(&world, key).await;
        let orchestrator = &world.orchestrator;
        orchestrator.refuse_describes.store(true, Ordering::SeqCst);
        if started_before {
            orchestrator
                .lose_start_replies
                .store(true, Ordering::SeqCst);
        } else {
            orchestrator.refuse_starts.store(true, Ordering::SeqCst);
        }
        let batches = world.services().batches;
        let err = batches.create_from_upload(key, "v1").await.unwrap_err();
        assert!(err.to_string().contains("may not have started"), "{err}");
        let batch = world
            .batches
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.status, BatchStatus::Processing, "not undone");

        orchestrator.refuse_describes.store(false, Ordering::SeqCst);
        orchestrator
            .lose_start_replies
            .store(false, Ordering::SeqCst);
        orchestrator.refuse_starts.store(false, Ordering::SeqCst);
        let again = batches.create_from_upload(key, "v1").await.unwrap();
        assert_eq!(again, (!started_before).then_some(id));
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
        let batch = world
            .batches
            .get(&boss().agency, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(batch.status, BatchStatus::Processing);
    }
}

/// A retry round whose start reply is lost runs: the batch shows the new round processing.
#[tokio::test]
async fn a_retry_round_whose_start_reply_is_lost_is_processing() {
    let world = MemoryWorld::new();
    let batches = world.services().batches;
    let id = batches
        .create(&boss(), &json!({"items": [1, 2, 3]}))
        .await
        .unwrap()
        .batch
        .id;
    let mut batch = world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap();
    batch.status = BatchStatus::Failed;
    batch.failed_items = 1;
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
    world
        .orchestrator
        .lose_start_replies
        .store(true, Ordering::SeqCst);
    let retried = batches.retry_failed(&boss(), id).await.unwrap();
    assert_eq!(
        (retried.batch.round, retried.batch.status),
        (1, BatchStatus::Processing)
    );
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 2);
}
