//! Sweeper rules against the in-memory ports.

use crate::domain::{AgencyId, Caller, Priority, Role, TaskStatus, UserId};
use crate::ports::{AgentStore, TaskStore};
use crate::service::AssignInput;
use crate::testing::MemoryWorld;
use chrono::{Duration, Utc};
use serde_json::json;

fn boss() -> Caller {
    Caller {
        user: UserId::parse("boss").unwrap(),
        agency: AgencyId::parse("a1").unwrap(),
        role: Role::Manager,
    }
}

async fn create(world: &MemoryWorld, body: serde_json::Value) -> crate::domain::TaskId {
    let created = world
        .services()
        .tasks
        .create(&boss(), &body, None)
        .await
        .unwrap();
    crate::domain::TaskId::parse(created.task["id"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn queued_work_past_its_threshold_moves_up_with_a_fresh_dispatch() {
    let world = MemoryWorld::new();
    let id = create(&world, json!({"title": "t", "priority": "normal", "autoDispatch": true, "executor": {"type": "echo"}})).await;
    let first = world.dispatcher.sent.lock().unwrap()[0].clone();
    // 20 minutes later: past half of normal's 30-minute SLA, not past the SLA itself.
    let report = world
        .services()
        .sweeper
        .sweep(Utc::now() + Duration::minutes(20))
        .await
        .unwrap();
    assert_eq!((report.promoted, report.breaches), (1, 0));
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(
        (task.priority, task.promoted_from, task.status),
        (Priority::High, Some(Priority::Normal), TaskStatus::Queued)
    );
    let sent = world.dispatcher.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].priority, Priority::High);
    assert_ne!(
        sent[1].dispatch_id, first.dispatch_id,
        "the old message is now stale"
    );
    assert_eq!(
        task.dispatch_id.as_deref(),
        Some(sent[1].dispatch_id.as_str())
    );
}

#[tokio::test]
async fn work_past_its_sla_is_recorded_once_and_critical_work_is_redispatched() {
    let world = MemoryWorld::new();
    create(&world, json!({"title": "t", "priority": "critical", "autoDispatch": true, "executor": {"type": "echo"}})).await;
    let sweeper = world.services().sweeper;
    let report = sweeper
        .sweep(Utc::now() + Duration::minutes(2))
        .await
        .unwrap();
    assert_eq!(
        (report.promoted, report.redispatched, report.breaches),
        (0, 1, 1)
    );
    let report = sweeper
        .sweep(Utc::now() + Duration::minutes(4))
        .await
        .unwrap();
    assert_eq!(report.breaches, 0, "a breach is recorded once per task");
    assert_eq!(world.index.breaches.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn breaches_count_only_inside_the_last_hour() {
    let world = MemoryWorld::new();
    create(&world, json!({"title": "t", "priority": "critical", "autoDispatch": true, "executor": {"type": "echo"}})).await;
    let breached_at = Utc::now() + Duration::minutes(2);
    let report = world.services().sweeper.sweep(breached_at).await.unwrap();
    assert_eq!(report.breaches, 1);
    let queues = world.services().queues;
    let critical_breaches = |now| {
        let queues = queues.clone();
        async move {
            let tiers = queues.tiers_at(now).await.unwrap();
            tiers
                .into_iter()
                .find(|t| t.tier == Priority::Critical)
                .unwrap()
                .breaches_last_hour
        }
    };
    assert_eq!(critical_breaches(breached_at).await, 1, "at the breach");
    assert_eq!(
        critical_breaches(breached_at + Duration::minutes(59)).await,
        1
    );
    assert_eq!(
        critical_breaches(breached_at + Duration::minutes(61)).await,
        0,
        "an hour later it has left the window"
    );
    assert_eq!(
        critical_breaches(breached_at - Duration::seconds(1)).await,
        0,
        "before it happened it is not in the window"
    );
}

#[tokio::test]
async fn tasks_due_soon_are_escalated_and_overdue_ones_become_critical() {
    let world = MemoryWorld::new();
    let now = Utc::now();
    let soon = create(&world, json!({"title": "soon", "priority": "low", "dueAt": (now + Duration::minutes(10)).to_rfc3339()})).await;
    let late = create(&world, json!({"title": "late", "priority": "normal", "dueAt": (now - Duration::minutes(1)).to_rfc3339()})).await;
    let later = create(&world, json!({"title": "later", "priority": "low", "dueAt": (now + Duration::days(3)).to_rfc3339()})).await;
    let report = world.services().sweeper.sweep(now).await.unwrap();
    assert_eq!(report.escalated, 2);
    let priority = |id| {
        let store = world.store.clone();
        async move {
            store
                .get(&boss().agency, id)
                .await
                .unwrap()
                .unwrap()
                .priority
        }
    };
    assert_eq!(priority(soon).await, Priority::High);
    assert_eq!(priority(late).await, Priority::Critical);
    assert_eq!(priority(later).await, Priority::Low);
}

#[tokio::test]
async fn a_silent_agent_goes_offline_and_its_tasks_move_to_another() {
    let world = MemoryWorld::new();
    let agency = boss().agency;
    let long_ago = Utc::now() - Duration::minutes(10);
    let ghost = UserId::parse("ghost").unwrap();
    let alive = UserId::parse("alive").unwrap();
    world
        .agents
        .heartbeat(&agency, &ghost, &[], 5, Utc::now())
        .await
        .unwrap();
    let services = world.services();
    let id = create(&world, json!({"title": "t"})).await;
    services
        .tasks
        .assign(&boss(), id, &AssignInput::Auto, None)
        .await
        .unwrap();
    // The ghost stops heartbeating; another agent is alive.
    world
        .agents
        .heartbeat(&agency, &ghost, &[], 5, long_ago)
        .await
        .unwrap();
    world
        .agents
        .heartbeat(&agency, &alive, &[], 5, Utc::now())
        .await
        .unwrap();

    let report = services.sweeper.sweep(Utc::now()).await.unwrap();
    assert_eq!((report.agents_offline, report.reassigned), (1, 1));
    let task = world.store.get(&agency, id).await.unwrap().unwrap();
    assert_eq!(task.assigned_to, Some(alive.clone()));
    assert_eq!(
        world
            .agents
            .get(&agency, &ghost)
            .await
            .unwrap()
            .unwrap()
            .active_tasks,
        0
    );
    assert_eq!(
        world
            .agents
            .get(&agency, &alive)
            .await
            .unwrap()
            .unwrap()
            .active_tasks,
        1
    );
}

/// The agent heartbeats between the sweep's scan and its offline write: it stays online and
/// keeps its work.
#[tokio::test]
async fn an_agent_that_heartbeats_during_the_sweep_keeps_its_tasks() {
    let world = MemoryWorld::new();
    let agency = boss().agency;
    let busy = UserId::parse("busy").unwrap();
    let other = UserId::parse("other").unwrap();
    world
        .agents
        .heartbeat(&agency, &busy, &[], 5, Utc::now())
        .await
        .unwrap();
    let services = world.services();
    let id = create(&world, json!({"title": "t"})).await;
    services
        .tasks
        .assign(&boss(), id, &AssignInput::Auto, None)
        .await
        .unwrap();
    world
        .agents
        .heartbeat(&agency, &busy, &[], 5, Utc::now() - Duration::minutes(10))
        .await
        .unwrap();
    world
        .agents
        .heartbeat(&agency, &other, &[], 5, Utc::now())
        .await
        .unwrap();
    world
        .agents
        .heartbeat_after_scan
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let report = services.sweeper.sweep(Utc::now()).await.unwrap();
    assert_eq!((report.agents_offline, report.reassigned), (0, 0));
    let task = world.store.get(&agency, id).await.unwrap().unwrap();
    assert_eq!(task.assigned_to, Some(busy.clone()));
    let agent = world.agents.get(&agency, &busy).await.unwrap().unwrap();
    assert_eq!(agent.status, crate::domain::AgentStatus::Online);
    assert_eq!(agent.active_tasks, 1);
}

/// Two sweeps that both found the agent silent: only the one whose mark applies reassigns.
#[tokio::test]
async fn an_agent_is_marked_offline_once() {
    let world = MemoryWorld::new();
    let agency = boss().agency;
    let ghost = UserId::parse("ghost").unwrap();
    world
        .agents
        .heartbeat(&agency, &ghost, &[], 5, Utc::now() - Duration::minutes(10))
        .await
        .unwrap();
    let cutoff = Utc::now() - Duration::seconds(90);
    assert!(world
        .agents
        .mark_offline(&agency, &ghost, cutoff)
        .await
        .unwrap());
    assert!(
        !world
            .agents
            .mark_offline(&agency, &ghost, cutoff)
            .await
            .unwrap(),
        "the second sweep finds it already offline"
    );
}

/// Issue 13 item 8: more overdue tasks than one index page are all escalated in one pass, and
/// escalated tasks leave the deadline index (they used to stay and fill its first page).
#[tokio::test]
async fn a_hundred_and_fifty_overdue_tasks_are_all_escalated_in_one_pass() {
    let world = MemoryWorld::new();
    let now = Utc::now();
    let due = (now - Duration::minutes(5)).to_rfc3339();
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(
            create(
                &world,
                json!({"title": format!("t{i}"), "priority": "normal", "dueAt": due}),
            )
            .await,
        );
    }
    let sweeper = world.services().sweeper;
    assert_eq!(sweeper.sweep(now).await.unwrap().escalated, 150);
    for id in ids {
        let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
        assert_eq!(task.priority, Priority::Critical);
    }
    assert_eq!(
        crate::ports::SchedulingIndex::due_before(world.index.as_ref(), now, None, 1000)
            .await
            .unwrap(),
        [],
        "escalated tasks left the deadline index"
    );
    assert_eq!(sweeper.sweep(now).await.unwrap().escalated, 0);
}

/// Work a pass cannot finish is continued by the next one: nothing handled is read again.
#[tokio::test]
async fn escalation_beyond_one_pass_continues_in_the_next() {
    let world = MemoryWorld::new();
    let now = Utc::now();
    let due = (now - Duration::minutes(5)).to_rfc3339();
    for i in 0..(super::sweeper::PER_PASS + 20) {
        create(
            &world,
            json!({"title": format!("t{i}"), "priority": "low", "dueAt": due}),
        )
        .await;
    }
    let sweeper = world.services().sweeper;
    assert_eq!(
        sweeper.sweep(now).await.unwrap().escalated,
        super::sweeper::PER_PASS
    );
    assert_eq!(
        sweeper
            .sweep(now + Duration::minutes(1))
            .await
            .unwrap()
            .escalated,
        20
    );
}

/// Tasks already at the tier their deadline asks for do not hold back one that is not.
#[tokio::test]
async fn tasks_already_escalated_do_not_block_a_later_one() {
    let world = MemoryWorld::new();
    let now = Utc::now();
    let soon = (now + Duration::minutes(10)).to_rfc3339();
    for i in 0..100 {
        create(
            &world,
            json!({"title": format!("h{i}"), "priority": "high", "dueAt": soon}),
        )
        .await;
    }
    let low = create(
        &world,
        json!({"title": "low", "priority": "low", "dueAt": soon}),
    )
    .await;
    assert_eq!(
        world.services().sweeper.sweep(now).await.unwrap().escalated,
        1
    );
    let task = world.store.get(&boss().agency, low).await.unwrap().unwrap();
    assert_eq!(task.priority, Priority::High);
}

/// Re-dispatching waiting critical work neither resets its wait nor moves it back: the copy
/// carries the live dispatch id, `queuedAt` stays, and the breach is counted from the
/// original wait (sweeps every 45 s used to reset the clock each time: never a breach).
#[tokio::test]
async fn a_redispatched_critical_task_keeps_its_wait_and_its_breach_is_counted() {
    let world = MemoryWorld::new();
    let id = create(&world, json!({"title": "t", "priority": "critical", "autoDispatch": true, "executor": {"type": "echo"}})).await;
    let queued = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    let sweeper = world.services().sweeper;
    let start = queued.queued_at.unwrap();
    let mut breaches = 0;
    for step in 1..=3 {
        let report = sweeper
            .sweep(start + Duration::seconds(45 * step))
            .await
            .unwrap();
        assert_eq!(report.redispatched, 1, "sweep {step}");
        breaches += report.breaches;
    }
    assert_eq!(
        breaches, 1,
        "the wait passed the 60 s SLA at the second sweep"
    );
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(task.queued_at, queued.queued_at, "the wait was not reset");
    assert_eq!(
        task.dispatch_id, queued.dispatch_id,
        "the live message stays live"
    );
    let sent = world.dispatcher.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 4, "the first send and three copies");
    assert!(sent
        .iter()
        .all(|m| Some(&m.dispatch_id) == queued.dispatch_id.as_ref()));
}

/// Breached critical work, which only needs lost messages recovered, no longer fills the page
/// the breach scan reads: every one of 150 waiting past the SLA has its breach recorded.
#[tokio::test]
async fn every_critical_task_past_its_sla_is_counted_not_only_the_oldest_hundred() {
    let world = MemoryWorld::new();
    for i in 0..150 {
        create(&world, json!({"title": format!("t{i}"), "priority": "critical", "autoDispatch": true, "executor": {"type": "echo"}})).await;
    }
    let sweeper = world.services().sweeper;
    let later = Utc::now() + Duration::minutes(2);
    assert_eq!(sweeper.sweep(later).await.unwrap().breaches, 150);
    let report = sweeper.sweep(later + Duration::minutes(1)).await.unwrap();
    assert_eq!(report.breaches, 0);
    assert_eq!(
        report.redispatched, 100,
        "recovery re-sends the oldest page"
    );
    assert_eq!(world.index.breaches.lock().unwrap().len(), 150);
}

/// A person's critical task (never queued) keeps its wait when its breach is written: the
/// queue overview still reports how long it has waited.
#[tokio::test]
async fn a_breached_waiting_task_keeps_its_wait_in_the_overview() {
    let world = MemoryWorld::new();
    create(&world, json!({"title": "t", "priority": "critical"})).await;
    let later = Utc::now() + Duration::minutes(2);
    assert_eq!(
        world
            .services()
            .sweeper
            .sweep(later)
            .await
            .unwrap()
            .breaches,
        1
    );
    let tiers = world.services().queues.tiers_at(later).await.unwrap();
    let critical = tiers.iter().find(|t| t.tier == Priority::Critical).unwrap();
    assert!(critical.oldest_waiting_seconds >= 119, "{critical:?}");
}

/// `count` uploads whose batches were recorded but whose preparation requests were lost:
/// the batches a killed preparation or a dead-lettered message leaves pending.
async fn stuck_batches(world: &MemoryWorld, count: usize) -> Vec<crate::domain::TaskId> {
    use crate::ports::ObjectStore;
    create(world, json!({"title": "makes the agency known"})).await;
    for n in 0..count {
        let key = format!("uploads/a1/stuck-{n}.json");
        world
            .objects
            .put(&key, b"[1, 2]".to_vec(), "application/json")
            .await
            .unwrap();
        world
            .services()
            .batches
            .create_from_upload(&key, "v1")
            .await
            .unwrap();
    }
    assert_eq!(world.preparations.take().len(), count, "then lost");
    world
        .store
        .all_tasks()
        .into_iter()
        .filter(|t| t.task_type == crate::domain::TaskType::Batch)
        .map(|t| t.id)
        .collect()
}

async fn batch_of(world: &MemoryWorld, id: crate::domain::TaskId) -> crate::domain::BatchJob {
    use crate::ports::BatchStore;
    world
        .batches
        .get(&boss().agency, id)
        .await
        .unwrap()
        .unwrap()
}

/// A batch left pending (before: for good) is asked for again once its preparation made no
/// progress for longer than a preparation runs; after the repairs it is failed with the
/// reason, and its task with it.
#[tokio::test]
async fn a_stalled_preparation_is_asked_for_again_then_failed_with_the_reason() {
    let world = MemoryWorld::new();
    let id = stuck_batches(&world, 1).await[0];
    let sweeper = world.services().sweeper;
    let start = Utc::now();
    let report = sweeper.sweep(start + Duration::minutes(20)).await.unwrap();
    assert_eq!(
        (report.preparations_repaired, report.batches_failed),
        (0, 0),
        "a preparation may still be at work"
    );
    let mut at = start;
    for repair in 1..=super::sweeper::PREPARATION_REPAIRS {
        at += Duration::minutes(31);
        let report = sweeper.sweep(at).await.unwrap();
        assert_eq!(report.preparations_repaired, 1, "repair {repair}");
        let requests = world.preparations.take();
        assert_eq!(requests.len(), 1, "repair {repair}");
        assert_eq!(requests[0].batch_id, id);
        let batch = batch_of(&world, id).await;
        assert_eq!(batch.preparation.map(|p| p.repairs), Some(repair));
        let soon = sweeper.sweep(at + Duration::minutes(1)).await.unwrap();
        assert_eq!(
            soon.preparations_repaired, 0,
            "waits for the asked preparation"
        );
    }
    at += Duration::minutes(31);
    let report = sweeper.sweep(at).await.unwrap();
    assert_eq!(
        (report.preparations_repaired, report.batches_failed),
        (0, 1)
    );
    let batch = batch_of(&world, id).await;
    assert_eq!(batch.status, crate::domain::BatchStatus::Failed);
    let error = batch.error.clone().unwrap();
    assert!(error.contains("stopped making progress"), "{error}");
    let task = world.store.get(&boss().agency, id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Failed);
    assert_eq!(task.error, batch.error);
    assert!(world.orchestrator.started.lock().unwrap().is_empty());

    let again = sweeper.sweep(at + Duration::minutes(1)).await.unwrap();
    assert_eq!(again.batches_failed, 0, "settled once");
}

/// The repair's request does what the lost one would have: the batch starts.
#[tokio::test]
async fn a_repaired_preparation_starts_the_batch() {
    let world = MemoryWorld::new();
    let id = stuck_batches(&world, 1).await[0];
    let report = world
        .services()
        .sweeper
        .sweep(Utc::now() + Duration::minutes(31))
        .await
        .unwrap();
    assert_eq!(report.preparations_repaired, 1);
    let outcomes = world
        .run_preparations(&world.services().batch_preparer)
        .await;
    assert_eq!(
        outcomes.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [crate::service::Prepared::Started]
    );
    assert_eq!(
        batch_of(&world, id).await.status,
        crate::domain::BatchStatus::Processing
    );
}

/// A pending batch whose round's execution exists did start (its record is behind): it is left
/// alone. One whose execution cannot be described waits for a later pass.
#[tokio::test]
async fn a_stuck_batch_is_described_before_it_is_repaired() {
    use std::sync::atomic::Ordering::SeqCst;
    let world = MemoryWorld::new();
    let ids = stuck_batches(&world, 2).await;
    world.orchestrator.executions.lock().unwrap().insert(
        format!("{}-r0", ids[0]),
        crate::ports::ExecutionStatus::Running,
    );
    let sweeper = world.services().sweeper;
    world.orchestrator.refuse_describes.store(true, SeqCst);
    let later = Utc::now() + Duration::minutes(40);
    assert_eq!(sweeper.sweep(later).await.unwrap().preparations_repaired, 0);
    world.orchestrator.refuse_describes.store(false, SeqCst);
    assert_eq!(sweeper.sweep(later).await.unwrap().preparations_repaired, 1);
    assert_eq!(
        batch_of(&world, ids[0]).await.preparation,
        None,
        "its execution runs"
    );
    assert_eq!(
        batch_of(&world, ids[1])
            .await
            .preparation
            .map(|p| p.repairs),
        Some(1)
    );
}

/// Each pass repairs a bounded number of stuck batches; the next pass continues.
#[tokio::test]
async fn stuck_batches_are_repaired_a_bounded_number_per_pass() {
    let world = MemoryWorld::new();
    let ids = stuck_batches(&world, 60).await;
    assert_eq!(ids.len(), 60);
    let sweeper = world.services().sweeper;
    let later = Utc::now() + Duration::minutes(40);
    assert_eq!(
        sweeper.sweep(later).await.unwrap().preparations_repaired,
        50
    );
    assert_eq!(
        sweeper.sweep(later).await.unwrap().preparations_repaired,
        10
    );
    assert_eq!(world.preparations.take().len(), 60);
}

/// Work that waits longer than the demand window still holds other agencies to their cap:
/// each pass stamps again the demand of the agencies whose work waits (before, a dispatch's
/// stamp lapsed after 60 s and the flooding agency's cap lifted while this work still waited).
#[tokio::test]
async fn waiting_work_keeps_its_agencys_demand_stamped() {
    use crate::ports::InFlightSlots;
    use crate::service::fairness::{Fairness, DEMAND_WINDOW};
    use crate::testing::MemorySlots;
    use std::sync::Arc;
    let world = MemoryWorld::new();
    create(
        &world,
        json!({"title": "t", "priority": "normal", "autoDispatch": true, "executor": {"type": "echo"}}),
    )
    .await;
    let slots = Arc::new(MemorySlots::default());
    let mut sweeper = world.services().sweeper;
    sweeper.fairness = Some(Fairness::new(slots.clone(), Default::default()));
    let flooder = AgencyId::parse("flooder").unwrap();
    // Two minutes on: the task still waits, past the window of any dispatch stamp.
    let later = Utc::now() + Duration::minutes(2);
    let since = later - Duration::from_std(DEMAND_WINDOW).unwrap();
    assert!(!slots
        .others_waiting(Priority::Normal, &flooder, since)
        .await
        .unwrap());
    sweeper.sweep(later).await.unwrap();
    assert!(
        slots
            .others_waiting(Priority::Normal, &flooder, since)
            .await
            .unwrap(),
        "a1's waiting work holds the flooder to its cap"
    );
    assert!(!slots
        .others_waiting(Priority::Normal, &boss().agency, since)
        .await
        .unwrap());
}
