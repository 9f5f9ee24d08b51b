//! `GET /api/queues`: the state of each tier against its SLA.

use crate::domain::Priority;
use crate::error::AppError;
use crate::ports::{Dispatcher, SchedulingIndex};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierStats {
    pub tier: Priority,
    /// Messages waiting on the queue.
    pub backlog: u64,
    /// Messages a worker holds right now.
    pub in_flight: u64,
    pub dead_letters: u64,
    /// Seconds the oldest waiting task has waited (0 when none).
    pub oldest_waiting_seconds: u64,
    /// PRD SLA target; null for best effort.
    pub sla_seconds: Option<u64>,
    pub breaches_last_hour: u64,
}

#[derive(Clone)]
pub struct QueueOverview {
    pub dispatcher: Arc<dyn Dispatcher>,
    pub index: Arc<dyn SchedulingIndex>,
}

impl QueueOverview {
    pub async fn tiers(&self) -> Result<Vec<TierStats>, AppError> {
        self.tiers_at(Utc::now()).await
    }

    /// The overview as of `now`: waits and the breach window are measured from it.
    pub async fn tiers_at(&self, now: DateTime<Utc>) -> Result<Vec<TierStats>, AppError> {
        let mut stats = Vec::new();
        for tier in Priority::ALL {
            let depth = self.dispatcher.depth(*tier).await?;
            // The index keeps breached top-tier work apart: the oldest is either partition's first.
            let mut oldest = self.index.waiting(*tier, false, now, None, 1).await?;
            if tier.promoted() == *tier {
                oldest.extend(self.index.waiting(*tier, true, now, None, 1).await?);
            }
            let oldest_waiting_seconds = oldest
                .iter()
                .map(|w| (now - w.since).num_seconds().max(0) as u64)
                .max()
                .unwrap_or(0);
            stats.push(TierStats {
                tier: *tier,
                backlog: depth.waiting,
                in_flight: depth.in_flight,
                dead_letters: depth.dead_letters,
                oldest_waiting_seconds,
                sla_seconds: tier.sla().map(|d| d.as_secs()),
                breaches_last_hour: self
                    .index
                    .breaches_between(*tier, now - chrono::Duration::hours(1), now)
                    .await?,
            });
        }
        Ok(stats)
    }
}
