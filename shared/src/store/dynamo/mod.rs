//! The DynamoDB adapter for `TaskStore`, on the single-table design in `keys`.

mod agents;
mod batches;
mod cursor;
mod in_flight;
pub mod keys;
mod lease_map;
mod list;
pub mod open_tasks;
mod quotas;
mod schedules;
mod scheduling;
mod window;

pub use agents::DynamoAgentStore;
pub use batches::{DynamoBatchStore, COUNTER_SHARDS};
pub use in_flight::DynamoInFlightSlots;
pub use quotas::DynamoRequestBuckets;
pub use schedules::DynamoScheduleStore;
pub use scheduling::DynamoSchedulingIndex;
pub use window::DynamoDispatchWindow;

pub use self::list::LIST_INDEX_ATTRIBUTES;

use self::keys::{n, s, IDEMPOTENCY_SK, PK, SK, STEP_SK_PREFIX, TASK_SK};
use super::from_sdk;
use crate::domain::{AgencyId, StepStatus, Task, TaskId, TaskStatus, TaskStep};
use crate::error::AppError;
use crate::ports::{IdempotencyRecord, InsertOutcome, Page, TaskQuery, TaskStore};
use crate::store::conditional_write;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, Put, TransactWriteItem, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Attribute holding a waiting step's Step Functions task token (kept in an item of
/// its own, so step writes never have to read it back).
const STEP_TOKEN: &str = "taskToken";

/// How long an idempotency key is remembered.
const IDEMPOTENCY_TTL_SECS: i64 = 24 * 60 * 60;

#[derive(Debug, Clone)]
pub struct DynamoTaskStore {
    client: Client,
    table: String,
    /// The `openTasks` ceiling per agency (`open_tasks`): a write that opens a task takes its
    /// place on the agency's counter first, one that closes it gives the place back after.
    open_task_limit: u64,
}

/// How a task write went, when the stored status may not be the one it assumed.
enum Written {
    Done,
    /// The version matched but the stored task was open where it was taken for closed (or
    /// the other way round): write again assuming the other.
    OtherOpenness,
}

