//! EventBridge Scheduler as the schedules' trigger: one Scheduler schedule per schedule, in
//! the stack's group, invoking the schedule runner with the ids and the scheduled time (the
//! template stays in the table, so the target Input is ~150 bytes whatever the template).

use crate::domain::schedule::{Schedule, ScheduleState};
use crate::domain::{AgencyId, ScheduleId};
use crate::error::AppError;
use crate::ports::ScheduleTrigger;
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_scheduler::primitives::DateTime as SmithyTime;
use aws_sdk_scheduler::types::{
    ActionAfterCompletion, DeadLetterConfig, FlexibleTimeWindow, FlexibleTimeWindowMode,
    RetryPolicy, ScheduleState as SchedulerState, Target,
};
use aws_sdk_scheduler::Client;

/// Scheduler retries a failed invocation this many times, within the event age, then sends
/// it to the dead-letter queue.
pub const RETRY_ATTEMPTS: i32 = 3;
pub const MAX_EVENT_AGE_SECONDS: i32 = 3_600;

/// Where Scheduler sends firings, from the template's outputs (`SCHEDULE_*` variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerTarget {
    pub group: String,
    /// The schedule runner's ARN.
    pub function_arn: String,
    /// The role Scheduler assumes to invoke it.
    pub role_arn: String,
    /// The queue of firings that failed every retry.
    pub dead_letter_arn: String,
}

#[derive(Debug, Clone)]
pub struct EventBridgeScheduler {
    client: Client,
    target: SchedulerTarget,
}

/// The Scheduler schedule's name: the id, unique across agencies (a ULID), 26 of 64 characters.
pub fn schedule_name(id: ScheduleId) -> String {
    id.to_string()
}

/// The target Input: Scheduler replaces `<aws.scheduler.scheduled-time>` with the firing's time.
pub fn target_input(agency: &AgencyId, id: ScheduleId) -> String {
    serde_json::json!({
        "agencyId": agency.as_str(),
        "scheduleId": id.to_string(),
        "scheduledTime": "<aws.scheduler.scheduled-time>",
    })
    .to_string()
}

impl EventBridgeScheduler {
    pub fn new(client: Client, target: SchedulerTarget) -> Self {
        Self { client, target }
    }

    fn parts(&self, schedule: &Schedule) -> Result<(Target, FlexibleTimeWindow), AppError> {
        let target = Target::builder()
            .arn(&self.target.function_arn)
            .role_arn(&self.target.role_arn)
            .input(target_input(&schedule.agency_id, schedule.id))
            .retry_policy(
                RetryPolicy::builder()
                    .maximum_retry_attempts(RETRY_ATTEMPTS)
                    .maximum_event_age_in_seconds(MAX_EVENT_AGE_SECONDS)
                    .build(),
            )
            .dead_letter_config(
                DeadLetterConfig::builder()
                    .arn(&self.target.dead_letter_arn)
                    .build(),
            )
            .build()
            .map_err(AppError::internal)?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(AppError::internal)?;
        Ok((target, window))
    }
}

fn smithy(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<SmithyTime> {
    t.map(|t| SmithyTime::from_secs(t.timestamp()))
}

/// The StartDate to send. Scheduler refuses one more than 5 minutes in the past, which a
/// schedule's own start becomes once it has begun (a later pause or edit sends it again): a
/// cron's past start bounds nothing any more and is left out; a rate's is moved to its next
/// firing, which keeps the rate's phase (a rate without a start would restart from now).
pub fn start_date(
    schedule: &Schedule,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let start = schedule.start_at?;
    if start >= now {
        return Some(start);
    }
    if schedule.expression.trim_start().starts_with("rate(") {
        schedule
            .next_firings(now - chrono::Duration::seconds(1), 1)
            .into_iter()
            .next()
    } else {
        None
    }
}

fn state(schedule: &Schedule) -> SchedulerState {
    match schedule.state {
        ScheduleState::Enabled => SchedulerState::Enabled,
        ScheduleState::Paused => SchedulerState::Disabled,
    }
}

#[async_trait]
impl ScheduleTrigger for EventBridgeScheduler {
    async fn put(&self, schedule: &Schedule) -> Result<(), AppError> {
        let (target, window) = self.parts(schedule)?;
        let name = schedule_name(schedule.id);
        let updated = self
            .client
            .update_schedule()
            .name(&name)
            .group_name(&self.target.group)
            .schedule_expression(&schedule.expression)
            .schedule_expression_timezone(&schedule.time_zone)
            .set_start_date(smithy(start_date(schedule, chrono::Utc::now())))
            .set_end_date(smithy(schedule.end_at))
            .state(state(schedule))
            .flexible_time_window(window.clone())
            .target(target.clone())
            .action_after_completion(ActionAfterCompletion::None)
            .description(
                format!("{}: {}", schedule.agency_id, schedule.name)
                    .chars()
                    .take(512)
                    .collect::<String>(),
            )
            .send()
            .await;
        match updated {
            Ok(_) => return Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(err) => return Err(from_sdk("scheduler:UpdateSchedule", err)),
        }
        self.client
            .create_schedule()
            .name(&name)
            .group_name(&self.target.group)
            .schedule_expression(&schedule.expression)
            .schedule_expression_timezone(&schedule.time_zone)
            .set_start_date(smithy(start_date(schedule, chrono::Utc::now())))
            .set_end_date(smithy(schedule.end_at))
            .state(state(schedule))
            .flexible_time_window(window)
            .target(target)
            .action_after_completion(ActionAfterCompletion::None)
            .description(
                format!("{}: {}", schedule.agency_id, schedule.name)
                    .chars()
                    .take(512)
                    .collect::<String>(),
            )
            .send()
            .await
            .map_err(|e| from_sdk("scheduler:CreateSchedule", e))?;
        Ok(())
    }

    async fn delete(&self, _agency: &AgencyId, id: ScheduleId) -> Result<(), AppError> {
        match self
            .client
            .delete_schedule()
            .name(schedule_name(id))
            .group_name(&self.target.group)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(from_sdk("scheduler:DeleteSchedule", err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn schedule(expression: &str, start: Option<chrono::DateTime<Utc>>) -> Schedule {
        let mut s = crate::testing::sample_schedule("a1", "01JD0000000000000000000S01", "boss");
        s.expression = expression.into();
        s.start_at = start;
        s
    }

    #[test]
    fn a_start_in_the_past_is_never_sent() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 10, 7, 30).unwrap();
        let future = now + chrono::Duration::hours(1);
        assert_eq!(
            start_date(&schedule("cron(0 6 * * ? *)", Some(future)), now),
            Some(future)
        );
        let past = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        assert_eq!(
            start_date(&schedule("cron(0 6 * * ? *)", Some(past)), now),
            None
        );
        // rate(15 minutes) from 09:00: the next firing after 10:07:30 is 10:15, same phase.
        assert_eq!(
            start_date(&schedule("rate(15 minutes)", Some(past)), now),
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 10, 15, 0).unwrap())
        );
        assert_eq!(start_date(&schedule("rate(15 minutes)", None), now), None);
    }

    #[test]
    fn the_target_input_names_the_schedule_and_asks_for_the_scheduled_time() {
        let id = ScheduleId::parse("01JD0000000000000000000S01").unwrap();
        let input: serde_json::Value =
            serde_json::from_str(&target_input(&AgencyId::parse("a1").unwrap(), id)).unwrap();
        assert_eq!(
            input,
            serde_json::json!({"agencyId": "a1", "scheduleId": id.to_string(), "scheduledTime": "<aws.scheduler.scheduled-time>"})
        );
    }
}
