//! Batch jobs in the single table: the job item, per-chunk counters (summed
//! on read, so concurrent chunks never contend on one counter) and one item
//! per failed input item.

use super::keys::{self, n, s, PK, SK};
use super::quotas::{quota_pk, BATCH_ITEMS_SK_PREFIX};
use super::{cursor, from_item, task_item, to_item, Item};
use crate::domain::{
    AgencyId, BatchJob, BatchStatus, ChunkCounts, ChunkDone, ItemFailure, Task, TaskId,
};
use crate::error::AppError;
use crate::ports::{BatchCreated, BatchStore, ChunkStart, Page};
use crate::service::quotas::{batch_items_refused, quota_day};
use crate::store::conditional_write;
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, Put, PutRequest, TransactWriteItem, Update, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use sha2::{Digest, Sha256};

const BATCH_SK: &str = "BATCH";
const FAIL_PREFIX: &str = "FAIL#";
const DEDUPE_SK: &str = "DEDUPE";
/// GSI3 partition of the batches still pending (batch creations only: a low write rate).
const PENDING_BATCHES: &str = "BATCHES#PENDING";

/// One item per dedupe key (an upload's bucket/key#version), hashed to bound its length.
fn dedupe_pk(key: &str) -> String {
    let digest: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("DEDUPE#{digest}")
}

/// Partitions a batch's chunk counters are spread over. Every running chunk updates its
/// counter about once a second (2 WCU): on one partition, 1,000 chunks at once (the largest
/// `parallelism`) would write 2,000 WCU/s against DynamoDB's ~1,000 per partition; over 16,
/// ~125 each.
pub const COUNTER_SHARDS: u32 = 16;

/// A chunk counter's key: `AGENCY#<agency>#TASK#<batch>#C<chunk % 16>` / `CHUNK#<round>#<chunk>`.
fn chunk_key(agency: &AgencyId, id: TaskId, round: u32, chunk: u32) -> Item {
    Item::from([
        (
            PK.to_owned(),
            s(counter_pk(agency, id, chunk % COUNTER_SHARDS)),
        ),
        (SK.to_owned(), s(format!("CHUNK#{round:03}#{chunk:05}"))),
    ])
}

fn counter_pk(agency: &AgencyId, id: TaskId, shard: u32) -> String {
    format!("{}#C{shard:02}", keys::task_pk(agency, id))
}

fn fail_sk(index: u64) -> String {
    format!("{FAIL_PREFIX}{index:012}")
}

#[derive(Debug, Clone)]
pub struct DynamoBatchStore {
    client: Client,
    table: String,
    tasks: super::DynamoTaskStore,
    /// Items an agency may create in batches per UTC day; `None` counts nothing.
    daily_item_limit: Option<u64>,
}

