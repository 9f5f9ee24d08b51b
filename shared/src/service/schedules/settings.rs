//! Where schedules fire and how many an agency may have, read once per cold start; and the
//! trigger of a function that only fires schedules.

use super::{DEFAULT_SCHEDULE_LIMIT, MAX_SCHEDULE_LIMIT};
use crate::domain::schedule::Schedule;
use crate::domain::ScheduleId;
use crate::error::AppError;
use crate::ports::ScheduleTrigger;

/// Where schedules fire and how many an agency may have, from the environment:
/// `SCHEDULE_GROUP`, `SCHEDULE_TARGET_ARN`, `SCHEDULE_ROLE_ARN`, `SCHEDULE_DLQ_ARN` (all or
/// none; only the API changes triggers) and `QUOTA_SCHEDULES` (default
/// [`DEFAULT_SCHEDULE_LIMIT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSettings {
    pub target: Option<crate::store::SchedulerTarget>,
    pub limit: u32,
}

impl Default for ScheduleSettings {
    /// No trigger, the default limit.
    fn default() -> Self {
        Self {
            target: None,
            limit: DEFAULT_SCHEDULE_LIMIT,
        }
    }
}

impl ScheduleSettings {
    pub fn from_env() -> Result<Self, AppError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AppError> {
        let get = |key: &str| lookup(key).filter(|v| !v.is_empty());
        let parts = [
            get("SCHEDULE_GROUP"),
            get("SCHEDULE_TARGET_ARN"),
            get("SCHEDULE_ROLE_ARN"),
            get("SCHEDULE_DLQ_ARN"),
        ];
        let target = match parts {
            [Some(group), Some(function_arn), Some(role_arn), Some(dead_letter_arn)] => {
                Some(crate::store::SchedulerTarget {
                    group,
                    function_arn,
                    role_arn,
                    dead_letter_arn,
                })
            }
            [None, None, None, None] => None,
            _ => {
                return Err(AppError::internal(
                    "SCHEDULE_GROUP, SCHEDULE_TARGET_ARN, SCHEDULE_ROLE_ARN and SCHEDULE_DLQ_ARN go together",
                ))
            }
        };
        let limit = match get("QUOTA_SCHEDULES") {
            None => DEFAULT_SCHEDULE_LIMIT,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_SCHEDULE_LIMIT).contains(n))
                .ok_or_else(|| {
                    AppError::internal(format!(
                        "QUOTA_SCHEDULES must be a number from 1 to {MAX_SCHEDULE_LIMIT}"
                    ))
                })?,
        };
        Ok(Self { target, limit })
    }
}

/// The trigger of a function that only fires schedules: changing one is not its job.
pub struct Unconfigured;

#[async_trait::async_trait]
impl ScheduleTrigger for Unconfigured {
    async fn put(&self, _schedule: &Schedule) -> Result<(), AppError> {
        Err(AppError::Unavailable(
            "schedules cannot be changed: SCHEDULE_* is not configured".into(),
        ))
    }
    async fn delete(
        &self,
        _agency: &crate::domain::AgencyId,
        _id: ScheduleId,
    ) -> Result<(), AppError> {
        Err(AppError::Unavailable(
            "schedules cannot be changed: SCHEDULE_* is not configured".into(),
        ))
    }
}
