//! In-memory schedule ports: a store with the DynamoDB adapter's rules (versions, the
//! per-agency limit, runs keyed by scheduled time) and a trigger that records what it was told.

use crate::domain::schedule::{Schedule, ScheduleRun};
use crate::domain::{AgencyId, ScheduleId};
use crate::error::AppError;
use crate::ports::{ScheduleStore, ScheduleTrigger};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct MemoryScheduleStore {
    schedules: Mutex<BTreeMap<(AgencyId, ScheduleId), Schedule>>,
    runs: Mutex<BTreeMap<(AgencyId, ScheduleId, i64), ScheduleRun>>,
}

#[async_trait]
impl ScheduleStore for MemoryScheduleStore {
    async fn create(&self, schedule: &Schedule, limit: u32) -> Result<(), AppError> {
        let mut all = self.schedules.lock().unwrap();
        let count = all.keys().filter(|(a, _)| *a == schedule.agency_id).count();
        if count >= limit as usize {
            return Err(crate::service::schedules::quota_refusal(limit));
        }
        all.insert((schedule.agency_id.clone(), schedule.id), schedule.clone());
        Ok(())
    }

    async fn get(&self, agency: &AgencyId, id: ScheduleId) -> Result<Option<Schedule>, AppError> {
        Ok(self
            .schedules
            .lock()
            .unwrap()
            .get(&(agency.clone(), id))
            .cloned())
    }

    async fn list(&self, agency: &AgencyId) -> Result<Vec<Schedule>, AppError> {
        Ok(self
            .schedules
            .lock()
            .unwrap()
            .iter()
            .filter(|((a, _), _)| a == agency)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn replace(&self, schedule: &Schedule, expected: u64) -> Result<(), AppError> {
        let mut all = self.schedules.lock().unwrap();
        let key = (schedule.agency_id.clone(), schedule.id);
        match all.get(&key) {
            Some(s) if s.version == expected => {
                all.insert(key, schedule.clone());
                Ok(())
            }
            Some(s) => Err(AppError::VersionConflict {
                expected,
                current: s.version,
            }),
            None => Err(AppError::NotFound { what: "schedule" }),
        }
    }

    async fn delete(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        expected: u64,
    ) -> Result<(), AppError> {
        let mut all = self.schedules.lock().unwrap();
        match all.get(&(agency.clone(), id)) {
            Some(s) if s.version == expected => {
                all.remove(&(agency.clone(), id));
                Ok(())
            }
            Some(s) => Err(AppError::VersionConflict {
                expected,
                current: s.version,
            }),
            None => Err(AppError::NotFound { what: "schedule" }),
        }
    }

    async fn record_run(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        run: &ScheduleRun,
    ) -> Result<(), AppError> {
        self.runs.lock().unwrap().insert(
            (agency.clone(), id, run.scheduled_at.timestamp()),
            run.clone(),
        );
        Ok(())
    }

    async fn runs(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        limit: usize,
    ) -> Result<Vec<ScheduleRun>, AppError> {
        Ok(self
            .runs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|((a, s, _), _)| a == agency && *s == id)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }
}

/// What the trigger was told, in order: `put <id> <state> <expression>` / `delete <id>`.
#[derive(Debug, Default)]
pub struct RecordingTrigger {
    pub calls: Mutex<Vec<String>>,
    /// When set, the next `put` fails with this error (once).
    pub fail_next_put: Mutex<Option<AppError>>,
}

#[async_trait]
impl ScheduleTrigger for RecordingTrigger {
    async fn put(&self, schedule: &Schedule) -> Result<(), AppError> {
        if let Some(err) = self.fail_next_put.lock().unwrap().take() {
            return Err(err);
        }
        self.calls.lock().unwrap().push(format!(
            "put {} {:?} {}",
            schedule.id, schedule.state, schedule.expression
        ));
        Ok(())
    }

    async fn delete(&self, _agency: &AgencyId, id: ScheduleId) -> Result<(), AppError> {
        self.calls.lock().unwrap().push(format!("delete {id}"));
        Ok(())
    }
}

impl MemoryScheduleStore {
    /// Stores a schedule as given (tests seed known ids and versions).
    pub fn insert(&self, schedule: Schedule) {
        self.schedules
            .lock()
            .unwrap()
            .insert((schedule.agency_id.clone(), schedule.id), schedule);
    }
}

/// The schedule use cases over in-memory ports, creating tasks through `tasks`.
pub struct MemorySchedules {
    pub service: crate::service::ScheduleService,
    pub store: std::sync::Arc<MemoryScheduleStore>,
    pub trigger: std::sync::Arc<RecordingTrigger>,
}

impl MemorySchedules {
    pub fn new(tasks: crate::service::TaskService) -> Self {
        let store = std::sync::Arc::new(MemoryScheduleStore::default());
        let trigger = std::sync::Arc::new(RecordingTrigger::default());
        let service = crate::service::ScheduleService {
            store: store.clone(),
            trigger: trigger.clone(),
            tasks,
            limit: crate::service::schedules::DEFAULT_SCHEDULE_LIMIT,
        };
        Self {
            service,
            store,
            trigger,
        }
    }
}

/// A weekday-morning schedule of `agency`, set up by `manager`, at version 1.
pub fn sample_schedule(agency: &str, id: &str, manager: &str) -> Schedule {
    let now = chrono::Utc::now();
    Schedule {
        id: ScheduleId::parse(id).expect("a ULID"),
        agency_id: AgencyId::parse(agency).expect("an agency id"),
        name: "Reconcile invoices".into(),
        expression: "cron(0 6 ? * MON-FRI *)".into(),
        time_zone: "Europe/London".into(),
        start_at: None,
        end_at: None,
        overlap_policy: crate::domain::schedule::OverlapPolicy::Skip,
        state: crate::domain::schedule::ScheduleState::Enabled,
        template: serde_json::json!({"title": "Reconcile invoices", "priority": "critical"}),
        created_by: crate::domain::UserId::parse(manager).expect("a user id"),
        created_at: now,
        updated_at: now,
        version: 1,
    }
}
