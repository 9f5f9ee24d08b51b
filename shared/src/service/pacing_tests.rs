//! The dispatch window (in-memory fake of the port; the DynamoDB adapter is tested against the
//! emulator in tests/integration/fairness.rs), and the runner freeing places as runs start.

use super::{PacedDispatcher, Pacing, PLACE_LEASE};
use crate::domain::{AgencyId, Caller, DispatchMessage, Priority, Role, TaskId, UserId};
use crate::error::AppError;
use crate::ports::{
    DispatchWindow, Dispatcher, Entry, InFlightSlots, Placement, QueueDepth, WindowState,
};
use crate::service::fairness::{Fairness, DEFER_DELAY};
use crate::service::Delivery;
use crate::testing::{MemorySlots, MemoryWindow, MemoryWorld, RecordingDispatcher};
use async_trait::async_trait;
use chrono::{Duration as Span, Utc};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const NORMAL: Priority = Priority::Normal;

fn agency(name: &str) -> AgencyId {
    AgencyId::parse(name).unwrap()
}

fn run_of(agency_id: &AgencyId) -> DispatchMessage {
    DispatchMessage {
        task_id: TaskId::generate(),
        agency_id: agency_id.clone(),
        dispatch_id: "d1".into(),
        priority: NORMAL,
        enqueued_at: Utc::now(),
    }
}

fn pacing(window: &Arc<MemoryWindow>, size: u32, queue: &Arc<RecordingDispatcher>) -> Pacing {
    Pacing::new(
        window.clone(),
        BTreeMap::from([(NORMAL, size)]),
        queue.clone(),
    )
}

fn sent_ids(queue: &RecordingDispatcher) -> Vec<TaskId> {
    queue
        .sent
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.task_id)
        .collect()
}

#[tokio::test]
async fn a_full_window_parks_the_rest_and_each_start_sends_the_oldest_parked_until_all_ran_once() {
    let (window, queue) = (Arc::new(MemoryWindow::default()), Arc::default());
    let pacing = pacing(&window, 3, &queue);
    let a = agency("a");
    let runs: Vec<DispatchMessage> = (0..10).map(|_| run_of(&a)).collect();
    let now = Utc::now();
    for run in &runs {
        pacing.dispatch(run, now).await.unwrap();
    }
    let expected: Vec<TaskId> = runs.iter().map(|r| r.task_id).collect();
    assert_eq!(
        sent_ids(&queue),
        expected[..3],
        "the window's three are sent"
    );
    assert_eq!(window.parked_count(&a, NORMAL), 7);
    assert!(window.marked(&a, NORMAL));

    // Each run that starts frees its place, which goes to the oldest parked run.
    let mut started = 0;
    while started < sent_ids(&queue).len() {
        let task = sent_ids(&queue)[started];
        pacing.left_queue(&a, NORMAL, task, Utc::now()).await;
        started += 1;
        assert!(window.taken(&a, NORMAL) <= 3);
    }
    assert_eq!(
        sent_ids(&queue),
        expected,
        "every run sent once, oldest first"
    );
    assert_eq!(window.parked_count(&a, NORMAL), 0);
    assert_eq!(window.taken(&a, NORMAL), 0);
    assert!(
        !window.marked(&a, NORMAL),
        "a refill that found nothing clears the mark"
    );
}

#[tokio::test]
async fn another_agencys_runs_are_sent_at_once_behind_at_most_one_window_of_a_flood() {
    let (window, queue) = (Arc::new(MemoryWindow::default()), Arc::default());
    let pacing = pacing(&window, 4, &queue);
    let (a, b) = (agency("a"), agency("b"));
    let now = Utc::now();
    for _ in 0..200 {
        pacing.dispatch(&run_of(&a), now).await.unwrap();
    }
    let b_runs: Vec<DispatchMessage> = (0..3).map(|_| run_of(&b)).collect();
    for run in &b_runs {
        pacing.dispatch(run, now).await.unwrap();
    }
    let sent = queue.sent.lock().unwrap().clone();
    let ahead_of_b = sent.iter().take_while(|m| m.agency_id == a).count();
    assert_eq!(
        ahead_of_b, 4,
        "B's runs queue behind A's window, not its flood"
    );
    assert_eq!(sent.len(), 7);
    assert_eq!(window.parked_count(&a, NORMAL), 196);
}

