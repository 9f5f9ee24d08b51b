//! The request-rate bucket of each agency: one item, `PK = AGENCY#<id>#QUOTA`, `SK = REQUESTS`,
//! holding GCRA's theoretical arrival time `tat` (µs). Every admit writes it once or twice, for
//! one token or for a busy instance's lease of several (`service::request_rate`; see
//! ARCHITECTURE "Quotas" for the per-key write rate).

use super::keys::{PK, SK};
use crate::domain::AgencyId;
use crate::error::AppError;
use crate::ports::RequestBuckets;
use crate::store::conditional_write;
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

pub const REQUESTS_SK: &str = "REQUESTS";
/// `SK` prefix of the per-UTC-day batch item counters (`BATCH_ITEMS#2026-11-30`).
pub const BATCH_ITEMS_SK_PREFIX: &str = "BATCH_ITEMS#";

/// The partition of an agency's quota items.
pub fn quota_pk(agency: &AgencyId) -> String {
    format!("AGENCY#{agency}#QUOTA")
}
/// An idle agency's bucket is full again after at most a few seconds; TTL removes it after a day.
const BUCKET_TTL_SECONDS: u64 = 86_400;

#[derive(Clone)]
pub struct DynamoRequestBuckets {
    client: Client,
    table: String,
}

impl DynamoRequestBuckets {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    /// One conditional update; `Ok(false)` when its condition did not hold.
    async fn update(
        &self,
        agency: &AgencyId,
        set: &str,
        condition: &str,
        values: &[(&str, u64)],
        now_us: u64,
    ) -> Result<bool, AppError> {
        let n = |v: u64| AttributeValue::N(v.to_string());
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(quota_pk(agency)))
            .key(SK, AttributeValue::S(REQUESTS_SK.to_owned()))
            .update_expression(format!("SET {set}, expiresAt = :expires"))
            .condition_expression(condition)
            .expression_attribute_values(":expires", n(now_us / 1_000_000 + BUCKET_TTL_SECONDS));
        for (name, value) in values {
            request = request.expression_attribute_values(*name, n(*value));
        }
        conditional_write("dynamodb:UpdateItem", request.send().await)
    }

    async fn tat(&self, agency: &AgencyId) -> Result<Option<u64>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(quota_pk(agency)))
            .key(SK, AttributeValue::S(REQUESTS_SK.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        Ok(out
            .item
            .and_then(|item| item.get("tat")?.as_n().ok()?.parse().ok()))
    }
}

#[async_trait]
impl RequestBuckets for DynamoRequestBuckets {
    async fn admit(
        &self,
        agency: &AgencyId,
        now_us: u64,
        interval_us: u64,
        tolerance_us: u64,
        tokens: u64,
    ) -> Result<Result<(), u64>, AppError> {
        let tokens = tokens.max(1);
        let extra = interval_us.saturating_mul(tokens - 1);
        let taken = interval_us.saturating_mul(tokens);
        // The latest arrival time that leaves room for every token asked for; none when
        // even a full bucket does not hold them.
        let latest = (now_us.saturating_add(tolerance_us)).checked_sub(extra);
        // DynamoDB cannot write max(tat, now) + interval in one expression, so each case is its
        // own conditional write: a full bucket (tat in the past) restarts from now, a partly
        // used one moves tat on. A lost race between them just tries again.
        for _ in 0..3 {
            if latest.is_some_and(|latest| latest >= now_us)
                && self
                    .update(
                        agency,
                        "tat = :next",
                        "attribute_not_exists(tat) OR tat < :now",
                        &[(":now", now_us), (":next", now_us.saturating_add(taken))],
                        now_us,
                    )
                    .await?
            {
                return Ok(Ok(()));
            }
            if let Some(latest) = latest.filter(|latest| *latest >= now_us) {
                if self
                    .update(
                        agency,
                        "tat = tat + :taken",
                        "tat BETWEEN :now AND :latest",
                        &[(":now", now_us), (":latest", latest), (":taken", taken)],
                        now_us,
                    )
                    .await?
                {
                    return Ok(Ok(()));
                }
            }
            match self.tat(agency).await? {
                Some(tat) if latest.is_none_or(|latest| tat > latest) => return Ok(Err(tat)),
                None if latest.is_none_or(|latest| latest < now_us) => return Ok(Err(now_us)),
                _ => continue,
            }
        }
        Err(AppError::Unavailable(format!(
            "the request bucket of agency {agency} is contended; retry"
        )))
    }
}
