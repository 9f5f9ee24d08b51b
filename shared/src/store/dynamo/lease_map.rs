//! A capped set of leases kept as one map attribute of one item (`name → lease end`, epoch
//! ms): the fair-share slots (`holders`) and the dispatch window (`places`) are both this.
//! Taking, renewing and giving back are single conditional updates of one map entry, and the
//! count is `size(map)`, so it cannot drift; an entry whose lease ended is removed
//! (conditionally on that same lease end) when a taker finds the map full.

use super::keys::{n, s, PK, SK};
use crate::error::AppError;
use crate::store::{conditional_write, from_sdk};
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Concurrent writers can make each step's condition fail once; a few rounds settle it.
const ROUNDS: usize = 4;

/// What a [`LeaseMap::take`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Taken,
    /// `cap` live entries are held.
    Full,
    /// The name holds an entry already, and the take was not to renew it.
    Held,
}

/// One item's map of leases.
pub(super) struct LeaseMap<'a> {
    pub client: &'a Client,
    pub table: &'a str,
    pub pk: String,
    pub sk: String,
    /// The map attribute's name (a plain identifier).
    pub attribute: &'static str,
}

impl LeaseMap<'_> {
    pub fn update(&self) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(self.table)
            .key(PK, s(&self.pk))
            .key(SK, s(&self.sk))
    }

    /// The map's entries: name → lease end (epoch ms). None: no map yet.
    pub async fn entries(&self) -> Result<Option<HashMap<String, i64>>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table)
            .key(PK, s(&self.pk))
            .key(SK, s(&self.sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        Ok(out
            .item
            .and_then(|item| lease_entries(item.get(self.attribute))))
    }

    /// Takes (or, when `renew`, renews) `name`'s lease until `until`: with `cap`, only while
    /// fewer than `cap` entries exist (or `name` is one of them and `renew`), after removing
    /// entries whose lease ended before `now`.
    pub async fn take(
        &self,
        name: &str,
        until: DateTime<Utc>,
        cap: Option<u32>,
        now: DateTime<Utc>,
        renew: bool,
    ) -> Result<Take, AppError> {
        let map = self.attribute;
        let until_ms = until.timestamp_millis();
        for _ in 0..ROUNDS {
            // The usual case: the map exists and has room (or already names this entry).
            let mut update = self
                .update()
                .update_expression(format!("SET {map}.#h = :until"))
                .expression_attribute_names("#h", name)
                .expression_attribute_values(":until", n(until_ms));
            update = match (cap, renew) {
                (Some(cap), true) => update
                    .condition_expression(format!(
                        "attribute_exists({map}) AND (size({map}) < :cap OR attribute_exists({map}.#h))"
                    ))
                    .expression_attribute_values(":cap", n(cap)),
                (Some(cap), false) => update
                    .condition_expression(format!(
                        "attribute_exists({map}) AND size({map}) < :cap AND attribute_not_exists({map}.#h)"
                    ))
                    .expression_attribute_values(":cap", n(cap)),
                (None, true) => update.condition_expression(format!("attribute_exists({map})")),
                (None, false) => update.condition_expression(format!(
                    "attribute_exists({map}) AND attribute_not_exists({map}.#h)"
                )),
            };
            // A refusal answers with the item as it was, so deciding why costs no read.
            let refused = match update
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await
            {
                Ok(_) => return Ok(Take::Taken),
                Err(err) => match err.as_service_error() {
                    Some(UpdateItemError::ConditionalCheckFailedException(refusal)) => {
                        lease_entries(refusal.item().and_then(|item| item.get(map)))
                    }
                    _ => return Err(from_sdk("dynamodb:UpdateItem", err)),
                },
            };
            let Some(entries) = refused else {
                // No map yet: create it holding this entry, unless another writer just did.
                let first = self
                    .update()
                    .update_expression(format!("SET {map} = :entries"))
                    .condition_expression(format!("attribute_not_exists({map})"))
                    .expression_attribute_values(
                        ":entries",
                        AttributeValue::M(HashMap::from([(name.to_owned(), n(until_ms))])),
                    );
                if conditional_write("dynamodb:UpdateItem", first.send().await)? {
                    return Ok(Take::Taken);
                }
                continue;
            };
            if entries.contains_key(name) {
                if renew {
                    continue; // taken meanwhile by this name: renew it
                }
                return Ok(Take::Held);
            }
            let full = cap.is_some_and(|cap| entries.len() >= cap as usize);
            if !full {
                continue; // changed since the update: try again
            }
            let now_ms = now.timestamp_millis();
            let expired: Vec<(String, i64)> = entries
                .into_iter()
                .filter(|(_, lease_end)| *lease_end <= now_ms)
                .collect();
            if expired.is_empty() {
                return Ok(Take::Full);
            }
            tracing::info!(pk = %self.pk, sk = %self.sk, reclaimed = expired.len(), "reclaiming leases that ended");
            self.reclaim(&expired).await?;
        }
        Ok(Take::Full)
    }

    /// Removes entries whose lease ended, each only if its lease end is still the one read.
    async fn reclaim(&self, expired: &[(String, i64)]) -> Result<bool, AppError> {
        let map = self.attribute;
        let mut update = self.update();
        let mut removes = Vec::new();
        let mut conditions = Vec::new();
        for (i, (name, until)) in expired.iter().enumerate() {
            update = update
                .expression_attribute_names(format!("#x{i}"), name)
                .expression_attribute_values(format!(":e{i}"), n(*until));
            removes.push(format!("{map}.#x{i}"));
            conditions.push(format!("{map}.#x{i} = :e{i}"));
        }
        let update = update
            .update_expression(format!("REMOVE {}", removes.join(", ")))
            .condition_expression(conditions.join(" AND "));
        conditional_write("dynamodb:UpdateItem", update.send().await)
    }

    /// The update that gives `name`'s lease back (idempotent); it fails its condition, writing
    /// nothing, where there is no map (nothing was held). Callers may add to it.
    pub fn give_back(&self, name: &str) -> UpdateItemFluentBuilder {
        let map = self.attribute;
        self.update()
            .update_expression(format!("REMOVE {map}.#h"))
            .condition_expression(format!("attribute_exists({map})"))
            .expression_attribute_names("#h", name)
    }
}

/// A lease map attribute's entries (those whose value is a number).
pub(super) fn lease_entries(value: Option<&AttributeValue>) -> Option<HashMap<String, i64>> {
    match value {
        Some(AttributeValue::M(map)) => Some(
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_n().ok()?.parse().ok()?)))
                .collect(),
        ),
        _ => None,
    }
}
