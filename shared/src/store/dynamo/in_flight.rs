//! The fair-share slots and tier demand (`ports::InFlightSlots`) on the single table.
//!
//! - Slots: one item per agency and tier, `PK = AGENCY#<id>#QUOTA`, `SK = IN_FLIGHT#<tier>`,
//!   whose `holders` map names each run holding a slot (holder → lease end, epoch ms). The
//!   count is `size(holders)`, so taking, renewing and giving back are single conditional
//!   updates of one map entry and the count cannot drift; a holder whose lease ended is
//!   removed (conditionally on that same lease end) when an acquire finds the agency full.
//! - Demand: one item per tier, `PK = DEMAND#<tier>`, `SK = DEMAND`, holding the two agencies
//!   that most recently stamped it (`a1`/`t1` the latest, `a2`/`t2` the one before, distinct),
//!   which is enough to answer "has any agency other than X stamped since t".

use super::keys::{n, s, PK, SK};
use super::quotas::quota_pk;
use crate::domain::{AgencyId, Priority};
use crate::error::AppError;
use crate::ports::InFlightSlots;
use crate::store::{conditional_write, from_sdk};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

const HOLDERS: &str = "holders";
/// Concurrent writers can make each step's condition fail once; a few rounds settle it.
const ROUNDS: usize = 4;

fn slots_sk(tier: Priority) -> String {
    format!("IN_FLIGHT#{tier}")
}

fn demand_pk(tier: Priority) -> String {
    format!("DEMAND#{tier}")
}

#[derive(Clone)]
pub struct DynamoInFlightSlots {
    client: Client,
    table: String,
}

impl DynamoInFlightSlots {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    fn slots_update(
        &self,
        agency: &AgencyId,
        tier: Priority,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(quota_pk(agency)))
            .key(SK, s(slots_sk(tier)))
    }

    /// The agency's holders on the tier: task id → lease end (epoch ms). None: no item yet.
    async fn holders(
        &self,
        agency: &AgencyId,
        tier: Priority,
    ) -> Result<Option<HashMap<String, i64>>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(quota_pk(agency)))
            .key(SK, s(slots_sk(tier)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        Ok(out.item.and_then(|item| match item.get(HOLDERS) {
            Some(AttributeValue::M(map)) => Some(
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse().ok()?)))
                    .collect(),
            ),
            _ => None,
        }))
    }

    /// Removes holders whose lease ended, each only if its lease end is still the one read.
    async fn reclaim(
        &self,
        agency: &AgencyId,
        tier: Priority,
        expired: &[(String, i64)],
    ) -> Result<bool, AppError> {
        let mut update = self.slots_update(agency, tier);
        let mut removes = Vec::new();
        let mut conditions = Vec::new();
        for (i, (holder, until)) in expired.iter().enumerate() {
            update = update
                .expression_attribute_names(format!("#x{i}"), holder)
                .expression_attribute_values(format!(":e{i}"), n(*until));
            removes.push(format!("{HOLDERS}.#x{i}"));
            conditions.push(format!("{HOLDERS}.#x{i} = :e{i}"));
        }
        let update = update
            .update_expression(format!("REMOVE {}", removes.join(", ")))
            .condition_expression(conditions.join(" AND "));
        conditional_write("dynamodb:UpdateItem", update.send().await)
    }
}

