//! The scheduled sweep (every minute): aging, deadline escalation, SLA breach
//! records and offline agents. Each pass is bounded, so a big backlog is
//! worked through over several passes instead of one long run.

use super::input::AssignInput;
use super::tasks::{queue, TaskService};
use crate::domain::agent::HEARTBEAT_TIMEOUT;
use crate::domain::{Caller, DispatchMessage, Priority, Role, Task, TaskStatus, UserId};
use crate::error::AppError;
use crate::ports::{
    AgentStore, BatchStore, Dispatcher, Orchestrator, SchedulingIndex, TaskQuery, TaskStore,
    WaitingTask,
};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// Index entries read per page.
const PAGE: usize = 100;
/// Most entries one pass handles per tier, and for deadlines. Handled entries leave the pages
/// the scans read (promoted work moves tier, breached top-tier work moves partition,
/// escalated work leaves the deadline index), so the next pass continues with the rest.
pub(crate) const PER_PASS: usize = 500;
/// Open tasks due within this window are escalated to at least `high`.
pub use crate::domain::task::DUE_SOON;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub promoted: usize,
    pub redispatched: usize,
    pub escalated: usize,
    pub breaches: usize,
    pub agents_offline: usize,
    pub reassigned: usize,
    /// Batches whose preparation stalled, asked for again.
    pub preparations_repaired: usize,
    /// Batches whose preparation stalled [`PREPARATION_REPAIRS`] times over, failed with the reason.
    pub batches_failed: usize,
}

/// A pending batch whose preparation made no progress for this long was abandoned by it (a
/// killed invocation, a message gone to the DLQ): longer than a preparation pass runs (300 s)
/// and than a crashed one's message stays invisible (1,800 s).
pub const STUCK_PENDING: Duration = Duration::from_secs(30 * 60);
/// Times a stalled preparation is asked for again before its batch is failed: each time it
/// goes on from its saved progress, so only a preparation that keeps dying ends the batch.
pub const PREPARATION_REPAIRS: u32 = 3;
/// Most stuck batches one pass settles (each a describe and two writes); the rest next minute.
const BATCHES_PER_PASS: usize = 50;

#[derive(Clone)]
pub struct Sweeper {
    pub store: Arc<dyn TaskStore>,
    pub index: Arc<dyn SchedulingIndex>,
    pub dispatcher: Arc<dyn Dispatcher>,
    pub agents: Arc<dyn AgentStore>,
    pub tasks: TaskService,
    pub aging_fraction: f64,
    pub batches: Arc<dyn BatchStore>,
    pub batch_orchestrator: Arc<dyn Orchestrator>,
    pub preparations: Arc<dyn crate::ports::Preparations>,
    /// Fair share: each pass re-stamps the demand of agencies whose work still waits.
    pub fairness: Option<crate::service::fairness::Fairness>,
    /// Dispatch windows: each pass refills those of agencies whose work still waits.
    pub pacing: Option<crate::service::pacing::Pacing>,
}

/// Most parked dispatches one pass sends per tier (each a place, a send and a delete, about
/// 30 ms on AWS): five tiers stay well inside the sweeper's 60 s Timeout however many windows
/// leaked at once; the rest go next minute.
const REFILLS_PER_PASS: u32 = 100;

