//! One firing of a schedule, as EventBridge Scheduler sends it (the target Input with
//! `<aws.scheduler.scheduled-time>` filled in). The same handler runs on AWS and in the local
//! host, which fires schedules on the same expressions.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use shared::aws::AwsClients;
use shared::config::Config;
use shared::domain::{AgencyId, ScheduleId};
use shared::service::schedules::{Fired, ScheduleSettings};
use shared::service::ScheduleService;
use shared::services::Services;
use shared::{AppError, FieldErrors};

/// The target Input (see `shared::store::scheduler::target_input`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Firing {
    agency_id: String,
    schedule_id: String,
    scheduled_time: String,
}

pub struct ScheduleRunner {
    schedules: ScheduleService,
}

impl ScheduleRunner {
    pub fn new(schedules: ScheduleService) -> Self {
        Self { schedules }
    }

    /// Wired from the function's environment (it changes no trigger, so needs no `SCHEDULE_*`).
    pub fn from_config(config: &Config, clients: &AwsClients) -> Self {
        let tasks = Services::new(config, clients).tasks;
        let settings = ScheduleSettings::default();
        Self::new(shared::services::schedule_service(
            config, clients, settings, tasks,
        ))
    }

    pub async fn from_env() -> Result<Self, AppError> {
        let config = Config::from_env()?;
        Ok(Self::from_config(&config, &AwsClients::from_env().await))
    }

    /// Fires the schedule the payload names. A malformed payload is an error (Scheduler
    /// retries, then dead-letters it); so is a failure to create the task, which a retry
    /// with the same scheduled time completes without a second task.
    pub async fn handle(&self, payload: &Value) -> Result<Value, AppError> {
        let (agency, id, at) = parse(payload)?;
        let fired = self.schedules.fire(&agency, id, at).await?;
        Ok(match fired {
            Fired::Run(run) => json!({"fired": true, "run": run}),
            Fired::Ignored(reason) => {
                tracing::info!(schedule = %id, %at, reason, "firing ignored");
                json!({"fired": false, "reason": reason})
            }
        })
    }
}

fn parse(payload: &Value) -> Result<(AgencyId, ScheduleId, DateTime<Utc>), AppError> {
    let mut errors = FieldErrors::new();
    let firing: Firing = match serde_json::from_value(payload.clone()) {
        Ok(firing) => firing,
        Err(err) => {
            errors.add(
                "payload",
                format!("must be {{agencyId, scheduleId, scheduledTime}}: {err}"),
            );
            return Err(AppError::Validation(errors));
        }
    };
    let agency = errors.check("agencyId", AgencyId::parse(&firing.agency_id));
    let id = errors.check("scheduleId", ScheduleId::parse(&firing.schedule_id));
    let at = errors.check(
        "scheduledTime",
        DateTime::parse_from_rfc3339(&firing.scheduled_time)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| format!("'{}' is not an RFC 3339 time", firing.scheduled_time)),
    );
    errors.into_result()?;
    match (agency, id, at) {
        (Some(agency), Some(id), Some(at)) => Ok((agency, id, at)),
        _ => Err(AppError::internal(
            "firing payload: a missing part without an error",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::domain::schedule::RunOutcome;
    use shared::testing::{sample_schedule, MemorySchedules, MemoryWorld};

    const AGENCY: &str = "a1";
    const ID: &str = "01JD0000000000000000000S01";

    fn runner() -> (ScheduleRunner, MemorySchedules) {
        let schedules = MemorySchedules::new(MemoryWorld::new().services().tasks);
        schedules.store.insert(sample_schedule(AGENCY, ID, "boss"));
        (ScheduleRunner::new(schedules.service.clone()), schedules)
    }

    #[tokio::test]
    async fn a_firing_payload_creates_the_task_once() {
        let (runner, _) = runner();
        let payload =
            json!({"agencyId": AGENCY, "scheduleId": ID, "scheduledTime": "2026-12-07T06:00:00Z"});
        let first = runner.handle(&payload).await.unwrap();
        let again = runner.handle(&payload).await.unwrap();
        assert_eq!(first["fired"], true);
        assert_eq!(first["run"]["outcome"], json!(RunOutcome::Created));
        assert_eq!(first["run"]["taskId"], again["run"]["taskId"]);
    }

    #[tokio::test]
    async fn a_bad_payload_names_its_fields() {
        let (runner, _) = runner();
        let err = runner
            .handle(&json!({"agencyId": "a#1", "scheduleId": "x", "scheduledTime": "<aws.scheduler.scheduled-time>"}))
            .await
            .unwrap_err();
        let AppError::Validation(errors) = err else {
            panic!("expected a validation error");
        };
        let fields: Vec<&String> = errors.iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["agencyId", "scheduleId", "scheduledTime"]);
        assert!(runner.handle(&json!("nope")).await.is_err());
    }
}