impl DynamoTaskStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            open_task_limit: u64::MAX,
        }
    }

    /// Refuses an opening that would give an agency more than `limit` open tasks.
    pub fn with_open_task_limit(mut self, limit: u64) -> Self {
        self.open_task_limit = limit;
        self
    }

    /// The agency's open tasks, as counted (tests and operators).
    pub async fn open_tasks(&self, agency: &AgencyId) -> Result<i64, AppError> {
        open_tasks::open_tasks(&self.client, &self.table, agency).await
    }

    /// When `opens`, takes `task`'s place on its agency's open-tasks counter before the write
    /// that opens it: the shard taken, to give back if that write is refused.
    async fn take_place(&self, task: &Task, opens: bool) -> Result<Option<u64>, AppError> {
        if !opens {
            return Ok(None);
        }
        let shard = open_tasks::open(
            &self.client,
            &self.table,
            &task.agency_id,
            task.id,
            self.open_task_limit,
        )
        .await?;
        Ok(Some(shard))
    }

    /// TransactWriteItems: false when a condition cancelled it.
    async fn transact(&self, writes: Vec<TransactWriteItem>) -> Result<bool, AppError> {
        let err = match self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => return Ok(true),
            Err(err) => err,
        };
        match err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(cancelled))
                if cancelled
                    .cancellation_reasons()
                    .iter()
                    .any(|reason| reason.code() == Some("ConditionalCheckFailed")) =>
            {
                Ok(false)
            }
            _ => Err(from_sdk("dynamodb:TransactWriteItems", err)),
        }
    }

    /// Writes `task` over version `expected`, assuming the stored task is open when
    /// `stored_open` (its condition checks that), and moves the counter when the write opens
    /// or closes the task.
    async fn write_over(
        &self,
        task: &Task,
        expected: u64,
        stored_open: bool,
    ) -> Result<Written, AppError> {
        // The stored task's status must be one of `stored_open`'s kind.
        let statuses: Vec<&str> = TaskStatus::ALL
            .iter()
            .filter(|status| status.is_final() != stored_open)
            .map(|status| status.as_str())
            .collect();
        let placeholders: Vec<String> = (0..statuses.len()).map(|i| format!(":s{i}")).collect();
        let condition = format!(
            "attribute_exists(PK) AND version = :expected AND #status IN ({})",
            placeholders.join(", ")
        );
        let mut values = HashMap::from([(":expected".to_owned(), n(expected))]);
        for (placeholder, status) in placeholders.iter().zip(&statuses) {
            values.insert(placeholder.clone(), s(*status));
        }
        let names = HashMap::from([("#status".to_owned(), "status".to_owned())]);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(task_item(task)?))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values));
        // An opening takes its place on the counter before the write, a closing gives it
        // back after (`open_tasks`: never under the truth).
        let opens = !stored_open && task.counts_as_open();
        let closes = stored_open && !task.counts_as_open();
        let opened = self.take_place(task, opens).await?;
        let refusal = match conditional_write("dynamodb:PutItem", put.send().await)? {
            true => None,
            // The task's own condition failed: a newer version, no task, the other openness,
            // or this very write, landed by an attempt the SDK retried.
            false => Some(self.get(&task.agency_id, task.id).await?),
        };
        let landed = match &refusal {
            None => true,
            Some(current) => current
                .as_ref()
                .is_some_and(|current| is_this_write(current, task)),
        };
        if landed {
            if closes {
                open_tasks::close(&self.client, &self.table, &task.agency_id, task.id).await;
            }
            return Ok(Written::Done);
        }
        if let Some(shard) = opened {
            open_tasks::undo_open(&self.client, &self.table, &task.agency_id, shard).await;
        }
        match refusal.flatten() {
            None => Err(AppError::NotFound { what: "task" }),
            Some(current) if current.version != expected => Err(AppError::VersionConflict {
                expected,
                current: current.version,
            }),
            Some(_) => Ok(Written::OtherOpenness),
        }
    }

    /// Puts a step's record if `condition` holds; false when it does not.
    async fn put_step_if(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, AppError> {
        let mut item = to_item(step)?;
        item.insert(PK.into(), s(keys::task_pk(agency, step.task_id)));
        item.insert(SK.into(), s(keys::step_sk(&step.name)));
        item.insert("entity".into(), s("step"));
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition);
        for (name, attribute) in names {
            put = put.expression_attribute_names(*name, *attribute);
        }
        for (name, value) in values {
            put = put.expression_attribute_values(name, value);
        }
        conditional_write("dynamodb:PutItem", put.send().await)
    }

    async fn write_steps(&self, steps: &[TaskStep], task: &Task) -> Result<(), AppError> {
        let pk = keys::task_pk(&task.agency_id, task.id);
        let mut requests = Vec::with_capacity(steps.len());
        for step in steps {
            let mut item = to_item(step)?;
            item.insert(PK.into(), s(pk.clone()));
            item.insert(SK.into(), s(keys::step_sk(&step.name)));
            item.insert("entity".into(), s("step"));
            let put = aws_sdk_dynamodb::types::PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(AppError::internal)?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.batch_write(requests).await
    }

    /// The task item, with its idempotency record when it has one (one transaction), after
    /// taking its place on the agency's open-tasks counter when it counts (`open_tasks`).
    async fn insert_task(
        &self,
        task: &Task,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<InsertOutcome, AppError> {
        let opened = self.take_place(task, task.counts_as_open()).await?;
        // Any error but a refusal may hide a write that landed: the place stays taken.
        let written = self.put_new_task(task, idempotency).await?;
        if written {
            return Ok(InsertOutcome::Inserted);
        }
        if let Some(shard) = opened {
            open_tasks::undo_open(&self.client, &self.table, &task.agency_id, shard).await;
        }
        if let Some(record) = idempotency {
            if let Some(previous) = self
                .idempotency_record(&task.agency_id, &record.key)
                .await?
            {
                return Ok(InsertOutcome::AlreadyDone(previous));
            }
        }
        Err(AppError::internal(format!(
            "task {} could not be created: its write was refused",
            task.id
        )))
    }

    /// Writes a new task (and its idempotency record): false when a condition refused it.
    async fn put_new_task(
        &self,
        task: &Task,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<bool, AppError> {
        let Some(record) = idempotency else {
            // One conditional put: half the write units of a transaction.
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(task_item(task)?))
                .condition_expression("attribute_not_exists(PK)")
                .send()
                .await;
            if conditional_write("dynamodb:PutItem", put)? {
                return Ok(true);
            }
            // A fresh id exists only when an attempt the SDK retried landed.
            let stored = self.get(&task.agency_id, task.id).await?;
            return Ok(stored.is_some_and(|stored| is_this_write(&stored, task)));
        };
        let put_task = Put::builder()
            .table_name(&self.table)
            .set_item(Some(task_item(task)?))
            .condition_expression("attribute_not_exists(PK)")
            .build()
            .map_err(AppError::internal)?;
        let put_record = Put::builder()
            .table_name(&self.table)
            .set_item(Some(idempotency_item(&task.agency_id, record)?))
            .condition_expression("attribute_not_exists(PK) OR expiresAt <= :now")
            .expression_attribute_values(":now", n(record.created_at.timestamp()))
            .build()
            .map_err(AppError::internal)?;
        // The SDK gives the transaction a client token, so a retried attempt is not refused.
        let writes = vec![
            TransactWriteItem::builder().put(put_task).build(),
            TransactWriteItem::builder().put(put_record).build(),
        ];
        self.transact(writes).await
    }

    /// A batch task's write: batch tasks are not counted (see `Task::counts_as_open`).
    async fn replace_uncounted(&self, task: &Task, expected_version: u64) -> Result<(), AppError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(task_item(task)?))
            .condition_expression("attribute_exists(PK) AND version = :expected")
            .expression_attribute_values(":expected", n(expected_version))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.as_service_error(),
                    Some(PutItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                match self.get(&task.agency_id, task.id).await? {
                    Some(current) => Err(AppError::VersionConflict {
                        expected: expected_version,
                        current: current.version,
                    }),
                    None => Err(AppError::NotFound { what: "task" }),
                }
            }
            Err(err) => Err(from_sdk("dynamodb:PutItem", err)),
        }
    }

    /// PutItem without a condition: for records only one writer owns at a time.
    pub(crate) async fn put_unconditional(&self, item: Item) -> Result<(), AppError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:PutItem", e))?;
        Ok(())
    }

    /// BatchWriteItem in chunks of 25, resending anything DynamoDB left unprocessed.
    pub(crate) async fn batch_write(&self, requests: Vec<WriteRequest>) -> Result<(), AppError> {
        for chunk in requests.chunks(25) {
            let mut pending = chunk.to_vec();
            for attempt in 0..8u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| from_sdk("dynamodb:BatchWriteItem", e))?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if pending.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
            }
            if !pending.is_empty() {
                return Err(AppError::Unavailable(
                    "dynamodb:BatchWriteItem left items unprocessed".into(),
                ));
            }
        }
        Ok(())
    }

    async fn query_all(&self, pk: &str, sk_prefix: &str) -> Result<Vec<Item>, AppError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_values(":pk", s(pk));
            request = match sk_prefix {
                // begins_with needs a non-empty prefix.
                "" => request.key_condition_expression("PK = :pk"),
                prefix => request
                    .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
                    .expression_attribute_values(":prefix", s(prefix)),
            };
            let out = request
                .set_exclusive_start_key(start)
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}

