//! Schedules in the single table. One partition per agency, `AGENCY#<a>#SCHEDULES`:
//! `S#<id>` the schedule (small: listed), `T#<id>` its task template (up to the 256 KiB request
//! body), `R#<id>#<epoch s>` one item per firing (a repeat overwrites it; TTL 90 days), and
//! `COUNT`, the agency's number of schedules, moved in the same transaction as each
//! create and delete so the quota never drifts.

use super::keys::{n, s, PK, SK};
use super::{from_item, to_item, Item};
use crate::domain::schedule::{Schedule, ScheduleRun};
use crate::domain::{AgencyId, ScheduleId};
use crate::error::AppError;
use crate::ports::ScheduleStore;
use crate::service::schedules::quota_refusal;
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use serde_json::Value;

const COUNT_SK: &str = "COUNT";
/// How long a run's record is kept.
const RUN_TTL_SECONDS: i64 = 90 * 86_400;

pub fn schedules_pk(agency: &AgencyId) -> String {
    format!("AGENCY#{agency}#SCHEDULES")
}

#[derive(Debug, Clone)]
pub struct DynamoScheduleStore {
    client: Client,
    table: String,
}

impl DynamoScheduleStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn key(agency: &AgencyId, sk: String) -> Item {
        Item::from([
            (PK.to_owned(), s(schedules_pk(agency))),
            (SK.to_owned(), s(sk)),
        ])
    }

    /// The schedule's two items: the schedule without its template, and the template.
    fn items(schedule: &Schedule) -> Result<(Item, Item), AppError> {
        let mut head = schedule.clone();
        head.template = Value::Null;
        let mut item = to_item(&head)?;
        item.remove("template");
        item.extend(Self::key(&schedule.agency_id, format!("S#{}", schedule.id)));
        item.insert("entity".into(), s("schedule"));
        let mut template = to_item(&serde_json::json!({ "template": schedule.template }))?;
        template.extend(Self::key(&schedule.agency_id, format!("T#{}", schedule.id)));
        Ok((item, template))
    }

    fn put(
        &self,
        item: Item,
        condition: Option<(&str, Option<u64>)>,
    ) -> Result<TransactWriteItem, AppError> {
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        if let Some((expression, version)) = condition {
            put = put.condition_expression(expression);
            if let Some(v) = version {
                put = put.expression_attribute_values(":v", n(v));
            }
        }
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(AppError::internal)?)
            .build())
    }

    fn count_update(
        &self,
        agency: &AgencyId,
        delta: i64,
        limit: Option<u32>,
    ) -> Result<TransactWriteItem, AppError> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, COUNT_SK.into())))
            .update_expression("ADD #count :delta")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":delta", n(delta));
        if let Some(limit) = limit {
            update = update
                .condition_expression("attribute_not_exists(#count) OR #count < :limit")
                .expression_attribute_values(":limit", n(limit));
        }
        Ok(TransactWriteItem::builder()
            .update(update.build().map_err(AppError::internal)?)
            .build())
    }

    /// Runs a transaction; `Err(reasons)` holds the cancellation codes when it was cancelled.
    async fn transact(
        &self,
        writes: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<Option<String>>>, AppError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(writes))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(err) => match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                    Ok(Err(cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code().map(str::to_owned))
                        .collect()))
                }
                _ => Err(from_sdk("dynamodb:TransactWriteItems", err)),
            },
        }
    }

    async fn get_item(&self, agency: &AgencyId, sk: String) -> Result<Option<Item>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        Ok(out.item)
    }

    async fn version_conflict(&self, agency: &AgencyId, id: ScheduleId, expected: u64) -> AppError {
        match self.get(agency, id).await {
            Ok(Some(current)) => AppError::VersionConflict {
                expected,
                current: current.version,
            },
            Ok(None) => AppError::NotFound { what: "schedule" },
            Err(err) => err,
        }
    }
}

fn failed(reasons: &[Option<String>], at: usize) -> bool {
    reasons.get(at).and_then(Option::as_deref) == Some("ConditionalCheckFailed")
}

