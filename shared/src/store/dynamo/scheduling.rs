//! Cross-agency scans for the sweeper (sparse GSI3 and GSI4) and SLA breach records.

use super::keys::{self, n, s, Index, AGENCY_INDEX, DUE_INDEX, PENDING_INDEX, PK, SK, TASK_SK};
use super::list::batch_get;
use crate::domain::{AgencyId, Priority, TaskStatus};
use crate::error::AppError;
use crate::ports::{AgencyWaiting, Bounded, SchedulingIndex, WaitingTask};
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Select};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::collections::HashMap;

/// Breach records are kept this long (the API reports the last hour).
const BREACH_TTL_SECS: i64 = 2 * 24 * 60 * 60;
/// How far back the deadline scan looks for overdue work.
const OVERDUE_LOOKBACK_DAYS: i64 = 7;

#[derive(Debug, Clone)]
pub struct DynamoSchedulingIndex {
    client: Client,
    table: String,
}

impl DynamoSchedulingIndex {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

impl DynamoSchedulingIndex {
    /// Appends the entries of one index partition whose sort key is `op` `upper` (`<`, `<=`),
    /// in order, from `start` on, until `found` holds `limit` entries or the partition ends.
    #[allow(clippy::too_many_arguments)]
    async fn read_partition(
        &self,
        index: &Index,
        partition: &str,
        op: &str,
        upper: &str,
        mut start: Option<HashMap<String, AttributeValue>>,
        limit: usize,
        found: &mut Vec<WaitingTask>,
    ) -> Result<(), AppError> {
        while found.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index.name)
                .key_condition_expression(format!("{} = :p AND {} {op} :upper", index.pk, index.sk))
                .expression_attribute_values(":p", s(partition))
                .expression_attribute_values(":upper", s(upper))
                .limit(i32::try_from(limit - found.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            found.extend(
                out.items
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|item| item.get(index.sk)?.as_s().ok().cloned())
                    .filter_map(|sk| keys::parse_time_agency_id(&sk))
                    .map(|(since, agency, id)| WaitingTask { agency, id, since }),
            );
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(())
    }
}

/// Merges shards' pages (each oldest first) into the `limit` oldest entries, in index order
/// (`<time>#<agency>#<task>`, so equal times stay in a stable order across pages).
pub(crate) fn merge_oldest_first(shards: Vec<Vec<WaitingTask>>, limit: usize) -> Vec<WaitingTask> {
    let mut all: Vec<WaitingTask> = shards.into_iter().flatten().collect();
    all.sort_by_cached_key(index_order);
    all.dedup_by(|a, b| a.agency == b.agency && a.id == b.id);
    all.truncate(limit);
    all
}

/// An entry's place in its index: its sort key.
fn index_order(entry: &WaitingTask) -> String {
    format!(
        "{}#{}#{}",
        keys::sortable_time(entry.since),
        entry.agency,
        entry.id
    )
}

/// What an index or breach sort key (`<time>#<agency>#<task>`) holds for `agency`: ids cannot
/// contain '#', so this matches that agency and no other.
fn agency_tag(agency: &AgencyId) -> String {
    format!("#{agency}#")
}

fn page_limit(limit: usize) -> i32 {
    i32::try_from(limit.max(1)).unwrap_or(i32::MAX)
}

/// The exclusive start key that resumes a partition's query right after `after`'s entry.
fn start_after(
    index: &Index,
    partition: &str,
    after: &WaitingTask,
) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (index.pk.to_owned(), s(partition)),
        (
            index.sk.to_owned(),
            s(format!(
                "{}#{}#{}",
                keys::sortable_time(after.since),
                after.agency,
                after.id
            )),
        ),
        (PK.to_owned(), s(keys::task_pk(&after.agency, after.id))),
        (SK.to_owned(), s(TASK_SK)),
    ])
}

