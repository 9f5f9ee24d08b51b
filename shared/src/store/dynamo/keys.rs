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
/// On tasks a worker runs (those with an executor); absent on people's tasks.
pub const AUTOMATED: &str = "automated";

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

/// GSI3 partitions per tier (and per tier's breached work). A waiting task costs its tier two
/// index writes of under 1 KB (insert when it starts waiting, delete when it is picked up), and
/// the sort key is time-ordered, so every insert lands at the same end of the partition: 278
/// tasks/s in one tier (1M/hour, the target) is ~560 WCU/s on one partition, over half of
/// DynamoDB's ~1,000. Four shards carry ~140 WCU/s each at the target, and one tier can take
/// ~1,000 tasks/s (3.6M/hour) with every shard still at half the limit.
pub const TIER_SHARDS: u32 = 4;

/// GSI3 partitions of online agents. A heartbeat moves the agent's entry (its sort key is the
/// beat's time: a delete and an insert, 2 WCU): 10,000 agents beating every 30 s are ~670 WCU/s
/// on one partition. Eight shards carry ~85 WCU/s each at 10,000 agents, and hold ~60,000
/// agents with every shard at half the limit.
pub const ONLINE_AGENT_SHARDS: u32 = 8;

/// A stable shard in `0..shards` for `key` (FNV-1a: the same in every process and release,
/// which a write and the later write that moves or deletes the same entry rely on).
pub fn shard_of(key: &str, shards: u32) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % u64::from(shards.max(1))) as u32
}

/// The tier shard of a task: from its id, so every write of the task addresses the same one.
pub fn task_tier_shard(id: TaskId) -> u32 {
    shard_of(&id.to_string(), TIER_SHARDS)
}

pub fn tier_partition(tier: crate::domain::Priority, shard: u32) -> String {
    format!("TIER#{tier}#{shard}")
}

/// Waiting work whose breach is recorded and whose tier can rise no further
/// ([`Task::waits_breached_at_top`]): kept out of the partitions the aging scan pages through.
pub fn breached_tier_partition(tier: crate::domain::Priority, shard: u32) -> String {
    format!("TIER#{tier}#BREACHED#{shard}")
}

/// Every shard of a tier's waiting work (or of its breached work): readers merge them.
pub fn tier_partitions(tier: crate::domain::Priority, breached: bool) -> Vec<String> {
    (0..TIER_SHARDS)
        .map(|shard| {
            if breached {
                breached_tier_partition(tier, shard)
            } else {
                tier_partition(tier, shard)
            }
        })
        .collect()
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

/// The GSI3 partition of an online agent, sorted by last heartbeat: one of
/// [`ONLINE_AGENT_SHARDS`], from the agent's agency and id.
pub fn online_agents_partition(agency: &AgencyId, id: &str) -> String {
    format!(
        "AGENTS#ONLINE#{}",
        shard_of(&format!("{agency}#{id}"), ONLINE_AGENT_SHARDS)
    )
}

/// Every shard of the online agents: the stale-agent scan reads them all.
pub fn online_agents_partitions() -> Vec<String> {
    (0..ONLINE_AGENT_SHARDS)
        .map(|shard| format!("AGENTS#ONLINE#{shard}"))
        .collect()
}

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
    // Projected into GSI1 (the task's full `executor` is not), for the queue figures' in-flight
    // count; it never changes, so it costs the index no write.
    if task.executor.is_some() {
        keys.insert(AUTOMATED.to_owned(), s("yes"));
    }
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
        let shard = task_tier_shard(task.id);
        let partition = if task.waits_breached_at_top() {
            breached_tier_partition(task.priority, shard)
        } else {
            tier_partition(task.priority, shard)
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

    #[test]
    fn shards_are_stable_and_spread_evenly() {
        // Pinned: a write and the later write that moves or deletes the same index entry must
        // agree on the shard, in any process and any release.
        assert_eq!(shard_of("", 4), 0xcbf2_9ce4_8422_2325_u64 as u32 % 4);
        assert_eq!(
            shard_of("a", 1_000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1_000) as u32
        );
        let mut per_shard = [0u32; TIER_SHARDS as usize];
        for _ in 0..4_000 {
            per_shard[task_tier_shard(TaskId::generate()) as usize] += 1;
        }
        // 1,000 expected each; 800 is far outside chance for an even hash.
        assert!(per_shard.iter().all(|&n| n > 800), "{per_shard:?}");
        let agency = AgencyId::parse("acme").unwrap();
        let mut agents = std::collections::HashSet::new();
        for n in 0..400 {
            let partition = online_agents_partition(&agency, &format!("agent-{n}"));
            assert!(
                online_agents_partitions().contains(&partition),
                "{partition}"
            );
            agents.insert(partition);
        }
        assert_eq!(agents.len(), ONLINE_AGENT_SHARDS as usize);
        assert_eq!(
            online_agents_partition(&agency, "agent-7"),
            online_agents_partition(&agency, "agent-7")
        );
    }

    #[test]
    fn waiting_work_goes_to_its_ids_tier_shard_and_breached_work_to_the_same_shard_apart() {
        let now = Utc::now();
        let mut task: Task = serde_json::from_value(serde_json::json!({
            "id": TaskId::generate(), "agencyId": "acme", "createdBy": "boss", "title": "t",
            "type": "simple", "priority": "critical", "status": "pending", "version": 1,
            "createdAt": now, "updatedAt": now,
        }))
        .unwrap();
        let shard = task_tier_shard(task.id);
        let gsi3 = |task: &Task| {
            task_keys(task)
                .get(PENDING_INDEX.pk)
                .and_then(|v| v.as_s().ok().cloned())
        };
        assert_eq!(gsi3(&task), Some(format!("TIER#critical#{shard}")));
        assert!(tier_partitions(crate::domain::Priority::Critical, false)
            .contains(&gsi3(&task).unwrap()));
        task.sla_breached_at = Some(Utc::now());
        assert_eq!(gsi3(&task), Some(format!("TIER#critical#BREACHED#{shard}")));
        assert!(tier_partitions(crate::domain::Priority::Critical, true)
            .contains(&gsi3(&task).unwrap()));
        task.status = TaskStatus::Completed;
        assert_eq!(gsi3(&task), None);
    }
}
