//! Schedule use cases: managers create, change, pause, resume and delete schedules; anyone in
//! the agency reads them. The store holds the schedule (the truth); the trigger (EventBridge
//! Scheduler) is kept in step with it and fires `fire`.

mod fire;
#[cfg(test)]
mod fire_tests;
pub mod input;
mod settings;
#[cfg(test)]
mod tests;

pub use fire::Fired;
pub use input::ScheduleInput;
pub use settings::{ScheduleSettings, Unconfigured};

use super::TaskService;
use crate::domain::schedule::{Schedule, ScheduleRun, ScheduleState};
use crate::domain::{Caller, ScheduleId};
use crate::error::AppError;
use crate::ports::{ScheduleStore, ScheduleTrigger};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::sync::Arc;

/// Schedules per agency unless configured (`QuotaSchedules`); Scheduler's own default quota
/// is 10,000,000 schedules per account and Region, so this bounds one tenant, not the account.
pub const DEFAULT_SCHEDULE_LIMIT: u32 = 100;
/// The largest `QUOTA_SCHEDULES`: the list answers every schedule (~1 KB each) in one
/// response, well within Lambda's 6 MB.
pub const MAX_SCHEDULE_LIMIT: u32 = 1_000;
/// The quota's name in errors and docs.
pub const SCHEDULES_QUOTA: &str = "schedules";
/// Runs and firings a schedule's view shows.
pub const VIEW_RUNS: usize = 10;
pub const VIEW_FIRINGS: usize = 5;

#[derive(Clone)]
pub struct ScheduleService {
    pub store: Arc<dyn ScheduleStore>,
    pub trigger: Arc<dyn ScheduleTrigger>,
    pub tasks: TaskService,
    pub limit: u32,
}

/// A schedule with its last runs and next firing times.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleView {
    pub schedule: Schedule,
    pub last_runs: Vec<ScheduleRun>,
    pub next_firings: Vec<DateTime<Utc>>,
}

impl ScheduleView {
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(&self.schedule).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            map.insert(
                "lastRuns".into(),
                serde_json::to_value(&self.last_runs).unwrap_or_default(),
            );
            map.insert(
                "nextFirings".into(),
                serde_json::to_value(&self.next_firings).unwrap_or_default(),
            );
        }
        value
    }
}

impl ScheduleService {
    pub async fn create(&self, caller: &Caller, body: &Value) -> Result<ScheduleView, AppError> {
        caller.require_manager("create schedules")?;
        let input = ScheduleInput::parse(body, &self.tasks)?;
        let now = Utc::now();
        let schedule = Schedule {
            id: ScheduleId::generate(),
            agency_id: caller.agency.clone(),
            name: input.name,
            expression: input.expression,
            time_zone: input.time_zone,
            start_at: input.start_at,
            end_at: input.end_at,
            overlap_policy: input.overlap_policy,
            state: ScheduleState::Enabled,
            template: input.template,
            created_by: caller.user.clone(),
            created_at: now,
            updated_at: now,
            version: 1,
        };
        self.store.create(&schedule, self.limit).await?;
        // All or nothing: a schedule that nothing fires is taken back.
        if let Err(err) = self.trigger.put(&schedule).await {
            if let Err(undo) = self
                .store
                .delete(&schedule.agency_id, schedule.id, schedule.version)
                .await
            {
                tracing::error!(schedule = %schedule.id, error = %undo, "trigger not created and the schedule could not be removed");
            }
            return Err(err);
        }
        Ok(self.view(schedule, Vec::new(), now))
    }

    pub async fn get(&self, caller: &Caller, id: ScheduleId) -> Result<ScheduleView, AppError> {
        let schedule = self.load(caller, id).await?;
        let runs = self.store.runs(&caller.agency, id, VIEW_RUNS).await?;
        Ok(self.view(schedule, runs, Utc::now()))
    }

    pub async fn list(&self, caller: &Caller) -> Result<Vec<Value>, AppError> {
        let now = Utc::now();
        Ok(self
            .store
            .list(&caller.agency)
            .await?
            .into_iter()
            .map(|schedule| {
                let next = schedule.next_firings(now, 1).into_iter().next();
                let mut value = serde_json::to_value(&schedule).unwrap_or_default();
                if let Value::Object(map) = &mut value {
                    // Lists leave the (possibly large) template out; GET one to see it.
                    map.remove("template");
                    map.insert(
                        "nextFiring".into(),
                        serde_json::to_value(next).unwrap_or_default(),
                    );
                }
                value
            })
            .collect())
    }

