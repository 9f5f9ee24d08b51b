//! One firing: the overlap policy against the last run's task, then the task, created through
//! the same path as `POST /api/tasks` with a key derived from the schedule and the firing time.

use super::input::with_link;
use super::ScheduleService;
use crate::domain::schedule::OverlapPolicy;
use crate::domain::schedule::{firing_key, RunOutcome, ScheduleRun, ScheduleState};
use crate::domain::{AgencyId, Caller, Role, ScheduleId, TaskId};
use crate::error::AppError;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Runs read to find this firing's own record (a repeat) and the previous run's task.
const PREVIOUS_RUNS: usize = 5;

/// What a firing did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fired {
    /// Recorded: a task created (or found, for a repeat) or a skip.
    Run(ScheduleRun),
    /// The schedule is gone, paused or outside its dates: nothing happens.
    Ignored(&'static str),
}

impl ScheduleService {
    pub async fn fire(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        scheduled_at: DateTime<Utc>,
    ) -> Result<Fired, AppError> {
        let Some(schedule) = self.store.get(agency, id).await? else {
            return Ok(Fired::Ignored("the schedule was deleted"));
        };
        if schedule.state == ScheduleState::Paused {
            return Ok(Fired::Ignored("the schedule is paused"));
        }
        if !schedule.in_window(scheduled_at) {
            return Ok(Fired::Ignored("the firing is outside the schedule's dates"));
        }
        let runs = self.store.runs(agency, id, PREVIOUS_RUNS).await?;
        // A repeated firing (Scheduler's retry, a host restart) answers from its record.
        if let Some(run) = runs.iter().find(|r| r.scheduled_at == scheduled_at) {
            if run.outcome == RunOutcome::Created {
                return Ok(Fired::Run(run.clone()));
            }
        }
        // The firings create tasks as the manager who set the schedule up.
        let caller = Caller {
            user: schedule.created_by.clone(),
            agency: agency.clone(),
            role: Role::Manager,
        };
        let previous = runs
            .iter()
            .filter(|r| r.scheduled_at < scheduled_at)
            // A skipped run names the open task that caused it, so a long run of skips still
            // finds the task (PREVIOUS_RUNS need not reach back to its creation).
            .find_map(|r| r.task_id.or(r.previous_task_id));
        let open = match previous {
            Some(task) => self.open_task(&caller, task).await?,
            None => None,
        };
        let mut run = ScheduleRun {
            scheduled_at,
            fired_at: Utc::now(),
            outcome: RunOutcome::Created,
            task_id: None,
            previous_task_id: open,
        };
        match (schedule.overlap_policy, open) {
            (OverlapPolicy::Skip, Some(_)) => {
                run.outcome = RunOutcome::Skipped;
                self.store.record_run(agency, id, &run).await?;
                tracing::info!(schedule = %id, %scheduled_at, previous = ?open, "firing skipped: the last run's task is still open");
                return Ok(Fired::Run(run));
            }
            (OverlapPolicy::CancelPrevious, Some(task)) => {
                match self.tasks.cancel(&caller, task, None).await {
                    // Ended meanwhile: nothing left to cancel.
                    Ok(_) | Err(AppError::InvalidTransition { .. } | AppError::NotFound { .. }) => {
                    }
                    Err(err) => return Err(err),
                }
            }
            _ => {}
        }
        let Value::Object(template) = &schedule.template else {
            return Err(AppError::internal(
                "a stored schedule template is not an object",
            ));
        };
        let at = scheduled_at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let body = with_link(template, &id.to_string(), &at);
        let created = self
            .tasks
            .create(&caller, &body, Some(&firing_key(id, scheduled_at)))
            .await?;
        run.task_id = created.task["id"]
            .as_str()
            .and_then(|t| TaskId::parse(t).ok());
        self.store.record_run(agency, id, &run).await?;
        tracing::info!(schedule = %id, %scheduled_at, task = ?run.task_id, replayed = created.replayed, "schedule fired");
        Ok(Fired::Run(run))
    }

    /// The task if it is still open (a deleted one counts as closed).
    async fn open_task(&self, caller: &Caller, id: TaskId) -> Result<Option<TaskId>, AppError> {
        match self.tasks.get(caller, id).await {
            Ok(task) if !task.status.is_final() => Ok(Some(id)),
            Ok(_) | Err(AppError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}
