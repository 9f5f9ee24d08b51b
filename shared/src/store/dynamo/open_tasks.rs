//! The open-tasks counter of each agency (the `openTasks` quota), split over
//! [`OPEN_TASK_SHARDS`] items `PK = AGENCY#<id>#QUOTA`, `SK = OPEN_TASKS#<shard>`.
//!
//! Every write that opens or closes a task carries one of these updates in its own
//! transaction, so the counter moves exactly when the task does and cannot drift. The pieces
//! here are the whole protocol, for any store that opens or closes tasks (the batch store
//! does not use them yet: batch tasks are not counted).
//!
//! Why shards: a transactional write costs 2 write units, and at 278 tasks/s two of them
//! per task on one item would be ~1,100 WCU/s, past DynamoDB's ~1,000 per partition.
//! Why the ceiling stays exact: shard `i` admits an opening only while its count is below
//! its share `cap_i` (the shares sum to the limit), and an opening that finds its shard full
//! tries the others. A closing decrements the shard the task's id names, which need not be
//! the one its opening used, so a single shard's count may go below zero or sit at its share;
//! only the sum is the number of open tasks. Every count stays ≤ its share (only a checked
//! increment raises it), so the sum never passes the limit, and an opening is refused only
//! when every shard is at its share, that is when the sum has reached the limit.

use super::keys::{n, s, PK, SK};
use super::quotas::quota_pk;
use crate::domain::{AgencyId, TaskId};
use crate::error::AppError;
use crate::store::from_sdk;
use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;

/// How many items one agency's counter is split over (see the module docs for the rate).
pub const OPEN_TASK_SHARDS: u64 = 4;
pub const OPEN_TASKS_SK_PREFIX: &str = "OPEN_TASKS#";
const COUNT: &str = "openTasks";

fn shard_sk(shard: u64) -> String {
    format!("{OPEN_TASKS_SK_PREFIX}{shard}")
}

/// The shard a task's id names: where its opening is tried first and its closing counted.
pub fn home_shard(id: TaskId) -> u64 {
    // The ULID's random tail (its last characters) spreads an agency's tasks evenly.
    id.to_string()
        .bytes()
        .rev()
        .take(4)
        .fold(0u64, |acc, b| acc * 31 + u64::from(b))
        % OPEN_TASK_SHARDS
}

/// The shards an opening of `id` tries, in order, each with its share of `limit`
/// (the shares sum to `limit`).
pub fn opening_order(id: TaskId, limit: u64) -> impl Iterator<Item = (u64, u64)> {
    let home = home_shard(id);
    (0..OPEN_TASK_SHARDS).map(move |k| {
        let shard = (home + k) % OPEN_TASK_SHARDS;
        let share = limit / OPEN_TASK_SHARDS + u64::from(shard < limit % OPEN_TASK_SHARDS);
        (shard, share)
    })
}

/// The transaction item that opens a task on `shard`: +1 if its count is below `share`.
/// A cancellation on this item (ConditionalCheckFailed) means the shard is full.
pub fn open_one(
    table: &str,
    agency: &AgencyId,
    shard: u64,
    share: u64,
) -> Result<TransactWriteItem, AppError> {
    Update::builder()
        .table_name(table)
        .key(PK, s(quota_pk(agency)))
        .key(SK, s(shard_sk(shard)))
        .update_expression("ADD #count :one")
        // A missing count is 0, which is below any share but a share of 0 (limits below
        // the shard count leave some shards none).
        .condition_expression(if share == 0 {
            "#count < :share"
        } else {
            "attribute_not_exists(#count) OR #count < :share"
        })
        .expression_attribute_names("#count", COUNT)
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":share", n(share))
        .build()
        .map(|u| TransactWriteItem::builder().update(u).build())
        .map_err(AppError::internal)
}

/// The transaction item that closes task `id`: −1 on its home shard, unconditionally.
pub fn close_one(
    table: &str,
    agency: &AgencyId,
    id: TaskId,
) -> Result<TransactWriteItem, AppError> {
    Update::builder()
        .table_name(table)
        .key(PK, s(quota_pk(agency)))
        .key(SK, s(shard_sk(home_shard(id))))
        .update_expression("ADD #count :minus_one")
        .expression_attribute_names("#count", COUNT)
        .expression_attribute_values(":minus_one", n(-1))
        .build()
        .map(|u| TransactWriteItem::builder().update(u).build())
        .map_err(AppError::internal)
}

/// The agency's open tasks: the sum over its shards (a strongly consistent query of one
/// small partition). For tests and operators; the writes never need it.
pub async fn open_tasks(client: &Client, table: &str, agency: &AgencyId) -> Result<i64, AppError> {
    let out = client
        .query()
        .table_name(table)
        .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
        .expression_attribute_values(":pk", s(quota_pk(agency)))
        .expression_attribute_values(":prefix", s(OPEN_TASKS_SK_PREFIX))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| from_sdk("dynamodb:Query", e))?;
    Ok(out
        .items
        .unwrap_or_default()
        .iter()
        .filter_map(|item| item.get(COUNT)?.as_n().ok()?.parse::<i64>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_sum_to_the_limit_and_every_shard_is_tried_once() {
        for limit in [0, 1, 3, 4, 5, 7, 100_000] {
            let id = TaskId::generate();
            let order: Vec<_> = opening_order(id, limit).collect();
            assert_eq!(order[0].0, home_shard(id));
            let mut shards: Vec<_> = order.iter().map(|(shard, _)| *shard).collect();
            shards.sort_unstable();
            assert_eq!(shards, (0..OPEN_TASK_SHARDS).collect::<Vec<_>>());
            assert_eq!(order.iter().map(|(_, share)| share).sum::<u64>(), limit);
        }
    }

    #[test]
    fn task_ids_spread_over_the_shards() {
        let mut per_shard = [0u32; OPEN_TASK_SHARDS as usize];
        for _ in 0..4_000 {
            per_shard[home_shard(TaskId::generate()) as usize] += 1;
        }
        assert!(
            per_shard.iter().all(|n| (800..1_200).contains(n)),
            "{per_shard:?}"
        );
    }
}
