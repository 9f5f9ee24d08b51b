//! Use-case rules checked against an in-memory store behind the same port.

use super::*;
use crate::domain::{AgencyId, Priority, Role, TaskType, UserId};
use crate::testing::MemoryWorld;
use serde_json::json;

fn service() -> TaskService {
    MemoryWorld::new().services().tasks
}

fn caller(user: &str, agency: &str, role: Role) -> Caller {
    Caller {
        user: UserId::parse(user).unwrap(),
        agency: AgencyId::parse(agency).unwrap(),
        role,
    }
}

fn id_of(created: &Created) -> TaskId {
    TaskId::parse(created.task["id"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn full_lifecycle_by_manager_and_assignee() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let worker = caller("w1", "a1", Role::Member);
    let created = svc
        .create(&boss, &json!({"title": "Ship"}), None)
        .await
        .unwrap();
    let id = id_of(&created);
    assert_eq!(created.task["status"], "pending");

    let t = svc
        .assign(&boss, id, &AssignInput::To(worker.user.clone()), None)
        .await
        .unwrap();
    assert_eq!((t.status, t.version), (TaskStatus::Assigned, 2));
    let t = svc.start(&worker, id, Some(2)).await.unwrap();
    assert!(t.started_at.is_some());
    let t = svc
        .complete(
            &worker,
            id,
            &CompleteInput::Succeeded(Some(json!(42))),
            None,
        )
        .await
        .unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(t.result, Some(json!(42)));
    assert!(t.completed_at.is_some());
}

#[tokio::test]
async fn roles_are_enforced() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let member = caller("m1", "a1", Role::Member);
    let err = svc
        .create(&member, &json!({"title": "x"}), None)
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 403);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x", "assignedTo": "w1"}), None)
            .await
            .unwrap(),
    );
    // Not the assignee.
    assert_eq!(
        svc.start(&member, id, None)
            .await
            .unwrap_err()
            .status_code(),
        403
    );
    assert_eq!(
        svc.start(&boss, id, None).await.unwrap_err().status_code(),
        403
    );
}

#[tokio::test]
async fn other_agencies_see_nothing() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let intruder = caller("boss", "a2", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    assert_eq!(svc.get(&intruder, id).await.unwrap_err().status_code(), 404);
    assert_eq!(
        svc.archive(&intruder, id, None)
            .await
            .unwrap_err()
            .status_code(),
        404
    );
    assert_eq!(
        svc.get(&boss, id).await.unwrap().status,
        TaskStatus::Pending
    );
}

#[tokio::test]
async fn stale_if_match_is_a_conflict_and_changes_nothing() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    let patch = TaskPatch::parse(&json!({"title": "y"})).unwrap();
    svc.update(&boss, id, &patch, Some(1)).await.unwrap();
    let err = svc
        .update(
            &boss,
            id,
            &TaskPatch::parse(&json!({"title": "z"})).unwrap(),
            Some(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        AppError::VersionConflict {
            expected: 1,
            current: 2
        }
    ));
    assert_eq!(svc.get(&boss, id).await.unwrap().title.as_str(), "y");
}

#[tokio::test]
async fn idempotent_create_replays_and_detects_key_reuse() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let body = json!({"title": "once"});
    let first = svc.create(&boss, &body, Some("k1")).await.unwrap();
    let again = svc.create(&boss, &body, Some("k1")).await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.task, again.task);
    let err = svc
        .create(&boss, &json!({"title": "other"}), Some("k1"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 422);
}

#[tokio::test]
async fn invalid_transition_names_states() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    svc.archive(&boss, id, None).await.unwrap();
    let err = svc
        .assign(
            &boss,
            id,
            &AssignInput::To(UserId::parse("w").unwrap()),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot move task from 'archived' to 'assigned'"
    );
}

