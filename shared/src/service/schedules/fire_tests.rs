//! Firings against in-memory ports: the linked task once per firing time, each overlap
//! policy, what a paused, deleted or out-of-window schedule does, chains.

use super::tests::{at, body, caller, world, World};
use super::*;
use crate::domain::schedule::RunOutcome;
use crate::domain::{AgencyId, Role, TaskStatus};
use crate::testing::{MemoryScheduleStore, MemoryWorld, RecordingTrigger};
use serde_json::json;

async fn fired(w: &World, id: ScheduleId, when: &str) -> ScheduleRun {
    match w
        .svc
        .fire(&AgencyId::parse("a1").unwrap(), id, at(when))
        .await
        .unwrap()
    {
        Fired::Run(run) => run,
        other => panic!("expected a run, got {other:?}"),
    }
}

#[tokio::test]
async fn a_firing_creates_a_linked_task_once_however_often_it_repeats() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("allow"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let again = fired(&w, id, "2026-12-07T06:00:00Z").await;
    assert_eq!(first.task_id, again.task_id);
    let task = w
        .svc
        .tasks
        .get(&boss, first.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(task.title.as_str(), "Reconcile");
    let metadata = task.metadata.as_map();
    assert_eq!(metadata["scheduleId"], json!(id.to_string()));
    assert_eq!(metadata["scheduledAt"], json!("2026-12-07T06:00:00Z"));
    assert_eq!(metadata["team"], json!("ap"));
    let page = w.svc.tasks.list(&boss, &Default::default()).await.unwrap();
    assert_eq!(page.items.len(), 1, "one task for one firing time");
    let view = w.svc.get(&boss, id).await.unwrap();
    assert_eq!(view.last_runs, [again]);
}

#[tokio::test]
async fn overlap_skip_records_a_skip_while_the_last_task_is_open() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("skip"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let second = fired(&w, id, "2026-12-08T06:00:00Z").await;
    assert_eq!(second.outcome, RunOutcome::Skipped);
    assert_eq!(
        (second.task_id, second.previous_task_id),
        (None, first.task_id)
    );
    // However many firings it skips, each still finds the open task.
    for day in 10..=30 {
        let skipped = fired(&w, id, &format!("2026-12-{day}T06:00:00Z")).await;
        assert_eq!(skipped.outcome, RunOutcome::Skipped, "day {day}");
        assert_eq!(skipped.previous_task_id, first.task_id, "day {day}");
    }
    // Once the task ends, the next firing creates again.
    w.svc
        .tasks
        .cancel(&boss, first.task_id.unwrap(), None)
        .await
        .unwrap();
    let third = fired(&w, id, "2026-12-31T06:00:00Z").await;
    assert_eq!(third.outcome, RunOutcome::Created);
    assert!(third.task_id.is_some() && third.task_id != first.task_id);
}

#[tokio::test]
async fn overlap_allow_creates_beside_the_open_task() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("allow"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let second = fired(&w, id, "2026-12-08T06:00:00Z").await;
    assert_eq!(second.outcome, RunOutcome::Created);
    assert_eq!(second.previous_task_id, first.task_id);
    let open = w
        .svc
        .tasks
        .get(&boss, first.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(open.status, TaskStatus::Pending);
}

#[tokio::test]
async fn overlap_cancel_previous_cancels_then_creates() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let id = w
        .svc
        .create(&boss, &body("cancel_previous"))
        .await
        .unwrap()
        .schedule
        .id;
    let first = fired(&w, id, "2026-12-07T06:00:00Z").await;
    let second = fired(&w, id, "2026-12-08T06:00:00Z").await;
    assert_eq!(second.outcome, RunOutcome::Created);
    assert_eq!(second.previous_task_id, first.task_id);
    let old = w
        .svc
        .tasks
        .get(&boss, first.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(old.status, TaskStatus::Cancelled);
    let new = w
        .svc
        .tasks
        .get(&boss, second.task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(new.status, TaskStatus::Pending);
}

#[tokio::test]
async fn paused_deleted_and_out_of_window_firings_do_nothing() {
    let w = world(10);
    let boss = caller(Role::Manager);
    let mut windowed = body("allow");
    windowed["endAt"] = json!("2026-12-08T00:00:00Z");
    let id = w.svc.create(&boss, &windowed).await.unwrap().schedule.id;
    let agency = AgencyId::parse("a1").unwrap();
    let late = w
        .svc
        .fire(&agency, id, at("2026-12-08T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(late, Fired::Ignored(_)), "{late:?}");
    w.svc
        .set_state(&boss, id, ScheduleState::Paused, None)
        .await
        .unwrap();
    let paused = w
        .svc
        .fire(&agency, id, at("2026-12-07T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(paused, Fired::Ignored(_)), "{paused:?}");
    let gone = w
        .svc
        .fire(&agency, ScheduleId::generate(), at("2026-12-07T06:00:00Z"))
        .await
        .unwrap();
    assert!(matches!(gone, Fired::Ignored(_)), "{gone:?}");
    let page = w.svc.tasks.list(&boss, &Default::default()).await.unwrap();
    assert!(page.items.is_empty());
}

#[tokio::test]
async fn a_chain_template_fires_as_a_chain_started_once() {
    let world = MemoryWorld::new();
    let svc = ScheduleService {
        store: Arc::new(MemoryScheduleStore::default()),
        trigger: Arc::new(RecordingTrigger::default()),
        tasks: world.services().tasks,
        limit: 10,
    };
    let boss = caller(Role::Manager);
    let mut chain = body("allow");
    chain["template"] = json!({"title": "Nightly build", "type": "multi_step", "autoDispatch": true,
        "steps": [{"name": "build"}, {"name": "publish", "dependsOn": ["build"]}]});
    let id = svc.create(&boss, &chain).await.unwrap().schedule.id;
    let agency = AgencyId::parse("a1").unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        match svc
            .fire(&agency, id, at("2026-12-07T06:00:00Z"))
            .await
            .unwrap()
        {
            Fired::Run(run) => runs.push(run),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(runs[0].task_id, runs[1].task_id);
    let (task, steps) = svc
        .tasks
        .steps(&boss, runs[0].task_id.unwrap())
        .await
        .unwrap();
    assert_eq!(task.status, TaskStatus::InProgress);
    assert_eq!(steps.len(), 2);
    // The repeated firing started nothing more.
    assert_eq!(world.orchestrator.started.lock().unwrap().len(), 1);
}