pub(crate) fn to_item<T: serde::Serialize>(value: &T) -> Result<Item, AppError> {
    let mut item: Item = serde_dynamo::to_item(value).map_err(AppError::internal)?;
    item.values_mut().for_each(compact_numbers);
    Ok(item)
}

/// Writes long numbers in exponent form. serde_dynamo writes a float as Rust prints it, every
/// digit spelled out (1e50 is a 51-digit string). DynamoDB trims the zeros, but a reader that
/// takes the string as a 38-digit decimal fails on it: the emulator does when it projects an
/// item for an index query (boto3's decimal context), which made every list of the agency a
/// 503 once one of its items held such a number. "1E50" is the same number to every reader.
fn compact_numbers(value: &mut AttributeValue) {
    match value {
        AttributeValue::N(number) if number.len() > 38 => {
            if let Ok(float) = number.parse::<f64>() {
                *number = format!("{float:E}");
            }
        }
        AttributeValue::M(map) => map.values_mut().for_each(compact_numbers),
        AttributeValue::L(list) => list.iter_mut().for_each(compact_numbers),
        _ => {}
    }
}

pub(crate) fn from_item<T: serde::de::DeserializeOwned>(item: Item) -> Result<T, AppError> {
    serde_dynamo::from_item(item).map_err(|e| AppError::internal(format!("corrupt item: {e}")))
}

/// Whether `stored` is `written` itself: a write is a new version with its own `updatedAt`.
fn is_this_write(stored: &Task, written: &Task) -> bool {
    stored.version == written.version && stored.updated_at == written.updated_at
}

pub(crate) fn task_item(task: &Task) -> Result<Item, AppError> {
    let mut item = to_item(task)?;
    item.extend(keys::task_keys(task));
    Ok(item)
}

fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn idempotency_item(agency: &AgencyId, record: &IdempotencyRecord) -> Result<Item, AppError> {
    let response: Item = to_item(&record.response)?;
    Ok(HashMap::from([
        (
            PK.to_owned(),
            s(keys::idempotency_pk(agency, &hash_key(&record.key))),
        ),
        (SK.to_owned(), s(IDEMPOTENCY_SK)),
        ("entity".to_owned(), s("idempotency")),
        ("idempotencyKey".to_owned(), s(record.key.clone())),
        ("requestHash".to_owned(), s(record.request_hash.clone())),
        ("response".to_owned(), AttributeValue::M(response)),
        ("createdAt".to_owned(), s(record.created_at.to_rfc3339())),
        (
            "expiresAt".to_owned(),
            n(record.created_at.timestamp() + IDEMPOTENCY_TTL_SECS),
        ),
    ]))
}

fn parse_idempotency_item(item: Item) -> Result<IdempotencyRecord, AppError> {
    let text = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .ok_or_else(|| AppError::internal(format!("idempotency record without {name}")))
    };
    let response = match item.get("response") {
        Some(AttributeValue::M(m)) => from_item(m.clone())?,
        _ => return Err(AppError::internal("idempotency record without response")),
    };
    let created_at = DateTime::parse_from_rfc3339(&text("createdAt")?)
        .map_err(AppError::internal)?
        .with_timezone(&Utc);
    Ok(IdempotencyRecord {
        key: text("idempotencyKey")?,
        request_hash: text("requestHash")?,
        response,
        created_at,
    })
}

fn is_expired(item: &Item, now: DateTime<Utc>) -> bool {
    item.get("expiresAt")
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|t| t <= now.timestamp())
}