#[tokio::test]
async fn attachments_are_listed_and_scoped_to_one_key() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let id = id_of(
        &svc.create(&boss, &json!({"title": "x"}), None)
            .await
            .unwrap(),
    );
    let input =
        AttachmentInput::parse(&json!({"fileName": "a.pdf", "contentType": "application/pdf"}))
            .unwrap();
    let added = svc.add_attachment(&boss, id, &input).await.unwrap();
    assert!(added.upload_url.ends_with(&added.attachment.key));
    assert!(added
        .attachment
        .key
        .starts_with(&format!("attachments/a1/{id}/")));
    assert_eq!(
        svc.get(&boss, id).await.unwrap().attachments,
        vec![added.attachment]
    );
}

fn query(f: impl FnOnce(&mut TaskQuery)) -> TaskQuery {
    let mut q = TaskQuery {
        limit: 50,
        ..TaskQuery::default()
    };
    f(&mut q);
    q
}

#[tokio::test]
async fn list_filters_pages_newest_first_and_hides_archived() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let other = caller("boss", "a2", Role::Manager);
    let mut ids = Vec::new();
    for body in [
        json!({"title": "a", "priority": "high", "dueAt": "2030-01-01T00:00:00Z"}),
        json!({"title": "b", "assignedTo": "w1"}),
        json!({"title": "c", "type": "batch", "priority": "high"}),
        json!({"title": "d"}),
    ] {
        ids.push(id_of(&svc.create(&boss, &body, None).await.unwrap()));
        // ULIDs made within one millisecond are not ordered by creation.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    svc.create(&other, &json!({"title": "elsewhere"}), None)
        .await
        .unwrap();
    svc.archive(&boss, ids[3], None).await.unwrap();

    let titles = |page: &Page<Task>| -> Vec<String> {
        page.items
            .iter()
            .map(|t| t.title.as_str().to_owned())
            .collect()
    };
    let all = svc.list(&boss, &query(|_| {})).await.unwrap();
    assert_eq!(titles(&all), ["c", "b", "a"]);
    assert_eq!(all.next_cursor, None);
    let with_archived = svc
        .list(&boss, &query(|q| q.include_archived = true))
        .await
        .unwrap();
    assert_eq!(titles(&with_archived), ["d", "c", "b", "a"]);
    let archived = svc
        .list(&boss, &query(|q| q.status = Some(TaskStatus::Archived)))
        .await
        .unwrap();
    assert_eq!(titles(&archived), ["d"]);
    let high = svc
        .list(&boss, &query(|q| q.priority = Some(Priority::High)))
        .await
        .unwrap();
    assert_eq!(titles(&high), ["c", "a"]);
    let batch = svc
        .list(&boss, &query(|q| q.task_type = Some(TaskType::Batch)))
        .await
        .unwrap();
    assert_eq!(titles(&batch), ["c"]);
    let mine = svc
        .list(
            &boss,
            &query(|q| q.assignee = Some(UserId::parse("w1").unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(titles(&mine), ["b"]);
    let due = svc
        .list(
            &boss,
            &query(|q| q.due_before = Some("2031-01-01T00:00:00Z".parse().unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(titles(&due), ["a"]);

    let first = svc.list(&boss, &query(|q| q.limit = 2)).await.unwrap();
    assert_eq!(titles(&first), ["c", "b"]);
    let cursor = first.next_cursor.clone().expect("a second page");
    let second = svc
        .list(
            &boss,
            &query(|q| {
                q.limit = 2;
                q.cursor = Some(cursor);
            }),
        )
        .await
        .unwrap();
    assert_eq!(titles(&second), ["a"]);
    assert_eq!(second.next_cursor, None);
    let err = svc
        .list(&boss, &query(|q| q.cursor = Some("garbage".into())))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 400);
}

/// The steps view lists steps by their `order`, not by name (the store keeps them by name).
#[tokio::test]
async fn steps_come_back_in_their_order_not_by_name() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let body = json!({"title": "chain", "type": "multi_step", "steps": [
        {"name": "zeta", "order": 1},
        {"name": "alpha", "order": 2, "dependsOn": ["zeta"]},
        {"name": "mid", "order": 3, "dependsOn": ["alpha"]},
    ]});
    let id = id_of(&svc.create(&boss, &body, None).await.unwrap());
    let (_, steps) = svc.steps(&boss, id).await.unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
}

#[tokio::test]
async fn steps_are_stored_in_order_and_removed_with_the_task() {
    let svc = service();
    let boss = caller("boss", "a1", Role::Manager);
    let body = json!({"title": "chain", "type": "multi_step", "steps": [
        {"name": "publish", "order": 2, "dependsOn": ["build"]},
        {"name": "build", "order": 1, "config": {"input": {"target": "x"}}},
    ]});
    let id = id_of(&svc.create(&boss, &body, None).await.unwrap());
    let (task, steps) = svc.steps(&boss, id).await.unwrap();
    assert_eq!(task.id, id);
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build", "publish"]);
    assert_eq!(steps[0].config, json!({"input": {"target": "x"}}));
    assert_eq!(steps[1].depends_on, ["build"]);
    assert!(steps.iter().all(|s| s.status == StepStatus::Pending));
    svc.hard_delete(&boss, id, None).await.unwrap();
    assert_eq!(svc.steps(&boss, id).await.unwrap_err().status_code(), 404);
}

fn auto_chain() -> serde_json::Value {
    json!({"title": "chain", "type": "multi_step", "autoDispatch": true, "steps": [
        {"name": "build"},
        {"name": "publish", "dependsOn": ["build"]},
    ]})
}

#[tokio::test]
async fn an_auto_dispatched_chain_replies_with_the_task_as_stored() {
    let world = MemoryWorld::new();
    let svc = world.services().tasks;
    let boss = caller("boss", "a1", Role::Manager);
    let created = svc.create(&boss, &auto_chain(), Some("k1")).await.unwrap();
    let stored = svc.get(&boss, id_of(&created)).await.unwrap();
    assert_eq!(created.task["status"], "in_progress");
    assert_eq!(created.task, serde_json::to_value(&stored).unwrap());
    let started = world.orchestrator.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    let (name, input) = &started[0];
    assert_eq!(
        stored.execution_arn.as_deref(),
        Some(world.orchestrator.execution_arn(name).as_str())
    );
    // Two automated waves: one segment, the state machine's shortest route.
    assert_eq!(input["route"], "one_segment");
    assert_eq!(
        (
            &input["segment"]["firstWave"],
            &input["segment"]["lastWave"]
        ),
        (&json!("0"), &json!("1"))
    );
    assert_eq!(input["segment"]["finish"], "yes");
    // A replay shows the same, and starts nothing new.
    let again = svc.create(&boss, &auto_chain(), Some("k1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.task, created.task);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_chain_that_cannot_start_leaves_nothing_behind_and_its_key_free() {
    let world = MemoryWorld::new();
    let svc = world.services().tasks;
    let boss = caller("boss", "a1", Role::Manager);
    world
        .orchestrator
        .refuse_starts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = svc
        .create(&boss, &auto_chain(), Some("k1"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503);
    assert!(world.store.all_tasks().is_empty(), "the task was removed");

    world
        .orchestrator
        .refuse_starts
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let retried = svc.create(&boss, &auto_chain(), Some("k1")).await.unwrap();
    assert!(!retried.replayed, "the key was freed, so the retry runs");
    assert_eq!(retried.task["status"], "in_progress");
    assert_eq!(world.store.all_tasks().len(), 1);
}

#[tokio::test]
async fn starting_a_chain_that_cannot_start_puts_the_task_back() {
    let world = MemoryWorld::new();
    let svc = world.services().tasks;
    let boss = caller("boss", "a1", Role::Manager);
    let mut body = auto_chain();
    body["autoDispatch"] = json!(false);
    let id = id_of(&svc.create(&boss, &body, None).await.unwrap());
    world
        .orchestrator
        .refuse_starts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = svc.start(&boss, id, None).await.unwrap_err();
    assert_eq!(err.status_code(), 503);
    let task = svc.get(&boss, id).await.unwrap();
    assert_eq!(task.status, TaskStatus::Pending);
    assert!(task.execution_arn.is_none() && task.dispatch_id.is_none());
    assert_eq!(task.version, 3, "created, started, put back");

    world
        .orchestrator
        .refuse_starts
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let started = svc.start(&boss, id, None).await.unwrap();
    assert_eq!(started.status, TaskStatus::InProgress);
    assert_eq!(svc.get(&boss, id).await.unwrap(), started);
}

/// A start whose reply is lost (the request landed, the answer did not) is resolved by
/// describing the execution's name: it runs, so the task stays, in progress under it.
#[tokio::test]
async fn a_chain_whose_start_reply_is_lost_is_kept_running() {
    use std::sync::atomic::Ordering::SeqCst;
    let world = MemoryWorld::new();
    let svc = world.services().tasks;
    let boss = caller("boss", "a1", Role::Manager);
    world.orchestrator.lose_start_replies.store(true, SeqCst);
    let created = svc.create(&boss, &auto_chain(), Some("k1")).await.unwrap();
    assert_eq!(created.task["status"], "in_progress");
    let id = id_of(&created);
    let task = svc.get(&boss, id).await.unwrap();
    assert_eq!(task.status, TaskStatus::InProgress, "not undone");
    let started = world.orchestrator.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1);
    assert_eq!(
        task.execution_arn.as_deref(),
        Some(world.orchestrator.execution_arn(&started[0].0).as_str())
    );

    // The same for a chain started later by hand: not put back while its execution runs.
    let mut body = auto_chain();
    body["autoDispatch"] = json!(false);
    let id = id_of(&svc.create(&boss, &body, None).await.unwrap());
    let started = svc.start(&boss, id, None).await.unwrap();
    assert_eq!(started.status, TaskStatus::InProgress);
    assert_eq!(svc.get(&boss, id).await.unwrap(), started);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 2);
}

/// When neither the start nor a describe answers, the chain may be running: its task is
/// kept in progress (its steps need it so) and the caller gets a 503 saying so.
#[tokio::test]
async fn a_chain_whose_start_cannot_be_resolved_is_not_undone() {
    use std::sync::atomic::Ordering::SeqCst;
    let world = MemoryWorld::new();
    let svc = world.services().tasks;
    let boss = caller("boss", "a1", Role::Manager);
    world.orchestrator.lose_start_replies.store(true, SeqCst);
    world.orchestrator.refuse_describes.store(true, SeqCst);
    let err = svc
        .create(&boss, &auto_chain(), Some("k1"))
        .await
        .unwrap_err();
    assert_eq!(err.status_code(), 503);
    assert!(err.to_string().contains("may not have started"), "{err}");
    let tasks = world.store.all_tasks();
    assert_eq!(tasks.len(), 1, "kept: its execution runs");
    assert_eq!(tasks[0].status, TaskStatus::InProgress);
    // The client's retry with its key replays the task instead of starting a second chain.
    world.orchestrator.refuse_describes.store(false, SeqCst);
    world.orchestrator.lose_start_replies.store(false, SeqCst);
    let again = svc.create(&boss, &auto_chain(), Some("k1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);

    // Started by hand: not put back either.
    let mut body = auto_chain();
    body["autoDispatch"] = json!(false);
    let id = id_of(&svc.create(&boss, &body, None).await.unwrap());
    world.orchestrator.lose_start_replies.store(true, SeqCst);
    world.orchestrator.refuse_describes.store(true, SeqCst);
    assert_eq!(
        svc.start(&boss, id, None).await.unwrap_err().status_code(),
        503
    );
    assert_eq!(
        svc.get(&boss, id).await.unwrap().status,
        TaskStatus::InProgress
    );
}