    /// Replaces the schedule's definition (`PUT`); its state and history stay.
    pub async fn update(
        &self,
        caller: &Caller,
        id: ScheduleId,
        body: &Value,
        if_match: Option<u64>,
    ) -> Result<ScheduleView, AppError> {
        caller.require_manager("change schedules")?;
        let input = ScheduleInput::parse(body, &self.tasks)?;
        self.change(caller, id, if_match, |s| {
            s.name = input.name;
            s.expression = input.expression;
            s.time_zone = input.time_zone;
            s.start_at = input.start_at;
            s.end_at = input.end_at;
            s.overlap_policy = input.overlap_policy;
            s.template = input.template;
        })
        .await
    }

    pub async fn set_state(
        &self,
        caller: &Caller,
        id: ScheduleId,
        state: ScheduleState,
        if_match: Option<u64>,
    ) -> Result<ScheduleView, AppError> {
        caller.require_manager("pause or resume schedules")?;
        self.change(caller, id, if_match, |s| s.state = state).await
    }

    pub async fn delete(
        &self,
        caller: &Caller,
        id: ScheduleId,
        if_match: Option<u64>,
    ) -> Result<(), AppError> {
        caller.require_manager("delete schedules")?;
        let current = self.load(caller, id).await?;
        check_version(&current, if_match)?;
        // Trigger first: a schedule whose trigger could not be removed stays visible (and can
        // be deleted again) instead of firing unseen.
        self.trigger.delete(&caller.agency, id).await?;
        self.store.delete(&caller.agency, id, current.version).await
    }

    async fn change(
        &self,
        caller: &Caller,
        id: ScheduleId,
        if_match: Option<u64>,
        apply: impl FnOnce(&mut Schedule),
    ) -> Result<ScheduleView, AppError> {
        let current = self.load(caller, id).await?;
        check_version(&current, if_match)?;
        let mut next = current.clone();
        apply(&mut next);
        let now = Utc::now();
        next.updated_at = now;
        next.version = current.version + 1;
        self.trigger.put(&next).await?;
        if let Err(err) = self.store.replace(&next, current.version).await {
            // Put the trigger back as the stored schedule has it.
            if let Err(undo) = self.trigger.put(&current).await {
                tracing::error!(schedule = %id, error = %undo, "schedule not saved and its trigger could not be put back");
            }
            return Err(err);
        }
        let runs = self.store.runs(&caller.agency, id, VIEW_RUNS).await?;
        Ok(self.view(next, runs, now))
    }

    async fn load(&self, caller: &Caller, id: ScheduleId) -> Result<Schedule, AppError> {
        self.store
            .get(&caller.agency, id)
            .await?
            .ok_or(AppError::NotFound { what: "schedule" })
    }

    fn view(
        &self,
        schedule: Schedule,
        last_runs: Vec<ScheduleRun>,
        now: DateTime<Utc>,
    ) -> ScheduleView {
        let next_firings = if schedule.state == ScheduleState::Enabled {
            schedule.next_firings(now, VIEW_FIRINGS)
        } else {
            Vec::new()
        };
        ScheduleView {
            schedule,
            last_runs,
            next_firings,
        }
    }
}

fn check_version(current: &Schedule, if_match: Option<u64>) -> Result<(), AppError> {
    match if_match {
        Some(expected) if expected != current.version => Err(AppError::VersionConflict {
            expected,
            current: current.version,
        }),
        _ => Ok(()),
    }
}

/// The 429 for an agency at its schedule limit.
pub fn quota_refusal(limit: u32) -> AppError {
    AppError::QuotaExceeded {
        quota: SCHEDULES_QUOTA,
        limit: u64::from(limit),
        // A place frees only when a schedule is deleted, which no clock predicts (as openTasks).
        retry_after_seconds: 60,
        detail: format!(
            "the agency has {limit} schedules, its limit; delete one before creating another"
        ),
    }
}
