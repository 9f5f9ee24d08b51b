//! The open-tasks counter of each agency (the `openTasks` quota), split over
//! [`OPEN_TASK_SHARDS`] items `PK = AGENCY#<id>#QUOTA`, `SK = OPEN_TASKS#<shard>`.
//!
//! **Never under the truth, so the ceiling holds.** A write that opens a task first takes
//! its place on the counter (a checked increment, [`open`]) and then writes the task; a
//! write that closes one first writes the task and then gives the place back ([`close`]).
//! A task write that is refused gives back the place it took ([`undo_open`]); one whose
//! outcome is unknown (a timeout) keeps it. So the count can only run over the number of
//! open tasks, by one for each such unknown outcome or for a process that dies between the
//! two writes (a few milliseconds apart), and never under it.
//!
//! Why not one transaction, as before: a transactional write bills twice, so the two
//! transactions of a task's life (open, close) cost 8 write units, against 4 for the same
//! four single-item writes (issue 16: cost as AWS bills it). Deleting an open task, rare,
//! still moves the counter in the delete's own transaction.
//!
//! Why shards: at 278 tasks/s two updates per task on one item would be ~560 WCU/s, more
//! than half a partition's ~1,000, beside everything else the agency writes there.
//! Why the ceiling stays exact: shard `i` admits an opening only while its count is below
//! its share `cap_i` (the shares sum to the limit), and an opening that finds its shard full
//! tries the others. A closing decrements the shard the task's id names, which need not be
//! the one its opening used, so a single shard's count may go below zero or sit at its share;
//! only the sum counts the open tasks. Every count stays ≤ its share (only a checked
//! increment raises it), so the sum never passes the limit, and an opening is refused only
//! when every shard is at its share, that is when the sum has reached the limit.

use super::keys::{n, s, PK, SK};
use super::quotas::quota_pk;
use crate::domain::{AgencyId, TaskId};
use crate::error::AppError;
use crate::service::quotas::{open_tasks_refused, OPEN_TASKS};
use crate::store::{conditional_write, from_sdk};
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

/// Takes a place for task `id` on the agency's counter: +1 on the first shard, in
/// [`opening_order`], whose count is below its share of `limit`. Returns that shard, or the
/// quota's 429 when every shard is full.
pub async fn open(
    client: &Client,
    table: &str,
    agency: &AgencyId,
    id: TaskId,
    limit: u64,
) -> Result<u64, AppError> {
    for (shard, share) in opening_order(id, limit) {
        let update = client
            .update_item()
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
            .send()
            .await;
        if conditional_write("dynamodb:UpdateItem", update)? {
            return Ok(shard);
        }
    }
    tracing::info!(%agency, quota = OPEN_TASKS, limit, "task refused: open-tasks ceiling");
    Err(open_tasks_refused(limit))
}

/// Gives back the place [`open`] took on `shard` when the task's write was refused. A
/// failure leaves the count one over (logged), never under.
pub async fn undo_open(client: &Client, table: &str, agency: &AgencyId, shard: u64) {
    if let Err(err) = add(client, table, agency, shard, -1).await {
        tracing::warn!(%agency, shard, error = %err, "an opening whose task was not written is still counted");
    }
}

/// Gives back task `id`'s place once its closing write has landed: −1 on its home shard.
/// A failure leaves the count one over (logged), never under.
pub async fn close(client: &Client, table: &str, agency: &AgencyId, id: TaskId) {
    if let Err(err) = add(client, table, agency, home_shard(id), -1).await {
        tracing::warn!(%agency, task = %id, error = %err, "a closed task is still counted as open");
    }
}

async fn add(
    client: &Client,
    table: &str,
    agency: &AgencyId,
    shard: u64,
    by: i64,
) -> Result<(), AppError> {
    client
        .update_item()
        .table_name(table)
        .key(PK, s(quota_pk(agency)))
        .key(SK, s(shard_sk(shard)))
        .update_expression("ADD #count :by")
        .expression_attribute_names("#count", COUNT)
        .expression_attribute_values(":by", n(by))
        .send()
        .await
        .map_err(|e| from_sdk("dynamodb:UpdateItem", e))?;
    Ok(())
}

/// The transaction item that closes task `id` (deleting an open task): −1 on its home
/// shard, unconditionally.
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
