//! The fair-share slots (in-memory fake of the port; the DynamoDB adapter is tested against the
//! emulator in tests/integration/fairness.rs), the cap's rule, and the runner's deferral.

use super::{Fairness, DEFER_DELAY, DEMAND_WINDOW, STAMP_EVERY};
use crate::domain::{
    AgencyId, Caller, DispatchMessage, Priority, Role, TaskId, TaskStatus, UserId,
};
use crate::ports::{InFlightSlots, TaskStore};
use crate::service::Delivery;
use crate::testing::{MemorySlots, MemoryWorld};
use chrono::{Duration as Span, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;

fn agency(name: &str) -> AgencyId {
    AgencyId::parse(name).unwrap()
}

const NORMAL: Priority = Priority::Normal;

#[tokio::test]
async fn slots_are_taken_up_to_the_cap_renewed_by_their_holder_and_released_once() {
    let slots = MemorySlots::default();
    let (a, now) = (agency("a"), Utc::now());
    let until = now + Span::seconds(120);
    let holders: Vec<TaskId> = (0..3).map(|_| TaskId::generate()).collect();
    for holder in &holders {
        assert!(slots
            .acquire(&a, NORMAL, &holder.to_string(), until, Some(3), now)
            .await
            .unwrap());
    }
    let extra = TaskId::generate();
    assert!(!slots
        .acquire(&a, NORMAL, &extra.to_string(), until, Some(3), now)
        .await
        .unwrap());
    // A holder renewing its own slot (a redelivery taking over its lease) always may.
    assert!(slots
        .acquire(&a, NORMAL, &holders[0].to_string(), until, Some(3), now)
        .await
        .unwrap());
    assert_eq!(slots.held(&a, NORMAL, now).await.unwrap(), 3);
    // Another agency and another tier have their own slots.
    assert!(slots
        .acquire(
            &agency("b"),
            NORMAL,
            &extra.to_string(),
            until,
            Some(3),
            now
        )
        .await
        .unwrap());
    assert!(slots
        .acquire(&a, Priority::Low, &extra.to_string(), until, Some(3), now)
        .await
        .unwrap());
    // Releasing twice frees one slot, not two.
    slots
        .release(&a, NORMAL, &holders[1].to_string())
        .await
        .unwrap();
    slots
        .release(&a, NORMAL, &holders[1].to_string())
        .await
        .unwrap();
    assert_eq!(slots.held(&a, NORMAL, now).await.unwrap(), 2);
    assert!(slots
        .acquire(&a, NORMAL, &extra.to_string(), until, Some(3), now)
        .await
        .unwrap());
    assert!(!slots
        .acquire(
            &a,
            NORMAL,
            &TaskId::generate().to_string(),
            until,
            Some(3),
            now
        )
        .await
        .unwrap());
}

#[tokio::test]
async fn a_crashed_holders_slot_is_reclaimed_when_its_lease_ends() {
    let slots = MemorySlots::default();
    let (a, now) = (agency("a"), Utc::now());
    let crashed = TaskId::generate();
    // It took the slot and never gave it back.
    assert!(slots
        .acquire(
            &a,
            NORMAL,
            &crashed.to_string(),
            now + Span::seconds(10),
            Some(1),
            now
        )
        .await
        .unwrap());
    let next = TaskId::generate();
    let later = now + Span::seconds(5);
    assert!(!slots
        .acquire(
            &a,
            NORMAL,
            &next.to_string(),
            later + Span::seconds(60),
            Some(1),
            later
        )
        .await
        .unwrap());
    let after_lease = now + Span::seconds(11);
    assert_eq!(slots.held(&a, NORMAL, after_lease).await.unwrap(), 0);
    assert!(slots
        .acquire(
            &a,
            NORMAL,
            &next.to_string(),
            after_lease + Span::seconds(60),
            Some(1),
            after_lease
        )
        .await
        .unwrap());
    // The crashed holder's late release is harmless.
    slots
        .release(&a, NORMAL, &crashed.to_string())
        .await
        .unwrap();
    assert_eq!(slots.held(&a, NORMAL, after_lease).await.unwrap(), 1);
}

#[tokio::test]
async fn concurrent_acquires_and_releases_never_pass_the_cap_and_end_at_zero() {
    let slots = Arc::new(MemorySlots::default());
    let a = agency("a");
    let running = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let most = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (slots, a, running, most) = (slots.clone(), a.clone(), running.clone(), most.clone());
        workers.spawn(async move {
            let holder = TaskId::generate();
            loop {
                let now = Utc::now();
                if slots
                    .acquire(
                        &a,
                        NORMAL,
                        &holder.to_string(),
                        now + Span::seconds(60),
                        Some(4),
                        now,
                    )
                    .await
                    .unwrap()
                {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let inside = running.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(inside, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            slots
                .release(&a, NORMAL, &holder.to_string())
                .await
                .unwrap();
        });
    }
    workers.join_all().await;
    assert!(most.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    assert_eq!(slots.held(&a, NORMAL, Utc::now()).await.unwrap(), 0);
}

fn fairness(slots: &Arc<MemorySlots>, cap: u32) -> Fairness {
    Fairness::new(slots.clone(), BTreeMap::from([(NORMAL, cap)]))
}

#[tokio::test]
async fn the_cap_binds_only_while_another_agency_has_work_waiting() {
    let slots = Arc::new(MemorySlots::default());
    let fair = fairness(&slots, 2);
    let (a, b, now) = (agency("a"), agency("b"), Utc::now());
    let lease = now + Span::seconds(120);
    // Alone, A takes more than its cap: the whole tier is its.
    for _ in 0..5 {
        assert!(fair
            .admit(&a, NORMAL, &TaskId::generate().to_string(), lease, now)
            .await
            .unwrap());
    }
    assert_eq!(slots.held(&a, NORMAL, now).await.unwrap(), 5);
    // B's work is dispatched: now A is held to its cap, and B still gets in.
    slots.stamp_demand(NORMAL, &b, now).await.unwrap();
    let fair = fairness(&slots, 2); // a fresh instance: no cached answer
    assert!(!fair
        .admit(&a, NORMAL, &TaskId::generate().to_string(), lease, now)
        .await
        .unwrap());
    assert!(fair
        .admit(&b, NORMAL, &TaskId::generate().to_string(), lease, now)
        .await
        .unwrap());
    // B's stamp older than the window no longer holds A back.
    let later = now + Span::from_std(DEMAND_WINDOW).unwrap() + Span::seconds(1);
    let fair = fairness(&slots, 2);
    slots.stamp_demand(NORMAL, &a, later).await.unwrap();
    assert!(fair
        .admit(&a, NORMAL, &TaskId::generate().to_string(), lease, later)
        .await
        .unwrap());
}

/// An instance writes an agency's demand stamp once per `STAMP_EVERY`, not per dispatch or
/// delivery: a stamp that young still holds for the demand window, and each write is a
/// request on the tier's one demand item.
#[tokio::test(start_paused = true)]
async fn an_instance_stamps_an_agencys_demand_once_per_interval() {
    let slots = Arc::new(MemorySlots::default());
    let fair = fairness(&slots, 2);
    let (a, b, start) = (agency("a"), agency("b"), Utc::now());
    let at = |seconds: i64| start + Span::seconds(seconds);
    // Whether B finds A's demand stamped at or after `seconds`.
    let stamped_since = |seconds: i64| slots.others_waiting(NORMAL, &b, at(seconds));

    fair.note_demand(NORMAL, &a, at(0)).await;
    assert!(
        stamped_since(0).await.unwrap(),
        "the first stamp is written at once"
    );
    let interval = STAMP_EVERY.as_secs() as i64;
    tokio::time::advance(STAMP_EVERY - std::time::Duration::from_secs(1)).await;
    fair.note_demand(NORMAL, &a, at(interval - 1)).await;
    assert!(
        !stamped_since(1).await.unwrap(),
        "within the interval the stamp is not written again"
    );
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    fair.note_demand(NORMAL, &a, at(interval + 1)).await;
    assert!(
        stamped_since(interval + 1).await.unwrap(),
        "after it, it is"
    );
    // Another instance (a cold start) writes its own first stamp at once.
    fairness(&slots, 2)
        .note_demand(NORMAL, &a, at(interval + 2))
        .await;
    assert!(stamped_since(interval + 2).await.unwrap());
}

/// An echo task agency a1's manager created and auto-dispatched: who, its id, its message.
async fn dispatched_echo(
    world: &MemoryWorld,
    services: &crate::services::Services,
) -> (Caller, TaskId, DispatchMessage) {
    let boss = Caller {
        user: UserId::parse("boss").unwrap(),
        agency: agency("a1"),
        role: Role::Manager,
    };
    let body =
        serde_json::json!({"title": "t", "autoDispatch": true, "executor": {"type": "echo"}});
    let created = services.tasks.create(&boss, &body, None).await.unwrap();
    let id = TaskId::parse(created.task["id"].as_str().unwrap()).unwrap();
    let message = world
        .dispatcher
        .sent
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    (boss, id, message)
}

#[tokio::test]
async fn a_delivery_over_the_cap_is_deferred_without_an_attempt_and_runs_once_a_slot_frees() {
    let world = MemoryWorld::new();
    let slots = Arc::new(MemorySlots::default());
    let services = world.services();
    let runner = services.runner.clone().with_fairness(fairness(&slots, 1));
    let (boss, id, message) = dispatched_echo(&world, &services).await;
    let body = serde_json::to_string(&message).unwrap();

    // A1 holds its one slot; another agency waits on the tier.
    let now = Utc::now();
    let other_run = TaskId::generate();
    slots
        .acquire(
            &boss.agency,
            NORMAL,
            &other_run.to_string(),
            now + Span::seconds(60),
            None,
            now,
        )
        .await
        .unwrap();
    slots.stamp_demand(NORMAL, &agency("b"), now).await.unwrap();

    let (delivery, report) = runner.process(&body).await;
    assert_eq!(delivery, Delivery::Defer(DEFER_DELAY));
    assert!(report.is_none());
    let task = world.store.get(&boss.agency, id).await.unwrap().unwrap();
    assert_eq!(
        (task.status, task.attempts),
        (TaskStatus::Queued, 0),
        "not an attempt"
    );

    // The slot frees: the copy runs, once, and gives its slot back.
    slots
        .release(&boss.agency, NORMAL, &other_run.to_string())
        .await
        .unwrap();
    let runner = services.runner.clone().with_fairness(fairness(&slots, 1));
    let (delivery, _) = runner.process(&body).await;
    assert_eq!(delivery, Delivery::Ack);
    let task = world.store.get(&boss.agency, id).await.unwrap().unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Completed, 1));
    assert_eq!(
        slots.held(&boss.agency, NORMAL, Utc::now()).await.unwrap(),
        0
    );
}

#[tokio::test]
async fn a_redelivery_of_a_run_killed_after_its_outcome_gives_back_the_slot_it_left() {
    let world = MemoryWorld::new();
    let slots = Arc::new(MemorySlots::default());
    let services = world.services();
    let runner = services.runner.clone().with_fairness(fairness(&slots, 2));
    let (boss, id, message) = dispatched_echo(&world, &services).await;
    let body = serde_json::to_string(&message).unwrap();
    assert_eq!(runner.process(&body).await.0, Delivery::Ack);
    // The invocation was killed after the outcome was written and before the slot went back:
    // the run's slot is still held, and its message comes back.
    let now = Utc::now();
    slots
        .acquire(
            &boss.agency,
            NORMAL,
            &id.to_string(),
            now + Span::seconds(60),
            None,
            now,
        )
        .await
        .unwrap();
    let (delivery, report) = runner.process(&body).await;
    assert_eq!(delivery, Delivery::Ack);
    assert!(report.is_none(), "not run again");
    assert_eq!(slots.held(&boss.agency, NORMAL, now).await.unwrap(), 0);

    // A superseded message says nothing of the task's current run: its slot stays.
    slots
        .acquire(
            &boss.agency,
            NORMAL,
            &id.to_string(),
            now + Span::seconds(60),
            None,
            now,
        )
        .await
        .unwrap();
    let mut stale = message.clone();
    stale.dispatch_id = "an-older-dispatch".into();
    let stale = serde_json::to_string(&stale).unwrap();
    assert_eq!(runner.process(&stale).await.0, Delivery::Ack);
    assert_eq!(slots.held(&boss.agency, NORMAL, now).await.unwrap(), 1);
}