#[async_trait]
impl SchedulingIndex for DynamoSchedulingIndex {
    async fn waiting(
        &self,
        tier: Priority,
        breached: bool,
        before: DateTime<Utc>,
        after: Option<&WaitingTask>,
        limit: usize,
    ) -> Result<Vec<WaitingTask>, AppError> {
        // The tier is sharded: each shard's `limit` oldest entries past `after` hold the tier's
        // `limit` oldest, so the merge of those pages is the tier's page. `after` positions every
        // shard (a start key need not be an entry of that shard).
        let upper = keys::sortable_time(before);
        let mut shards = Vec::new();
        for partition in keys::tier_partitions(tier, breached) {
            let mut found = Vec::new();
            self.read_partition(
                &PENDING_INDEX,
                &partition,
                "<",
                &upper,
                after.map(|a| start_after(&PENDING_INDEX, &partition, a)),
                limit,
                &mut found,
            )
            .await?;
            shards.push(found);
        }
        Ok(merge_oldest_first(shards, limit))
    }

    async fn due_before(
        &self,
        before: DateTime<Utc>,
        after: Option<&WaitingTask>,
        limit: usize,
    ) -> Result<Vec<WaitingTask>, AppError> {
        // One partition per day: walk the days in order, resuming in `after`'s own day.
        let lookback = (before - chrono::Duration::days(OVERDUE_LOOKBACK_DAYS)).date_naive();
        let mut day = after.map_or(lookback, |a| a.since.date_naive().max(lookback));
        let upper = keys::sortable_time(before);
        let mut found = Vec::new();
        while day <= before.date_naive() && found.len() < limit {
            let partition = keys::due_partition(day);
            let start = after
                .filter(|a| a.since.date_naive() == day)
                .map(|a| start_after(&DUE_INDEX, &partition, a));
            self.read_partition(
                &DUE_INDEX, &partition, "<=", &upper, start, limit, &mut found,
            )
            .await?;
            let Some(next) = day.succ_opt() else { break };
            day = next;
        }
        Ok(found)
    }