/// Work waiting at least this long is stamped as demand by the sweeper: younger work was
/// stamped by its own dispatch within the demand window.
const RESTAMP_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl Sweeper {
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<SweepReport, AppError> {
        let mut report = SweepReport::default();
        for tier in Priority::ALL {
            self.age_tier(*tier, now, &mut report).await?;
            self.tend_waiting_agencies(*tier, now).await?;
        }
        self.escalate_due(now, &mut report).await?;
        self.retire_offline_agents(now, &mut report).await?;
        self.repair_stuck_batches(now, &mut report).await?;
        Ok(report)
    }

    /// Batches left `pending` by a preparation that stopped making progress (a killed
    /// invocation, a message that went to the DLQ) would show pending for good: ask for the
    /// preparation again, which goes on from its saved progress, and after
    /// [`PREPARATION_REPAIRS`] such requests fail the batch with the reason. A batch whose
    /// round's execution exists is not touched (it did start; its record is behind), and one
    /// the describe cannot answer for waits for the next pass.
    async fn repair_stuck_batches(
        &self,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<(), AppError> {
        let cutoff = now - chrono::Duration::from_std(STUCK_PENDING).unwrap_or_default();
        for mut batch in self
            .batches
            .pending_before(cutoff, BATCHES_PER_PASS)
            .await?
        {
            let progress = batch.preparation;
            if progress.is_some_and(|p| p.updated_at > cutoff) {
                continue;
            }
            let name = format!("{}-r{}", batch.id, batch.round);
            match self.batch_orchestrator.describe(&name).await {
                Ok(None) => {}
                Ok(Some(status)) => {
                    tracing::error!(batch = %batch.id, execution = name, status = status.as_str(), "a pending batch has an execution; left as it is");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(batch = %batch.id, error = %err, "could not describe a stuck batch's execution; next pass");
                    continue;
                }
            }
            let repairs = progress.map_or(0, |p| p.repairs);
            if repairs < PREPARATION_REPAIRS {
                let mut next = progress.unwrap_or(crate::domain::Preparation {
                    chunks_written: 0,
                    items_read: 0,
                    passes: 0,
                    repairs: 0,
                    updated_at: now,
                });
                next.repairs += 1;
                next.updated_at = now;
                batch.preparation = Some(next);
                // Only over the batch as read: a preparation that saved progress meanwhile runs.
                if self
                    .batches
                    .put_if(&batch, crate::domain::BatchStatus::Pending, batch.round)
                    .await?
                {
                    let request = crate::domain::PrepareBatch {
                        agency_id: batch.agency_id.clone(),
                        batch_id: batch.id,
                    };
                    self.preparations.request(&request).await?;
                    tracing::warn!(batch = %batch.id, repair = next.repairs, "a batch's preparation stalled; asked for it again");
                    report.preparations_repaired += 1;
                }
                continue;
            }
            let reason = format!(
                "the batch's preparation stopped making progress {} times ({} minutes each), and nothing ran; create it again",
                PREPARATION_REPAIRS + 1,
                STUCK_PENDING.as_secs() / 60
            );
            let id = batch.id;
            if super::batches::fail_unstarted(
                self.batches.as_ref(),
                self.store.as_ref(),
                batch,
                reason,
            )
            .await?
            {
                tracing::warn!(batch = %id, "failed a batch left pending");
                report.batches_failed += 1;
            }
        }
        Ok(())
    }

    /// A dispatch stamps its agency's demand on the tier for [`DEMAND_WINDOW`]; work that waits
    /// longer (behind another agency's backlog) would then stop holding that agency to its
    /// cap. Each pass (every minute, within the window) stamps again the agencies of the
    /// tier's oldest waiting work, and refills their dispatch windows: a refill lost with a
    /// crashed worker, or a window whose places leaked and expired, would leave parked work
    /// waiting for aging alone.
    ///
    /// [`DEMAND_WINDOW`]: crate::service::fairness::DEMAND_WINDOW
    async fn tend_waiting_agencies(
        &self,
        tier: Priority,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        if self.fairness.is_none() && self.pacing.is_none() {
            return Ok(());
        }
        let before = now - chrono::Duration::from_std(RESTAMP_AFTER).unwrap_or_default();
        let mut agencies = std::collections::BTreeSet::new();
        for breached in [false, true] {
            for waiting in self
                .index
                .waiting(tier, breached, before, None, PAGE)
                .await?
            {
                agencies.insert(waiting.agency);
            }
        }
        let mut refills_left = REFILLS_PER_PASS;
        for agency in &agencies {
            if let Some(fairness) = &self.fairness {
                fairness.note_demand(tier, agency, now).await;
            }
            if let Some(pacing) = &self.pacing {
                let sent = pacing
                    .refill_waiting(agency, tier, refills_left, now)
                    .await?;
                refills_left = refills_left.saturating_sub(sent as u32);
                if sent > 0 {
                    tracing::info!(%agency, %tier, sent, "parked dispatches sent by the sweeper");
                }
            }
        }
        Ok(())
    }

    /// Moves work that waited past its tier's aging threshold up one tier
    /// (critical work is re-dispatched instead), and records SLA breaches.
    async fn age_tier(
        &self,
        tier: Priority,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<(), AppError> {
        let threshold = chrono::Duration::from_std(tier.aging_threshold(self.aging_fraction))
            .unwrap_or_default();
        let before = now - threshold;
        // Breached work on the top tier only needs a lost message recovered: the oldest page.
        // (First, so work that breaches in this pass is not sent twice.)
        if tier.promoted() == tier {
            for waiting in self.index.waiting(tier, true, before, None, PAGE).await? {
                self.age(tier, &waiting, now, report).await?;
            }
        }
        let mut after: Option<WaitingTask> = None;
        let mut handled = 0;
        while handled < PER_PASS {
            let want = PAGE.min(PER_PASS - handled);
            let page = self
                .index
                .waiting(tier, false, before, after.as_ref(), want)
                .await?;
            handled += page.len();
            for waiting in &page {
                self.age(tier, waiting, now, report).await?;
            }
            if page.len() < want {
                break;
            }
            after = page.last().cloned();
        }
        Ok(())
    }

    async fn age(
        &self,
        tier: Priority,
        waiting: &WaitingTask,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<(), AppError> {
        let Some(mut task) = self.store.get(&waiting.agency, waiting.id).await? else {
            return Ok(());
        };
        if task.priority != tier || !matches!(task.status, TaskStatus::Pending | TaskStatus::Queued)
        {
            return Ok(());
        }
        let waited = (now - waiting.since).to_std().unwrap_or_default();
        let breached = tier.sla().is_some_and(|sla| waited > sla) && task.sla_breached_at.is_none();
        if breached {
            self.index.record_breach(tier, waiting, now).await?;
            task.sla_breached_at = Some(now);
            report.breaches += 1;
        }
        let next = tier.promoted();
        if next != tier {
            task.promoted_from.get_or_insert(tier);
            task.priority = next;
            report.promoted += 1;
            // A new tier: a new dispatch on its queue, and the wait there starts now.
            return self.requeue(task, now).await;
        }
        report.redispatched += 1;
        if breached {
            // Work never queued (a person's) measures its wait from its last change: keep
            // that start, which the breach write would otherwise move.
            task.queued_at.get_or_insert(waiting.since);
        }
        self.redispatch(task, breached, now).await
    }

    /// Sends waiting top-tier work again, recovering a message that was lost. The copy carries
    /// the live dispatch id: the task keeps its place (its first message is not made stale,
    /// and whichever copy arrives first runs it; the runner drops the other) and its wait
    /// (`queuedAt`, the SLA clock) goes on. Only a new breach is written.
    async fn redispatch(
        &self,
        mut task: Task,
        breached: bool,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        if breached {
            let read_version = task.version;
            task.touch(now);
            match self.store.replace(&task, read_version).await {
                Ok(()) => {}
                // Someone else moved it on; the next pass sees the new state.
                Err(AppError::VersionConflict { .. } | AppError::NotFound { .. }) => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        if let (TaskStatus::Queued, Some(dispatch_id)) = (task.status, task.dispatch_id.clone()) {
            let message = DispatchMessage {
                task_id: task.id,
                agency_id: task.agency_id.clone(),
                dispatch_id,
                priority: task.priority,
                enqueued_at: task.queued_at.unwrap_or(now),
            };
            self.dispatcher.dispatch(&message, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Escalates open work by its deadline, paging through every entry whose escalation is due
    /// (up to [`PER_PASS`]; escalated tasks leave the index, so the next pass goes on).
    async fn escalate_due(
        &self,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<(), AppError> {
        let mut after: Option<WaitingTask> = None;
        let mut handled = 0;
        while handled < PER_PASS {
            let want = PAGE.min(PER_PASS - handled);
            let page = self.index.due_before(now, after.as_ref(), want).await?;
            handled += page.len();
            for due in &page {
                self.escalate(due, now, report).await?;
            }
            if page.len() < want {
                break;
            }
            after = page.last().cloned();
        }
        Ok(())
    }

    async fn escalate(
        &self,
        due: &WaitingTask,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<(), AppError> {
        let Some(mut task) = self.store.get(&due.agency, due.id).await? else {
            return Ok(());
        };
        let Some(due_at) = task.due_at else {
            return Ok(());
        };
        let soon = now + chrono::Duration::from_std(DUE_SOON).unwrap_or_default();
        let wanted = if due_at <= now {
            Priority::Critical
        } else if due_at <= soon {
            Priority::High
        } else {
            return Ok(());
        };
        if task.status.is_final() || task.priority <= wanted {
            return Ok(());
        }
        task.promoted_from.get_or_insert(task.priority);
        task.priority = wanted;
        report.escalated += 1;
        self.requeue(task, now).await
    }

    /// Saves a task moved to a new tier; queued work gets a fresh dispatch on that tier.
    async fn requeue(&self, mut task: Task, now: DateTime<Utc>) -> Result<(), AppError> {
        let read_version = task.version;
        let message = if task.status == TaskStatus::Queued {
            // A fresh dispatch id: the message already on the old tier becomes stale.
            Some(queue(&mut task, now)?)
        } else {
            task.touch(now);
            None
        };
        match self.store.replace(&task, read_version).await {
            Ok(()) => {}
            // Someone else moved it on; the next pass sees the new state.
            Err(AppError::VersionConflict { .. } | AppError::NotFound { .. }) => return Ok(()),
            Err(err) => return Err(err),
        }
        if let Some(message) = message {
            self.dispatcher.dispatch(&message, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Marks silent agents offline and hands their unfinished tasks to others
    /// (or back to the unassigned pool when nobody can take them).
    async fn retire_offline_agents(
        &self,
        now: DateTime<Utc>,
        report: &mut SweepReport,
    ) -> Result<(), AppError> {
        let cutoff = now - chrono::Duration::from_std(HEARTBEAT_TIMEOUT).unwrap_or_default();
        for agent in self.agents.stale(cutoff).await? {
            if !self
                .agents
                .mark_offline(&agent.agency_id, &agent.id, cutoff)
                .await?
            {
                continue; // it heartbeated since the scan: alive, and keeps its work
            }
            report.agents_offline += 1;
            let system = Caller {
                user: UserId::parse("system:sweeper").expect("valid id"),
                agency: agent.agency_id.clone(),
                role: Role::Manager,
            };
            let query = TaskQuery {
                assignee: Some(agent.id.clone()),
                limit: 100,
                ..TaskQuery::default()
            };
            let page = self.store.list(&agent.agency_id, &query).await?;
            for task in page.items {
                let abandoned = matches!(task.status, TaskStatus::Assigned)
                    || (task.status == TaskStatus::InProgress && task.lease_expires_at.is_none());
                if !abandoned {
                    continue;
                }
                match self
                    .tasks
                    .assign(&system, task.id, &AssignInput::Auto, Some(task.version))
                    .await
                {
                    Ok(_) => report.reassigned += 1,
                    Err(AppError::Conflict(_)) => {
                        self.unassign(task).await?;
                        report.reassigned += 1;
                    }
                    Err(AppError::VersionConflict { .. } | AppError::InvalidTransition { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    async fn unassign(&self, mut task: Task) -> Result<(), AppError> {
        let read_version = task.version;
        if let (true, Some(agent)) = (task.agent_reserved, &task.assigned_to) {
            self.agents.release(&task.agency_id, agent).await?;
        }
        task.status = TaskStatus::Pending;
        task.assigned_to = None;
        task.agent_reserved = false;
        task.touch(Utc::now());
        match self.store.replace(&task, read_version).await {
            Ok(()) | Err(AppError::VersionConflict { .. } | AppError::NotFound { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }
}
