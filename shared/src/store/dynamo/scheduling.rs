//! Cross-agency scans for the sweeper (sparse GSI3 and GSI4) and SLA breach records.

use super::keys::{self, n, s, DUE_INDEX, PENDING_INDEX, PK, SK};
use crate::domain::Priority;
use crate::error::AppError;
use crate::ports::{SchedulingIndex, WaitingTask};
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::Select;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

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

#[async_trait]
impl SchedulingIndex for DynamoSchedulingIndex {
    async fn waiting(
        &self,
        tier: Priority,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WaitingTask>, AppError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PENDING_INDEX.name)
            .key_condition_expression("GSI3PK = :p AND GSI3SK < :before")
            .expression_attribute_values(":p", s(keys::tier_partition(tier)))
            .expression_attribute_values(":before", s(keys::sortable_time(before)))
            .limit(limit as i32)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        Ok(out
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| item.get(PENDING_INDEX.sk)?.as_s().ok().cloned())
            .filter_map(|sk| keys::parse_time_agency_id(&sk))
            .map(|(since, agency, id)| WaitingTask { agency, id, since })
            .collect())
    }

    async fn due_before(
        &self,
        deadline: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<WaitingTask>, AppError> {
        let mut found = Vec::new();
        let mut day = (Utc::now() - chrono::Duration::days(OVERDUE_LOOKBACK_DAYS)).date_naive();
        while day <= deadline.date_naive() && found.len() < limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX.name)
                .key_condition_expression("GSI4PK = :p AND GSI4SK <= :deadline")
                .expression_attribute_values(":p", s(keys::due_partition(day)))
                .expression_attribute_values(":deadline", s(keys::sortable_time(deadline)))
                .limit((limit - found.len()) as i32)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            found.extend(
                out.items
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|item| item.get(DUE_INDEX.sk)?.as_s().ok().cloned())
                    .filter_map(|sk| keys::parse_time_agency_id(&sk))
                    .map(|(since, agency, id)| WaitingTask { agency, id, since }),
            );
            day = day.succ_opt().unwrap_or(day);
            if day == deadline.date_naive().succ_opt().unwrap_or(day) {
                break;
            }
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