#[async_trait]
impl TaskStore for DynamoTaskStore {
    async fn insert(
        &self,
        task: &Task,
        steps: &[TaskStep],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<InsertOutcome, AppError> {
        // Steps first: until the task item exists they are unreachable, so a
        // failed create leaves nothing visible behind.
        if !steps.is_empty() {
            self.write_steps(steps, task).await?;
        }
        let outcome = self.insert_task(task, idempotency).await;
        if !matches!(outcome, Ok(InsertOutcome::Inserted)) && !steps.is_empty() {
            let _ = self.delete(&task.agency_id, task.id).await;
        }
        outcome
    }

    async fn get(&self, agency: &AgencyId, id: TaskId) -> Result<Option<Task>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::task_pk(agency, id)))
            .key(SK, s(TASK_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        out.item.map(from_item).transpose()
    }

    async fn replace(&self, task: &Task, expected_version: u64) -> Result<(), AppError> {
        if task.task_type == crate::domain::TaskType::Batch {
            return self.replace_uncounted(task, expected_version).await;
        }
        // The lifecycle makes the stored openness all but certain: only an archive may follow
        // a closed task, and only a retry reopens one. A wrong guess costs one failed write.
        let mut stored_open = task.status != TaskStatus::Archived;
        for _ in 0..2 {
            match self.write_over(task, expected_version, stored_open).await? {
                Written::Done => return Ok(()),
                Written::OtherOpenness => stored_open = !stored_open,
            }
        }
        Err(AppError::Unavailable(format!(
            "task {} kept changing while it was written; retry",
            task.id
        )))
    }

    async fn delete(&self, agency: &AgencyId, id: TaskId) -> Result<bool, AppError> {
        let pk = keys::task_pk(agency, id);
        // An open task leaves with its opening on the counter, in one transaction
        // conditional on the version read; a concurrent change reads again.
        let mut existed = false;
        let mut settled = false;
        for _ in 0..3 {
            match self.get(agency, id).await? {
                Some(task) if task.counts_as_open() => {
                    let delete = aws_sdk_dynamodb::types::Delete::builder()
                        .table_name(&self.table)
                        .key(PK, s(pk.clone()))
                        .key(SK, s(TASK_SK))
                        .condition_expression("version = :read")
                        .expression_attribute_values(":read", n(task.version))
                        .build()
                        .map_err(AppError::internal)?;
                    let close = open_tasks::close_one(&self.table, agency, id)?;
                    let writes = vec![TransactWriteItem::builder().delete(delete).build(), close];
                    if self.transact(writes).await? {
                        (existed, settled) = (true, true);
                        break;
                    }
                }
                Some(_) => {
                    (existed, settled) = (true, true);
                    break;
                }
                None => {
                    settled = true;
                    break;
                }
            }
        }
        if !settled {
            return Err(AppError::Unavailable(format!(
                "task {id} kept changing while it was deleted; retry"
            )));
        }
        // Then everything else under it (and the task item itself when it was not open).
        let items = self.query_all(&pk, "").await?;
        existed |= items
            .iter()
            .any(|i| i.get(SK).and_then(|v| v.as_s().ok()).map(String::as_str) == Some(TASK_SK));
        let requests = items
            .into_iter()
            .filter_map(|item| {
                let key = HashMap::from([
                    (PK.to_owned(), item.get(PK)?.clone()),
                    (SK.to_owned(), item.get(SK)?.clone()),
                ]);
                let delete = DeleteRequest::builder().set_key(Some(key)).build().ok()?;
                Some(WriteRequest::builder().delete_request(delete).build())
            })
            .collect();
        self.batch_write(requests).await?;
        Ok(existed)
    }

    async fn list(&self, agency: &AgencyId, query: &TaskQuery) -> Result<Page<Task>, AppError> {
        list::tasks(&self.client, &self.table, agency, query).await
    }

    async fn steps(&self, agency: &AgencyId, id: TaskId) -> Result<Vec<TaskStep>, AppError> {
        let items = self
            .query_all(&keys::task_pk(agency, id), STEP_SK_PREFIX)
            .await?;
        items.into_iter().map(from_item).collect()
    }

    async fn get_step(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<TaskStep>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::task_pk(agency, id)))
            .key(SK, s(keys::step_sk(step)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        out.item.map(from_item).transpose()
    }

    async fn replace_step(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        read_status: StepStatus,
    ) -> Result<bool, AppError> {
        self.put_step_if(
            agency,
            step,
            "#status = :read",
            &[("#status", "status")],
            vec![(":read", s(read_status.as_str()))],
        )
        .await
    }

    async fn replace_step_run(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        run: u32,
    ) -> Result<bool, AppError> {
        self.put_step_if(
            agency,
            step,
            "#status = :running AND #attempts = :run",
            &[("#status", "status"), ("#attempts", "attempts")],
            vec![
                (":running", s(StepStatus::Running.as_str())),
                (":run", n(run)),
            ],
        )
        .await
    }

    async fn set_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
        token: &str,
    ) -> Result<(), AppError> {
        self.put_unconditional(HashMap::from([
            (PK.to_owned(), s(keys::task_pk(agency, id))),
            (SK.to_owned(), s(keys::step_token_sk(step))),
            ("entity".to_owned(), s("step_token")),
            (STEP_TOKEN.to_owned(), s(token)),
        ]))
        .await
    }

    async fn step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<String>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::task_pk(agency, id)))
            .key(SK, s(keys::step_token_sk(step)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        Ok(out
            .item
            .and_then(|i| i.get(STEP_TOKEN).and_then(|v| v.as_s().ok()).cloned()))
    }

    async fn clear_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<(), AppError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(keys::task_pk(agency, id)))
            .key(SK, s(keys::step_token_sk(step)))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:DeleteItem", e))?;
        Ok(())
    }

    async fn idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(keys::idempotency_pk(agency, &hash_key(key))))
            .key(SK, s(IDEMPOTENCY_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        match out.item {
            Some(item) if !is_expired(&item, Utc::now()) => parse_idempotency_item(item).map(Some),
            _ => Ok(None),
        }
    }

    async fn forget_idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<(), AppError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(keys::idempotency_pk(agency, &hash_key(key))))
            .key(SK, s(IDEMPOTENCY_SK))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:DeleteItem", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod number_tests {
    use super::*;
    use serde_json::{json, Value};

    fn numbers(value: &AttributeValue, out: &mut Vec<String>) {
        match value {
            AttributeValue::N(n) => out.push(n.clone()),
            AttributeValue::M(map) => map.values().for_each(|v| numbers(v, out)),
            AttributeValue::L(list) => list.iter().for_each(|v| numbers(v, out)),
            _ => {}
        }
    }

    #[test]
    fn long_numbers_are_stored_in_exponent_form_and_read_back_the_same() {
        let value = json!({"big": 1e50, "huge": [-9.5e125, 1e100], "tiny": 1.5e-130,
            "plain": 12, "price": 0.1, "nested": {"x": 123456789.125}});
        let item = to_item(&json!({"v": value})).unwrap();
        let mut found = Vec::new();
        item.values().for_each(|v| numbers(v, &mut found));
        assert_eq!(found.len(), 7);
        assert!(found.iter().all(|n| n.len() <= 38), "{found:?}");
        assert!(found.contains(&"1E50".to_owned()), "{found:?}");
        assert!(
            found.contains(&"12".to_owned()),
            "short ones as they were: {found:?}"
        );
        let back: Value = from_item::<Value>(item).unwrap()["v"].clone();
        assert_eq!(back, value);
    }
}