#[async_trait]
impl ScheduleStore for DynamoScheduleStore {
    async fn create(&self, schedule: &Schedule, limit: u32) -> Result<(), AppError> {
        let (item, template) = Self::items(schedule)?;
        let writes = vec![
            self.count_update(&schedule.agency_id, 1, Some(limit))?,
            self.put(item, Some(("attribute_not_exists(PK)", None)))?,
            self.put(template, None)?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(reasons) if failed(&reasons, 0) => Err(quota_refusal(limit)),
            Err(reasons) => Err(AppError::internal(format!(
                "schedule create cancelled: {reasons:?}"
            ))),
        }
    }

    async fn get(&self, agency: &AgencyId, id: ScheduleId) -> Result<Option<Schedule>, AppError> {
        let (head, template) = tokio::try_join!(
            self.get_item(agency, format!("S#{id}")),
            self.get_item(agency, format!("T#{id}"))
        )?;
        let Some(mut head) = head else {
            return Ok(None);
        };
        let Some(template) = template else {
            return Err(AppError::internal(format!(
                "schedule {id} has no template item"
            )));
        };
        let template = from_item::<Value>(template)?
            .get_mut("template")
            .map(Value::take)
            .unwrap_or_default();
        head.insert("template".into(), AttributeValue::Null(true));
        let mut schedule: Schedule = from_item(head)?;
        schedule.template = template;
        Ok(Some(schedule))
    }

    async fn list(&self, agency: &AgencyId) -> Result<Vec<Schedule>, AppError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :s)")
                .expression_attribute_values(":pk", s(schedules_pk(agency)))
                .expression_attribute_values(":s", s("S#"))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            for mut item in page.items.unwrap_or_default() {
                item.insert("template".into(), AttributeValue::Null(true));
                out.push(from_item(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }

    async fn replace(&self, schedule: &Schedule, expected: u64) -> Result<(), AppError> {
        let (item, template) = Self::items(schedule)?;
        let writes = vec![
            self.put(
                item,
                Some(("attribute_exists(PK) AND version = :v", Some(expected))),
            )?,
            self.put(template, None)?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(reasons) if failed(&reasons, 0) => Err(self
                .version_conflict(&schedule.agency_id, schedule.id, expected)
                .await),
            Err(reasons) => Err(AppError::internal(format!(
                "schedule replace cancelled: {reasons:?}"
            ))),
        }
    }

    async fn delete(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        expected: u64,
    ) -> Result<(), AppError> {
        let delete = |sk: String, versioned: bool| -> Result<TransactWriteItem, AppError> {
            let mut d = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(Self::key(agency, sk)));
            if versioned {
                d = d
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", n(expected));
            }
            Ok(TransactWriteItem::builder()
                .delete(d.build().map_err(AppError::internal)?)
                .build())
        };
        let writes = vec![
            delete(format!("S#{id}"), true)?,
            delete(format!("T#{id}"), false)?,
            self.count_update(agency, -1, None)?,
        ];
        match self.transact(writes).await? {
            Ok(()) => Ok(()),
            Err(reasons) if failed(&reasons, 0) => {
                Err(self.version_conflict(agency, id, expected).await)
            }
            Err(reasons) => Err(AppError::internal(format!(
                "schedule delete cancelled: {reasons:?}"
            ))),
        }
    }

    async fn record_run(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        run: &ScheduleRun,
    ) -> Result<(), AppError> {
        let mut item = to_item(run)?;
        item.extend(Self::key(
            agency,
            format!("R#{id}#{:012}", run.scheduled_at.timestamp()),
        ));
        item.insert(
            "expiresAt".into(),
            n(run.fired_at.timestamp() + RUN_TTL_SECONDS),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:PutItem", e))?;
        Ok(())
    }

    async fn runs(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        limit: usize,
    ) -> Result<Vec<ScheduleRun>, AppError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :pk AND begins_with(SK, :r)")
            .expression_attribute_values(":pk", s(schedules_pk(agency)))
            .expression_attribute_values(":r", s(format!("R#{id}#")))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        out.items
            .unwrap_or_default()
            .into_iter()
            .map(from_item)
            .collect()
    }
}