#[async_trait]
impl InFlightSlots for DynamoInFlightSlots {
    async fn acquire(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
        until: DateTime<Utc>,
        cap: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let holder = holder.to_owned();
        let until_ms = until.timestamp_millis();
        for _ in 0..ROUNDS {
            // The usual case: the map exists and has room (or already names this holder).
            let mut update = self
                .slots_update(agency, tier)
                .update_expression(format!("SET {HOLDERS}.#h = :until"))
                .expression_attribute_names("#h", &holder)
                .expression_attribute_values(":until", n(until_ms));
            update = match cap {
                Some(cap) => update
                    .condition_expression(format!(
                        "attribute_exists({HOLDERS}) AND (size({HOLDERS}) < :cap OR attribute_exists({HOLDERS}.#h))"
                    ))
                    .expression_attribute_values(":cap", n(cap)),
                None => update.condition_expression(format!("attribute_exists({HOLDERS})")),
            };
            if conditional_write("dynamodb:UpdateItem", update.send().await)? {
                return Ok(true);
            }
            let Some(holders) = self.holders(agency, tier).await? else {
                // No map yet: create it holding this slot, unless another writer just did.
                let first = self
                    .slots_update(agency, tier)
                    .update_expression(format!("SET {HOLDERS} = :holders"))
                    .condition_expression(format!("attribute_not_exists({HOLDERS})"))
                    .expression_attribute_values(
                        ":holders",
                        AttributeValue::M(HashMap::from([(holder.clone(), n(until_ms))])),
                    );
                if conditional_write("dynamodb:UpdateItem", first.send().await)? {
                    return Ok(true);
                }
                continue;
            };
            let full = cap.is_some_and(|cap| holders.len() >= cap as usize);
            if !full || holders.contains_key(&holder) {
                continue; // changed since the update: try again
            }
            let now_ms = now.timestamp_millis();
            let expired: Vec<(String, i64)> = holders
                .into_iter()
                .filter(|(_, lease_end)| *lease_end <= now_ms)
                .collect();
            if expired.is_empty() {
                return Ok(false);
            }
            tracing::info!(%agency, %tier, reclaimed = expired.len(), "reclaiming in-flight slots whose lease ended");
            self.reclaim(agency, tier, &expired).await?;
        }
        Ok(false)
    }

    async fn release(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
    ) -> Result<(), AppError> {
        let update = self
            .slots_update(agency, tier)
            .update_expression(format!("REMOVE {HOLDERS}.#h"))
            .condition_expression(format!("attribute_exists({HOLDERS})"))
            .expression_attribute_names("#h", holder);
        // No map: nothing was held.
        conditional_write("dynamodb:UpdateItem", update.send().await)?;
        Ok(())
    }

    async fn held(
        &self,
        agency: &AgencyId,
        tier: Priority,
        now: DateTime<Utc>,
    ) -> Result<u32, AppError> {
        let now_ms = now.timestamp_millis();
        Ok(self.holders(agency, tier).await?.map_or(0, |h| {
            h.values().filter(|until| **until > now_ms).count() as u32
        }))
    }

    async fn stamp_demand(
        &self,
        tier: Priority,
        agency: &AgencyId,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let update = || {
            self.client
                .update_item()
                .table_name(&self.table)
                .key(PK, s(demand_pk(tier)))
                .key(SK, s("DEMAND"))
                .expression_attribute_values(":a", s(agency.as_str()))
                .expression_attribute_values(":now", n(now.timestamp_millis()))
        };
        for _ in 0..ROUNDS {
            // The latest stamp is already this agency's: move its time on.
            let same = update()
                .update_expression("SET t1 = :now")
                .condition_expression("a1 = :a");
            if conditional_write("dynamodb:UpdateItem", same.send().await)? {
                return Ok(());
            }
            // Another agency's (or none): it becomes the one before.
            let other = update()
                .update_expression(
                    "SET a2 = if_not_exists(a1, :a), t2 = if_not_exists(t1, :now), a1 = :a, t1 = :now",
                )
                .condition_expression("attribute_not_exists(a1) OR a1 <> :a");
            if conditional_write("dynamodb:UpdateItem", other.send().await)? {
                return Ok(());
            }
        }
        Err(AppError::Unavailable(format!(
            "the demand item of tier {tier} is contended"
        )))
    }

    async fn others_waiting(
        &self,
        tier: Priority,
        agency: &AgencyId,
        since: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(demand_pk(tier)))
            .key(SK, s("DEMAND"))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(false);
        };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        let time = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        let since_ms = since.timestamp_millis();
        Ok([("a1", "t1"), ("a2", "t2")].iter().any(|(a, t)| {
            text(a).is_some_and(|other| other != agency.as_str())
                && time(t).is_some_and(|at| at >= since_ms)
        }))
    }
}
