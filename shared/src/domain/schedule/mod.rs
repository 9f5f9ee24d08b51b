//! Schedules: a task template fired on a cron or rate expression in a time zone.
//! Pure domain: parsing, next firing times and the records the store keeps.

pub mod cron;
pub mod expression;
#[cfg(test)]
mod tests;

pub use expression::Expression;

use super::{AgencyId, TaskId, UserId};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an expression or time zone was refused; the message names the part and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionError(pub String);

impl fmt::Display for ExpressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IANA time zone name (`Europe/London`), as Scheduler's `ScheduleExpressionTimezone` takes.
pub fn parse_time_zone(raw: &str) -> Result<Tz, String> {
    raw.parse::<Tz>().map_err(|_| {
        format!("'{raw}' is not an IANA time zone name (e.g. UTC, Europe/London, America/New_York)")
    })
}

/// What a firing does while the task of the last run is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Create nothing; the run is recorded as skipped.
    #[default]
    Skip,
    /// Create the task anyway.
    Allow,
    /// Cancel the open task, then create the new one.
    CancelPrevious,
}

impl std::str::FromStr for OverlapPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Self::Skip),
            "allow" => Ok(Self::Allow),
            "cancel_previous" => Ok(Self::CancelPrevious),
            _ => Err("must be one of skip, allow, cancel_previous".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    Enabled,
    Paused,
}

/// A stored schedule. `template` is a `POST /api/tasks` body, validated when it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub id: super::ScheduleId,
    pub agency_id: AgencyId,
    pub name: String,
    pub expression: String,
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<DateTime<Utc>>,
    pub overlap_policy: OverlapPolicy,
    pub state: ScheduleState,
    pub template: serde_json::Value,
    /// The manager whose tasks the firings create.
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

impl Schedule {
    /// The parsed expression and zone (both were validated when stored).
    fn parsed(&self) -> Option<(Expression, Tz)> {
        Some((
            Expression::parse(&self.expression).ok()?,
            parse_time_zone(&self.time_zone).ok()?,
        ))
    }

    /// A rate's first firing: its start date, else the moment it was last set (Scheduler
    /// starts a rate at once when it has no start date).
    pub fn anchor(&self) -> DateTime<Utc> {
        self.start_at.unwrap_or(self.updated_at)
    }

    /// Whether `at` is inside the start and end dates (the end is exclusive, as on Scheduler).
    pub fn in_window(&self, at: DateTime<Utc>) -> bool {
        self.start_at.is_none_or(|s| at >= s) && self.end_at.is_none_or(|e| at < e)
    }

    /// The next `count` firings strictly after `after`, inside the start and end dates.
    pub fn next_firings(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let Some((expression, tz)) = self.parsed() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(count);
        // A cron's firings before the start date are skipped: search from just before it.
        let mut cursor = match self.start_at {
            Some(start) if start > after => start - chrono::Duration::seconds(1),
            _ => after,
        };
        while out.len() < count {
            let Some(next) = expression.next_after(cursor, tz, self.anchor()) else {
                break;
            };
            if self.end_at.is_some_and(|end| next >= end) {
                break;
            }
            if next > after {
                out.push(next);
            }
            cursor = next;
        }
        out
    }
}

/// What one firing did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// A task was created (or, for a repeated firing, found).
    Created,
    /// The last run's task was still open and the policy is `skip`.
    Skipped,
}

/// One firing of a schedule, keyed by its scheduled time (a repeat overwrites it with the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRun {
    pub scheduled_at: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    /// The open task cancelled first (`cancel_previous`) or that caused the skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_task_id: Option<TaskId>,
}

/// The idempotency key of a firing's task: the same schedule and scheduled time always give
/// the same key, so a repeated firing (a retry, a host restart) finds the first task.
pub fn firing_key(id: super::ScheduleId, scheduled_at: DateTime<Utc>) -> String {
    format!("schedule:{id}:{}", scheduled_at.timestamp())
}