    async fn record_breach(
        &self,
        tier: Priority,
        task: &WaitingTask,
        at: DateTime<Utc>,
    ) -> Result<(), AppError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(keys::breach_pk(tier)))
            .item(
                SK,
                s(format!(
                    "{}#{}#{}",
                    keys::sortable_time(at),
                    task.agency,
                    task.id
                )),
            )
            .item("entity", s("sla_breach"))
            .item("waitingSince", s(keys::sortable_time(task.since)))
            .item("expiresAt", n(at.timestamp() + BREACH_TTL_SECS))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:PutItem", e))?;
        Ok(())
    }

    async fn agency_waiting(
        &self,
        tier: Priority,
        agency: &AgencyId,
        limit: usize,
    ) -> Result<AgencyWaiting, AppError> {
        let mut waiting = AgencyWaiting {
            count: 0,
            oldest: None,
            exact: true,
        };
        // A page for the tier's waiting work and one for its breached work, each split over
        // the shards (entries spread evenly over them), oldest first; Limit bounds the entries
        // read, before the filter.
        let per_partition = limit.div_ceil(keys::TIER_SHARDS as usize).max(1);
        let partitions = [
            keys::tier_partitions(tier, false),
            keys::tier_partitions(tier, true),
        ]
        .concat();
        for partition in partitions {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PENDING_INDEX.name)
                .key_condition_expression(format!("{} = :p", PENDING_INDEX.pk))
                .filter_expression(format!("contains({}, :agency)", PENDING_INDEX.sk))
                .projection_expression(PENDING_INDEX.sk)
                .expression_attribute_values(":p", s(partition))
                .expression_attribute_values(":agency", s(agency_tag(agency)))
                .limit(page_limit(per_partition))
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            waiting.count += out.count.max(0) as u64;
            waiting.exact &= out.last_evaluated_key.is_none();
            let first = out
                .items
                .unwrap_or_default()
                .iter()
                .filter_map(|item| item.get(PENDING_INDEX.sk)?.as_s().ok().cloned())
                .find_map(|sk| keys::parse_time_agency_id(&sk))
                .map(|(since, _, _)| since);
            waiting.oldest = match (waiting.oldest, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(waiting)
    }

    async fn agency_breaches_between(
        &self,
        tier: Priority,
        agency: &AgencyId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Bounded, AppError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :p AND SK BETWEEN :from AND :until")
            .filter_expression("contains(SK, :agency)")
            .expression_attribute_values(":p", s(keys::breach_pk(tier)))
            .expression_attribute_values(":from", s(keys::sortable_time(from)))
            .expression_attribute_values(":until", s(format!("{}$", keys::sortable_time(until))))
            .expression_attribute_values(":agency", s(agency_tag(agency)))
            .select(Select::Count)
            .limit(page_limit(limit))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        Ok(Bounded {
            count: out.count.max(0) as u64,
            exact: out.last_evaluated_key.is_none(),
        })
    }

    async fn agency_in_flight(
        &self,
        agency: &AgencyId,
        limit: usize,
    ) -> Result<(BTreeMap<Priority, u64>, bool), AppError> {
        // The agency's newest automated tasks: work a worker holds is recent, and GSI1 is the
        // agency's own partition, so other agencies' volume cannot push it out of the page.
        // The index holds no status (it would be written on every status change): the
        // candidates are read (eventually consistent, half the read units) and counted by it.
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(AGENCY_INDEX.name)
            .key_condition_expression(format!("{} = :p", AGENCY_INDEX.pk))
            .filter_expression(format!("entity = :task AND {} = :yes", keys::AUTOMATED))
            .projection_expression("PK, SK")
            .expression_attribute_values(":p", s(keys::agency_partition(agency)))
            .expression_attribute_values(":task", s("task"))
            .expression_attribute_values(":yes", s("yes"))
            .scan_index_forward(false)
            .limit(page_limit(limit))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        let keys = out.items.unwrap_or_default();
        let mut per_tier = BTreeMap::new();
        for task in batch_get(&self.client, &self.table, keys, false).await? {
            let held = task
                .get("status")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                == Some(TaskStatus::InProgress.as_str());
            let tier = task
                .get("priority")
                .and_then(|v| v.as_s().ok())
                .and_then(|v| v.parse::<Priority>().ok());
            if let (true, Some(tier)) = (held, tier) {
                *per_tier.entry(tier).or_insert(0) += 1;
            }
        }
        Ok((per_tier, out.last_evaluated_key.is_none()))
    }

    async fn breaches_between(
        &self,
        tier: Priority,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<u64, AppError> {
        // Sort keys are `<time>#<agency>#<task>`: '$' sorts after '#', so every breach recorded
        // at `until` itself is inside the range.
        let upper = format!("{}$", keys::sortable_time(until));
        let mut total = 0u64;
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :p AND SK BETWEEN :from AND :until")
                .expression_attribute_values(":p", s(keys::breach_pk(tier)))
                .expression_attribute_values(":from", s(keys::sortable_time(from)))
                .expression_attribute_values(":until", s(upper.clone()))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            total += out.count.max(0) as u64;
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;
    use chrono::TimeZone;

    fn entry(agency: &str, minute: u32) -> WaitingTask {
        WaitingTask {
            agency: AgencyId::parse(agency).unwrap(),
            id: TaskId::generate(),
            since: Utc.with_ymd_and_hms(2026, 1, 1, 0, minute, 0).unwrap(),
        }
    }

    /// Pages across shards, as the sweeper pages through a tier: every entry once, oldest
    /// first, whichever shard holds it, with no gap where one shard runs out before another.
    #[test]
    fn shard_pages_merge_oldest_first_with_no_duplicates_or_gaps_across_pages() {
        // Four shards with interleaved and uneven entries (one shard empty, one deep).
        let shards: Vec<Vec<WaitingTask>> = vec![
            vec![entry("a", 1), entry("b", 5), entry("a", 9)],
            vec![],
            (10..30).map(|m| entry("c", m)).collect(),
            vec![entry("a", 0), entry("d", 5)],
        ];
        let all: Vec<WaitingTask> = {
            let mut all: Vec<WaitingTask> = shards.iter().flatten().cloned().collect();
            all.sort_by_cached_key(index_order);
            all
        };
        // What a shard's query returns for a page: its `limit` oldest entries after `after`.
        let read = |shard: &Vec<WaitingTask>, after: Option<&WaitingTask>, limit: usize| {
            shard
                .iter()
                .filter(|e| after.is_none_or(|a| index_order(e) > index_order(a)))
                .take(limit)
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut seen = Vec::new();
        let mut after: Option<WaitingTask> = None;
        loop {
            let pages = shards.iter().map(|s| read(s, after.as_ref(), 4)).collect();
            let page = merge_oldest_first(pages, 4);
            seen.extend(page.iter().cloned());
            if page.len() < 4 {
                break;
            }
            after = page.last().cloned();
        }
        assert_eq!(seen, all);
        assert_eq!(seen.len(), 25);
    }
}