impl DynamoBatchStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            tasks: super::DynamoTaskStore::new(client.clone(), table.clone()),
            client,
            table,
            daily_item_limit: None,
        }
    }

    /// The batch's item. While it is pending it is also in GSI3 under `BATCHES#PENDING`, by
    /// creation time, so the sweeper finds preparations that never finished; every write
    /// replaces the whole item, so leaving pending leaves the index.
    fn batch_item(batch: &BatchJob) -> Result<Item, AppError> {
        let mut item = to_item(batch)?;
        item.extend(Self::key(&batch.agency_id, batch.id, BATCH_SK.to_owned()));
        item.insert("entity".into(), s("batch"));
        // Keyed by the last progress, so the sweeper reads only pending batches that stalled.
        if batch.status == BatchStatus::Pending {
            let index = keys::PENDING_INDEX;
            item.insert(index.pk.into(), s(PENDING_BATCHES));
            item.insert(
                index.sk.into(),
                s(format!(
                    "{}#{}#{}",
                    keys::sortable_time(batch.pending_since()),
                    batch.agency_id,
                    batch.id
                )),
            );
        }
        Ok(item)
    }

    /// Counts every new batch's items against `limit` per agency and UTC day, in the batch's
    /// own creation transaction (so a refused or duplicate batch counts nothing).
    pub fn with_daily_item_limit(mut self, limit: u64) -> Self {
        self.daily_item_limit = Some(limit);
        self
    }

    /// The conditional add to today's counter, or a refusal when the batch alone is too big.
    fn charge_items(
        &self,
        batch: &BatchJob,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<TransactWriteItem>, AppError> {
        // A batch recorded as failed (a rejected upload) runs nothing and costs nothing.
        let items = match (self.daily_item_limit, batch.status) {
            (_, BatchStatus::Failed) | (None, _) => return Ok(None),
            (Some(_), _) if batch.total_items == 0 => return Ok(None),
            (Some(limit), _) if batch.total_items > limit => {
                return Err(batch_items_refused(limit, now))
            }
            (Some(_), _) => batch.total_items,
        };
        let limit = self.daily_item_limit.unwrap_or(u64::MAX);
        // The counter expires a day after its day ends (TTL deletes within days; a late
        // deletion only leaves a counter for a day that no longer counts).
        let expires = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(0, |midnight| midnight.and_utc().timestamp() + 2 * 86_400);
        Update::builder()
            .table_name(&self.table)
            .key(PK, s(quota_pk(&batch.agency_id)))
            .key(SK, s(format!("{BATCH_ITEMS_SK_PREFIX}{}", quota_day(now))))
            .update_expression("ADD #items :n SET expiresAt = :expires")
            .condition_expression("attribute_not_exists(#items) OR #items <= :room")
            .expression_attribute_names("#items", "items")
            .expression_attribute_values(":n", n(items))
            .expression_attribute_values(":room", n(limit - items))
            .expression_attribute_values(":expires", n(expires))
            .build()
            .map(|u| Some(TransactWriteItem::builder().update(u).build()))
            .map_err(AppError::internal)
    }

    fn key(agency: &AgencyId, id: TaskId, sk: String) -> Item {
        Item::from([
            (PK.to_owned(), s(keys::task_pk(agency, id))),
            (SK.to_owned(), s(sk)),
        ])
    }

    /// The sum of one counter partition's chunk counters for `round`.
    async fn shard_counts(&self, pk: String, round: u32) -> Result<ChunkCounts, AppError> {
        let mut total = ChunkCounts::default();
        for item in self
            .tasks
            .query_all(&pk, &format!("CHUNK#{round:03}#"))
            .await?
        {
            let read = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            total.processed += read("processed");
            total.success += read("success");
            total.failed += read("failed");
        }
        Ok(total)
    }

    async fn exists(
        &self,
        partition_attr: &str,
        index: Option<&str>,
        partition: String,
    ) -> Result<bool, AppError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .set_index_name(index.map(str::to_owned))
            .key_condition_expression("#p = :p")
            .expression_attribute_names("#p", partition_attr)
            .expression_attribute_values(":p", s(partition))
            .limit(1)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        Ok(out.count > 0)
    }

    /// The batch a dedupe key was first used by.
    async fn deduped_batch(&self, key: &str) -> Result<Option<TaskId>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(dedupe_pk(key)))
            .key(SK, s(DEDUPE_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        Ok(out
            .item
            .and_then(|item| TaskId::parse(item.get("batchId")?.as_s().ok()?).ok()))
    }
}