#[tokio::test]
async fn a_tier_without_a_window_and_delayed_sends_are_not_paced() {
    let (window, queue) = (
        Arc::new(MemoryWindow::default()),
        Arc::<RecordingDispatcher>::default(),
    );
    let pacing = Pacing::new(window.clone(), BTreeMap::new(), queue.clone());
    let a = agency("a");
    for _ in 0..5 {
        pacing.dispatch(&run_of(&a), Utc::now()).await.unwrap();
    }
    assert_eq!(sent_ids(&queue).len(), 5);
    let paced = PacedDispatcher::new(pacing_of_one(&window, &queue), queue.clone());
    paced
        .dispatch(&run_of(&a), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(sent_ids(&queue).len(), 6, "a delayed send is not paced");
    paced.dispatch(&run_of(&a), Duration::ZERO).await.unwrap();
    paced.dispatch(&run_of(&a), Duration::ZERO).await.unwrap();
    assert_eq!(
        sent_ids(&queue).len(),
        7,
        "the second immediate one is parked"
    );
    assert_eq!(window.parked_count(&a, NORMAL), 1);
}

fn pacing_of_one(window: &Arc<MemoryWindow>, queue: &Arc<RecordingDispatcher>) -> Pacing {
    pacing(window, 1, queue)
}

/// The in-memory window with two interleavings the tests need: every run in the window starts
/// (seeing no mark yet) while the next dispatch is being parked (`empty_on_park`), and reads
/// of parked dispatches let other tasks run before they answer, so that two refills read the
/// same ones (`slow_reads`), and the first unpark waits for a signal (`unpark_gate`): a refill
/// that sent a run but has not yet forgotten it.
#[derive(Default)]
struct Interleaved {
    inner: Arc<MemoryWindow>,
    empty_on_park: AtomicBool,
    slow_reads: bool,
    unpark_gate: Option<UnparkGate>,
}

/// `reached` is signalled when an unpark arrives, which then waits for `release`.
#[derive(Default)]
struct UnparkGate {
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
    used: AtomicBool,
}

#[async_trait]
impl DispatchWindow for Interleaved {
    async fn enter(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
        until: chrono::DateTime<Utc>,
        size: u32,
        now: chrono::DateTime<Utc>,
        entry: Entry,
    ) -> Result<Placement, AppError> {
        self.inner
            .enter(agency, tier, task, until, size, now, entry)
            .await
    }
    async fn leave(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<WindowState, AppError> {
        self.inner.leave(agency, tier, task).await
    }
    async fn park(&self, message: &DispatchMessage) -> Result<(), AppError> {
        if self.empty_on_park.swap(false, Ordering::SeqCst) {
            for task in self.inner.places(&message.agency_id, message.priority) {
                self.inner
                    .leave(&message.agency_id, message.priority, task)
                    .await?;
            }
        }
        self.inner.park(message).await
    }
    async fn parked(
        &self,
        agency: &AgencyId,
        tier: Priority,
        limit: usize,
    ) -> Result<Vec<DispatchMessage>, AppError> {
        let parked = self.inner.parked(agency, tier, limit).await;
        if self.slow_reads {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
        parked
    }
    async fn unpark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<(), AppError> {
        if self.slow_reads {
            tokio::task::yield_now().await;
        }
        if let Some(gate) = &self.unpark_gate {
            if !gate.used.swap(true, Ordering::SeqCst) {
                gate.reached.notify_one();
                gate.release.notified().await;
            }
        }
        self.inner.unpark(agency, tier, task).await
    }
    async fn clear_parked_mark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        mark: &str,
    ) -> Result<(), AppError> {
        self.inner.clear_parked_mark(agency, tier, mark).await
    }
}

#[tokio::test]
async fn a_dispatch_parked_while_the_window_emptied_is_sent_by_its_own_second_try() {
    let window = Arc::new(Interleaved::default());
    let inner = window.inner.clone();
    let queue = Arc::<RecordingDispatcher>::default();
    let pacing = Pacing::new(window.clone(), BTreeMap::from([(NORMAL, 2)]), queue.clone());
    let a = agency("a");
    let now = Utc::now();
    pacing.dispatch(&run_of(&a), now).await.unwrap();
    pacing.dispatch(&run_of(&a), now).await.unwrap();
    // The third finds the window full; both runs start before its mark is written, and their
    // refills saw no mark. Without a second try it would wait for the sweeper.
    window.empty_on_park.store(true, Ordering::SeqCst);
    let third = run_of(&a);
    pacing.dispatch(&third, now).await.unwrap();
    assert_eq!(sent_ids(&queue).last(), Some(&third.task_id));
    assert_eq!(inner.parked_count(&a, NORMAL), 0, "forgotten once sent");
}

#[tokio::test]
async fn two_refills_that_read_the_same_parked_runs_send_each_once() {
    let window = Arc::new(Interleaved {
        slow_reads: true,
        ..Interleaved::default()
    });
    let inner = window.inner.clone();
    let queue = Arc::<RecordingDispatcher>::default();
    let pacing = Pacing::new(window, BTreeMap::from([(NORMAL, 4)]), queue.clone());
    let a = agency("a");
    let now = Utc::now();
    for _ in 0..12 {
        pacing.dispatch(&run_of(&a), now).await.unwrap();
    }
    let first: Vec<TaskId> = sent_ids(&queue);
    assert_eq!(first.len(), 4);
    // Two runs start at once on two workers; both refills read the same oldest parked runs.
    tokio::join!(
        pacing.left_queue(&a, NORMAL, first[0], now),
        pacing.left_queue(&a, NORMAL, first[1], now)
    );
    let sent = sent_ids(&queue);
    let unique: std::collections::BTreeSet<&TaskId> = sent.iter().collect();
    assert_eq!(
        unique.len(),
        sent.len(),
        "a parked run was sent twice: {sent:?}"
    );
    assert_eq!(sent.len(), 6, "both places were refilled");
    assert_eq!(inner.parked_count(&a, NORMAL), 6);
}

#[tokio::test]
async fn a_refill_that_finds_the_oldest_parked_run_being_sent_by_another_sends_the_next() {
    let window = Arc::new(Interleaved {
        unpark_gate: Some(UnparkGate::default()),
        ..Interleaved::default()
    });
    let inner = window.inner.clone();
    let queue = Arc::<RecordingDispatcher>::default();
    let pacing = Pacing::new(window.clone(), BTreeMap::from([(NORMAL, 4)]), queue.clone());
    let a = agency("a");
    let now = Utc::now();
    for _ in 0..12 {
        pacing.dispatch(&run_of(&a), now).await.unwrap();
    }
    let first: Vec<TaskId> = sent_ids(&queue);
    // The first start's refill has sent the oldest parked run and not yet forgotten it when
    // the second start frees its place: the oldest parked run is still listed, but taken.
    let refilling = tokio::spawn({
        let pacing = pacing.clone();
        let (a, task) = (a.clone(), first[0]);
        async move { pacing.left_queue(&a, NORMAL, task, now).await }
    });
    let gate = window.unpark_gate.as_ref().unwrap();
    gate.reached.notified().await;
    pacing.left_queue(&a, NORMAL, first[1], now).await;
    gate.release.notify_one();
    refilling.await.unwrap();
    let sent = sent_ids(&queue);
    assert_eq!(sent.len(), 6, "both freed places were refilled: {sent:?}");
    let unique: std::collections::BTreeSet<&TaskId> = sent.iter().collect();
    assert_eq!(unique.len(), 6, "a parked run was sent twice: {sent:?}");
    assert_eq!(inner.taken(&a, NORMAL), 4);
    assert_eq!(inner.parked_count(&a, NORMAL), 6);
}

#[tokio::test]
async fn the_sweeper_refill_sends_parked_runs_once_leaked_places_expire() {
    let (window, queue) = (Arc::new(MemoryWindow::default()), Arc::default());
    let pacing = pacing(&window, 2, &queue);
    let a = agency("a");
    let now = Utc::now();
    // Two runs whose messages were lost: their places are never freed by a start.
    for _ in 0..4 {
        pacing.dispatch(&run_of(&a), now).await.unwrap();
    }
    assert_eq!(window.parked_count(&a, NORMAL), 2);
    assert_eq!(
        pacing.refill_waiting(&a, NORMAL, 100, now).await.unwrap(),
        0
    );
    let later = now + Span::from_std(PLACE_LEASE).unwrap() + Span::seconds(1);
    assert_eq!(
        pacing.refill_waiting(&a, NORMAL, 100, later).await.unwrap(),
        2
    );
    assert_eq!(window.parked_count(&a, NORMAL), 0);
    assert_eq!(sent_ids(&queue).len(), 4);
}

/// A queue that refuses every send.
struct Unreachable;

#[async_trait]
impl Dispatcher for Unreachable {
    async fn dispatch(&self, _: &DispatchMessage, _: Duration) -> Result<(), AppError> {
        Err(AppError::Unavailable("sqs down".into()))
    }
    fn queue_url(&self, _: Priority) -> Option<String> {
        None
    }
    async fn depth(&self, _: Priority) -> Result<QueueDepth, AppError> {
        Ok(QueueDepth::default())
    }
}

#[tokio::test]
async fn a_failed_send_gives_its_place_back_and_a_failed_refill_keeps_the_parked_run() {
    let window = Arc::new(MemoryWindow::default());
    let pacing = Pacing::new(
        window.clone(),
        BTreeMap::from([(NORMAL, 1)]),
        Arc::new(Unreachable),
    );
    let a = agency("a");
    let run = run_of(&a);
    assert!(pacing.dispatch(&run, Utc::now()).await.is_err());
    assert_eq!(
        window.taken(&a, NORMAL),
        0,
        "the place is not held by a run never sent"
    );

    // Parked, then a refill whose send fails: the parked run stays for the next refill.
    let parked = run_of(&a);
    window.park(&parked).await.unwrap();
    assert!(pacing
        .refill_waiting(&a, NORMAL, 100, Utc::now())
        .await
        .is_err());
    assert_eq!(window.parked_count(&a, NORMAL), 1);
    assert_eq!(window.taken(&a, NORMAL), 0);
}

#[tokio::test]
async fn the_runner_frees_a_started_or_dropped_runs_place_and_a_deferred_one_keeps_it() {
    let world = MemoryWorld::new();
    let services = world.services();
    let (window, queue) = (Arc::new(MemoryWindow::default()), Arc::default());
    let pacing = pacing(&window, 1, &queue);
    let slots = Arc::new(MemorySlots::default());
    let fairness = Fairness::new(slots.clone(), BTreeMap::from([(NORMAL, 1)]));
    let runner = services
        .runner
        .clone()
        .with_fairness(fairness)
        .with_pacing(pacing.clone());
    let boss = Caller {
        user: UserId::parse("boss").unwrap(),
        agency: agency("a1"),
        role: Role::Manager,
    };
    let create =
        serde_json::json!({"title": "t", "autoDispatch": true, "executor": {"type": "echo"}});
    let mut messages = Vec::new();
    for _ in 0..3 {
        services.tasks.create(&boss, &create, None).await.unwrap();
        let message = world
            .dispatcher
            .sent
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap();
        pacing.dispatch(&message, Utc::now()).await.unwrap();
        messages.push(message);
    }
    assert_eq!(sent_ids(&queue), vec![messages[0].task_id]);

    // Over its in-flight cap while another agency waits: deferred, still queued, place kept.
    let now = Utc::now();
    slots
        .acquire(
            &boss.agency,
            NORMAL,
            "other-run",
            now + Span::seconds(60),
            None,
            now,
        )
        .await
        .unwrap();
    slots.stamp_demand(NORMAL, &agency("b"), now).await.unwrap();
    let body = |m: &DispatchMessage| serde_json::to_string(m).unwrap();
    let (delivery, _) = runner.process(&body(&messages[0])).await;
    assert_eq!(delivery, Delivery::Defer(DEFER_DELAY));
    assert_eq!(window.taken(&boss.agency, NORMAL), 1);
    assert_eq!(
        sent_ids(&queue).len(),
        1,
        "nothing parked is sent while it waits"
    );

    // It starts: its place goes to the oldest parked run.
    slots
        .release(&boss.agency, NORMAL, "other-run")
        .await
        .unwrap();
    let (delivery, _) = runner.process(&body(&messages[0])).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(
        sent_ids(&queue),
        vec![messages[0].task_id, messages[1].task_id]
    );

    // A stale copy (superseded dispatch) is dropped, and frees its place all the same.
    let mut stale = messages[1].clone();
    stale.dispatch_id = "superseded".into();
    let (delivery, _) = runner.process(&body(&stale)).await;
    assert_eq!(delivery, Delivery::Ack);
    assert_eq!(sent_ids(&queue).len(), 3);
    assert_eq!(window.parked_count(&boss.agency, NORMAL), 0);
}
