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
use super::lease_map::{LeaseMap, Take};
use super::quotas::quota_pk;
use crate::domain::{AgencyId, Priority};
use crate::error::AppError;
use crate::ports::InFlightSlots;
use crate::store::{conditional_write, from_sdk};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

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

    /// The agency's holders on the tier: run → lease end (epoch ms).
    fn slots(&self, agency: &AgencyId, tier: Priority) -> LeaseMap<'_> {
        LeaseMap {
            client: &self.client,
            table: &self.table,
            pk: quota_pk(agency),
            sk: slots_sk(tier),
            attribute: HOLDERS,
        }
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
        let taken = self
            .slots(agency, tier)
            .take(holder, until, cap, now, true)
            .await?;
        Ok(taken == Take::Taken)
    }

    async fn release(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
    ) -> Result<(), AppError> {
        // No map: nothing was held.
        let update = self.slots(agency, tier).give_back(holder);
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
        Ok(self.slots(agency, tier).entries().await?.map_or(0, |h| {
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