#[async_trait]
impl BatchStore for DynamoBatchStore {
    async fn create(
        &self,
        task: &Task,
        batch: &BatchJob,
        dedupe_key: Option<&str>,
    ) -> Result<BatchCreated, AppError> {
        let batch_item = Self::batch_item(batch)?;
        let put = |item: Item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(PK)")
                .build()
                .map(|p| TransactWriteItem::builder().put(p).build())
                .map_err(AppError::internal)
        };
        let mut writes = vec![put(task_item(task)?)?, put(batch_item)?];
        if let Some(key) = dedupe_key {
            writes.push(put(Item::from([
                (PK.to_owned(), s(dedupe_pk(key))),
                (SK.to_owned(), s(DEDUPE_SK)),
                ("entity".to_owned(), s("dedupe")),
                ("source".to_owned(), s(key)),
                ("batchId".to_owned(), s(batch.id.to_string())),
            ]))?);
        }
        let now = chrono::Utc::now();
        let charge_at = match self.charge_items(batch, now)? {
            Some(charge) => {
                writes.push(charge);
                Some(writes.len() - 1)
            }
            None => None,
        };
        let err = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => return Ok(BatchCreated::New),
            Err(err) => err,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
            err.as_service_error()
        else {
            return Err(from_sdk("dynamodb:TransactWriteItems", err));
        };
        // A redelivered upload is a duplicate even when today's quota is also used up.
        if let Some(key) = dedupe_key {
            if let Some(first) = self.deduped_batch(key).await? {
                return Ok(BatchCreated::Duplicate(first));
            }
        }
        let quota_refused = charge_at.is_some_and(|at| {
            cancelled
                .cancellation_reasons()
                .get(at)
                .and_then(|reason| reason.code())
                == Some("ConditionalCheckFailed")
        });
        match self.daily_item_limit {
            Some(limit) if quota_refused => Err(batch_items_refused(limit, now)),
            _ => Err(from_sdk("dynamodb:TransactWriteItems", err)),
        }
    }

    async fn get(&self, agency: &AgencyId, id: TaskId) -> Result<Option<BatchJob>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, id, BATCH_SK.to_owned())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        out.item.map(from_item).transpose()
    }

    async fn put(&self, batch: &BatchJob) -> Result<(), AppError> {
        self.tasks.put_unconditional(Self::batch_item(batch)?).await
    }

    async fn pending_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<BatchJob>, AppError> {
        let index = keys::PENDING_INDEX;
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index.name)
            .key_condition_expression("#pk = :pk AND #sk < :cutoff")
            .expression_attribute_names("#pk", index.pk)
            .expression_attribute_names("#sk", index.sk)
            .expression_attribute_values(":pk", s(PENDING_BATCHES))
            .expression_attribute_values(":cutoff", s(keys::sortable_time(cutoff)))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        let mut batches = Vec::new();
        // The index holds keys only; the item itself says whether it is still pending.
        for entry in out.items.unwrap_or_default() {
            let Some((_, agency, id)) = entry
                .get(index.sk)
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| keys::parse_time_agency_id(sk))
            else {
                continue;
            };
            if let Some(batch) = self.get(&agency, id).await? {
                if batch.status == BatchStatus::Pending {
                    batches.push(batch);
                }
            }
        }
        Ok(batches)
    }

    async fn put_if(
        &self,
        batch: &BatchJob,
        status: BatchStatus,
        round: u32,
    ) -> Result<bool, AppError> {
        let item = Self::batch_item(batch)?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("#status = :status AND #round = :round")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#round", "round")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":round", n(round))
            .send()
            .await;
        conditional_write("dynamodb:PutItem", result)
    }

    async fn put_if_charging(
        &self,
        batch: &BatchJob,
        status: BatchStatus,
        round: u32,
    ) -> Result<bool, AppError> {
        let now = chrono::Utc::now();
        let Some(charge) = self.charge_items(batch, now)? else {
            return self.put_if(batch, status, round).await;
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(Self::batch_item(batch)?))
            .condition_expression("#status = :status AND #round = :round")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#round", "round")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":round", n(round))
            .build()
            .map_err(AppError::internal)?;
        let err = match self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(charge)
            .send()
            .await
        {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
            err.as_service_error()
        else {
            return Err(from_sdk("dynamodb:TransactWriteItems", err));
        };
        let failed = |at: usize| {
            cancelled
                .cancellation_reasons()
                .get(at)
                .and_then(|reason| reason.code())
                == Some("ConditionalCheckFailed")
        };
        match (failed(0), failed(1), self.daily_item_limit) {
            (true, _, _) => Ok(false),
            (false, true, Some(limit)) => Err(batch_items_refused(limit, now)),
            _ => Err(from_sdk("dynamodb:TransactWriteItems", err)),
        }
    }

    async fn start_chunk(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
    ) -> Result<ChunkStart, AppError> {
        // Takes the chunk over; counters and the done set stay, so nothing runs twice.
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(chunk_key(agency, id, round, chunk)))
            .update_expression(
                "SET #entity = :chunk, #attempt = :attempt, #processed = if_not_exists(#processed, :zero), \
                 #success = if_not_exists(#success, :zero), #failed = if_not_exists(#failed, :zero)",
            )
            .expression_attribute_names("#entity", "entity")
            .expression_attribute_names("#attempt", "attempt")
            .expression_attribute_names("#processed", "processed")
            .expression_attribute_names("#success", "success")
            .expression_attribute_names("#failed", "failed")
            .expression_attribute_values(":chunk", s("chunk"))
            .expression_attribute_values(":attempt", s(attempt))
            .expression_attribute_values(":zero", n(0))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:UpdateItem", e))?;
        let old = out.attributes.unwrap_or_default();
        let done = match old.get("done") {
            Some(AttributeValue::B(bitmap)) => ChunkDone::from_bytes(bitmap.as_ref().to_vec()),
            _ => ChunkDone::default(),
        };
        Ok(ChunkStart {
            earlier: !old.is_empty(),
            done,
        })
    }

    async fn add_counts(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
        counts: ChunkCounts,
        done: &ChunkDone,
    ) -> Result<bool, AppError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(chunk_key(agency, id, round, chunk)))
            .condition_expression("#attempt = :attempt")
            .expression_attribute_names("#processed", "processed")
            .expression_attribute_names("#success", "success")
            .expression_attribute_names("#failed", "failed")
            .expression_attribute_names("#attempt", "attempt")
            .expression_attribute_values(":p", n(counts.processed))
            .expression_attribute_values(":s", n(counts.success))
            .expression_attribute_values(":f", n(counts.failed))
            .expression_attribute_values(":attempt", s(attempt));
        let counters =
            "SET #processed = #processed + :p, #success = #success + :s, #failed = #failed + :f";
        update = if done.is_empty() {
            update.update_expression(counters)
        } else {
            // The whole bitmap each time: at most 1,250 bytes, and only this attempt writes it.
            update
                .update_expression(format!("{counters}, #done = :done"))
                .expression_attribute_names("#done", "done")
                .expression_attribute_values(
                    ":done",
                    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                        done.as_bytes().to_vec(),
                    )),
                )
        };
        conditional_write("dynamodb:UpdateItem", update.send().await)
    }

    async fn round_counts(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
    ) -> Result<ChunkCounts, AppError> {
        // One query per counter partition, all at once: the latency of one.
        let shards = (0..COUNTER_SHARDS)
            .map(|shard| self.shard_counts(counter_pk(agency, id, shard), round));
        let mut total = ChunkCounts::default();
        for counts in futures::future::try_join_all(shards).await? {
            total.processed += counts.processed;
            total.success += counts.success;
            total.failed += counts.failed;
        }
        Ok(total)
    }

    async fn record_failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        failures: &[ItemFailure],
    ) -> Result<(), AppError> {
        let requests = failures
            .iter()
            .map(|f| {
                let mut item = Self::key(agency, id, fail_sk(f.index));
                item.insert("entity".into(), s("item_failure"));
                item.insert("index".into(), n(f.index));
                item.insert(
                    "error".into(),
                    s(f.error.chars().take(2000).collect::<String>()),
                );
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map_err(AppError::internal)?;
                Ok(WriteRequest::builder().put_request(put).build())
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        self.tasks.batch_write(requests).await
    }

    async fn clear_failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        indexes: &[u64],
    ) -> Result<(), AppError> {
        let requests = indexes
            .iter()
            .map(|index| {
                let delete = DeleteRequest::builder()
                    .set_key(Some(Self::key(agency, id, fail_sk(*index))))
                    .build()
                    .map_err(AppError::internal)?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        self.tasks.batch_write(requests).await
    }

    async fn failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        cursor_token: Option<&str>,
        limit: usize,
    ) -> Result<Page<ItemFailure>, AppError> {
        let pk = keys::task_pk(agency, id);
        let start = match cursor_token {
            Some(c) => Some(cursor::decode(c, &[PK, SK], PK, &pk)?),
            None => None,
        };
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(FAIL_PREFIX))
            .limit(limit as i32)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        let items = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|item| ItemFailure {
                index: item
                    .get("index")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                error: item
                    .get("error")
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        Ok(Page {
            items,
            next_cursor: out.last_evaluated_key.as_ref().map(cursor::encode),
        })
    }

    async fn agency_known(&self, agency: &AgencyId) -> Result<bool, AppError> {
        Ok(self
            .exists(
                keys::AGENCY_INDEX.pk,
                Some(keys::AGENCY_INDEX.name),
                keys::agency_partition(agency),
            )
            .await?
            || self
                .exists(
                    keys::AGENCY_INDEX.pk,
                    Some(keys::AGENCY_INDEX.name),
                    keys::agents_partition(agency),
                )
                .await?)
    }
}
