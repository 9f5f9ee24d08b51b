//! Key layout of the single table. ARCHITECTURE.md ("Table design") lists the
//! access pattern each key and index serves; keep the two in step.

use crate::domain::{AgencyId, Task, TaskId, TaskStatus};
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

pub const PK: &str = "PK";
pub const SK: &str = "SK";
pub const TASK_SK: &str = "TASK";
pub const IDEMPOTENCY_SK: &str = "IDEMPOTENCY";
pub const STEP_SK_PREFIX: &str = "STEP#";

/// GSI1: an agency's tasks, newest first (ULIDs sort by creation time).
pub const AGENCY_INDEX: Index = Index {
    name: "GSI1",
    pk: "GSI1PK",
    sk: "GSI1SK",
};
/// GSI2: one assignee's tasks inside an agency, newest first.
pub const ASSIGNEE_INDEX: Index = Index {
    name: "GSI2",
    pk: "GSI2PK",
    sk: "GSI2SK",
};
/// GSI3 (sparse): pending tasks per tier, oldest first, across agencies.
pub const PENDING_INDEX: Index = Index {
    name: "GSI3",
    pk: "GSI3PK",
    sk: "GSI3SK",
};
/// GSI4 (sparse): open tasks with a deadline escalation ahead, bucketed by the day it falls
/// due, soonest first ([`crate::domain::Task::escalation_due_at`]).
pub const DUE_INDEX: Index = Index {
    name: "GSI4",
    pk: "GSI4PK",
    sk: "GSI4SK",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index {
    pub name: &'static str,
    pub pk: &'static str,
    pub sk: &'static str,
}

pub fn task_pk(agency: &AgencyId, id: TaskId) -> String {
    format!("AGENCY#{agency}#TASK#{id}")
}

pub fn idempotency_pk(agency: &AgencyId, key_hash: &str) -> String {
    format!("AGENCY#{agency}#IDEMPOTENCY#{key_hash}")
}

pub fn agency_partition(agency: &AgencyId) -> String {
    format!("AGENCY#{agency}")
}

pub fn assignee_partition(agency: &AgencyId, assignee: &str) -> String {
    format!("AGENCY#{agency}#ASSIGNEE#{assignee}")
}

/// The callback token of a waiting step; outside `STEP#`, so step listings skip it.
pub fn step_token_sk(name: &str) -> String {
    format!("TOKEN#{name}")
}

pub fn tier_partition(tier: crate::domain::Priority) -> String {
    format!("TIER#{tier}")
}

/// Waiting work whose breach is recorded and whose tier can rise no further
/// ([`Task::waits_breached_at_top`]): kept out of the partition the aging scan pages through.
pub fn breached_tier_partition(tier: crate::domain::Priority) -> String {
    format!("TIER#{tier}#BREACHED")
}

pub fn due_partition(day: chrono::NaiveDate) -> String {
    format!("DUE#{}", day.format("%Y-%m-%d"))
}

pub fn agent_pk(agency: &AgencyId, id: &str) -> String {
    format!("AGENCY#{agency}#AGENT#{id}")
}

pub fn agents_partition(agency: &AgencyId) -> String {
    format!("AGENCY#{agency}#AGENTS")
}

pub const AGENT_SK: &str = "AGENT";
/// GSI3 partition of online agents, sorted by last heartbeat.
pub const ONLINE_AGENTS: &str = "AGENTS#ONLINE";

pub fn breach_pk(tier: crate::domain::Priority) -> String {
    format!("SLA#{tier}")
}

/// Splits a `<time>#<agency>#<taskId>` index sort key.
pub fn parse_time_agency_id(sk: &str) -> Option<(DateTime<Utc>, AgencyId, TaskId)> {
    let mut parts = sk.splitn(3, '#');
    let time = DateTime::parse_from_rfc3339(parts.next()?)
        .ok()?
        .with_timezone(&Utc);
    let agency = AgencyId::parse(parts.next()?).ok()?;
    let id = TaskId::parse(parts.next()?).ok()?;
    Some((time, agency, id))
}

pub fn step_sk(name: &str) -> String {
    format!("{STEP_SK_PREFIX}{name}")
}

/// Fixed-width UTC timestamp, so string order is time order.
pub fn sortable_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Primary key plus every index key a task item carries in its current state.
/// Sparse indexes only get keys while the task is in the state they track.
pub fn task_keys(task: &Task) -> HashMap<String, AttributeValue> {
    let id = task.id.to_string();
    let mut keys = HashMap::from([
        (PK.to_owned(), s(task_pk(&task.agency_id, task.id))),
        (SK.to_owned(), s(TASK_SK)),
        (
            AGENCY_INDEX.pk.to_owned(),
            s(agency_partition(&task.agency_id)),
        ),
        (AGENCY_INDEX.sk.to_owned(), s(id.clone())),
        ("entity".to_owned(), s("task")),
    ]);
    if let Some(assignee) = &task.assigned_to {
        keys.insert(
            ASSIGNEE_INDEX.pk.into(),
            s(assignee_partition(&task.agency_id, assignee.as_str())),
        );
        keys.insert(ASSIGNEE_INDEX.sk.into(), s(id.clone()));
    }
    // Waiting work: human tasks not yet picked up, and automated tasks on a queue.
    if matches!(task.status, TaskStatus::Pending | TaskStatus::Queued) {
        let since = task.queued_at.unwrap_or(task.updated_at);
        let partition = if task.waits_breached_at_top() {
            breached_tier_partition(task.priority)
        } else {
            tier_partition(task.priority)
        };
        keys.insert(PENDING_INDEX.pk.into(), s(partition));
        keys.insert(
            PENDING_INDEX.sk.into(),
            s(format!(
                "{}#{}#{}",
                sortable_time(since),
                task.agency_id,
                id
            )),
        );
    }
    if let Some(due) = task.due_at {
        keys.insert("dueEpochMs".into(), n(due.timestamp_millis()));
        // Keyed by when escalation next has work to do, and only while it has: escalated
        // tasks leave the index, so the sweeper's pages hold only actionable entries.
        if let Some(at) = task.escalation_due_at() {
            keys.insert(DUE_INDEX.pk.into(), s(due_partition(at.date_naive())));
            keys.insert(
                DUE_INDEX.sk.into(),
                s(format!("{}#{}#{}", sortable_time(at), task.agency_id, id)),
            );
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sortable_time_is_fixed_width() {
        let a = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::milliseconds(500);
        assert_eq!(sortable_time(a), "2026-01-02T03:04:05.000Z");
        assert!(sortable_time(a) < sortable_time(b));
    }
}
