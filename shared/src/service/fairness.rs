//! Fair share inside a tier, enforced by the project itself so that it also holds where SQS
//! fair queues do not exist (the emulator): each agency may hold at most its tier's cap of
//! in-flight runs while another agency has work waiting on that tier. A delivery over the cap
//! is deferred (a delayed copy of the message, so it is neither failed nor counted as an
//! attempt) and the worker moves on to the next message, which is how another agency's work
//! behind a flood is reached.
//!
//! **Alone, an agency gets the whole tier.** The cap binds only while another agency stamped
//! demand on the tier within [`DEMAND_WINDOW`]: every dispatch to a tier (API, sweeper) and
//! every delivery a worker takes stamps its agency. Over its cap with no one else waiting, an
//! agency takes a slot anyway, so slots still count everything in flight. The reason: a cap
//! that always bound would leave a lone agency's backlog waiting while the tier idles.

use crate::domain::{AgencyId, DispatchMessage, Priority};
use crate::error::AppError;
use crate::ports::{Dispatcher, InFlightSlots, QueueDepth};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// Tokio's clock (the system's outside tests), so paused-time tests can move it.
use tokio::time::Instant;

/// How long an agency's stamp says it has work waiting: longer than a flood takes to skim
/// (a deferral is a few milliseconds per message) and than the sweeper's re-dispatch of work
/// left waiting, which stamps again.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(60);
/// How long a deferred delivery stays away: long enough that a flood's messages do not spin
/// through the queue, short enough that the agency's next free slot is soon used.
pub const DEFER_DELAY: Duration = Duration::from_secs(2);
/// One instance stamps an agency's demand on a tier at most this often. A stamp holds for
/// [`DEMAND_WINDOW`], so one a quarter of it old still says the agency waits; the agency's
/// first stamp is always written at once. At one write per busy instance per agency and tier
/// every 15 s, a steady stream of tasks pays no stamp of its own, and the tier's demand item
/// (one key) takes a fifteenth of the writes a per-second stamp made.
pub const STAMP_EVERY: Duration = Duration::from_secs(15);
/// One instance reads whether other agencies wait on a tier at most this often.
const OTHERS_CACHE: Duration = Duration::from_secs(1);
/// Slots outlive the run's lease by this much: a slot is never reclaimed while its run may
/// still write its outcome.
const SLOT_MARGIN: Duration = Duration::from_secs(5);

type TierAgency = (Priority, AgencyId);

#[derive(Clone)]
pub struct Fairness {
    slots: Arc<dyn InFlightSlots>,
    caps: BTreeMap<Priority, u32>,
    stamped: Arc<Mutex<HashMap<TierAgency, Instant>>>,
    others: Arc<Mutex<HashMap<TierAgency, (Instant, bool)>>>,
}

impl Fairness {
    /// `caps`: each tier's in-flight cap per agency (a tier missing from it is not capped).
    pub fn new(slots: Arc<dyn InFlightSlots>, caps: BTreeMap<Priority, u32>) -> Self {
        Self {
            slots,
            caps,
            stamped: Arc::default(),
            others: Arc::default(),
        }
    }

    /// Whether a run (`holder`: see [`InFlightSlots`]) may start now, taking its slot until
    /// its lease `lease_until` (plus a margin) when it may. False: defer the delivery.
    pub async fn admit(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        self.note_demand(tier, agency, now).await;
        let until = lease_until + chrono::Duration::from_std(SLOT_MARGIN).unwrap_or_default();
        let cap = self.caps.get(&tier).copied();
        if self
            .slots
            .acquire(agency, tier, holder, until, cap, now)
            .await?
        {
            return Ok(true);
        }
        if self.others_waiting(tier, agency, now).await? {
            tracing::info!(%agency, %tier, holder, cap, "over the agency's in-flight cap while others wait: deferred");
            return Ok(false);
        }
        // Alone on the tier: the cap does not bind, but the slot is recorded all the same.
        self.slots
            .acquire(agency, tier, holder, until, None, now)
            .await
    }

    /// Gives the run's slot back. A failure only delays that until the slot's lease ends.
    pub async fn release(&self, agency: &AgencyId, tier: Priority, holder: &str) {
        if let Err(err) = self.slots.release(agency, tier, holder).await {
            tracing::warn!(%agency, %tier, holder, error = %err, "in-flight slot not released; it expires with the lease");
        }
    }

    /// Stamps the agency's demand on the tier (at most once per [`STAMP_EVERY`] per instance).
    /// A failure is logged: fairness may lapse for a moment, no work is lost.
    pub async fn note_demand(&self, tier: Priority, agency: &AgencyId, now: DateTime<Utc>) {
        let key = (tier, agency.clone());
        {
            let mut stamped = self.stamped.lock().unwrap_or_else(|e| e.into_inner());
            match stamped.get(&key) {
                Some(at) if at.elapsed() < STAMP_EVERY => return,
                _ => {
                    stamped.insert(key, Instant::now());
                }
            }
        }
        if let Err(err) = self.slots.stamp_demand(tier, agency, now).await {
            tracing::warn!(%agency, %tier, error = %err, "tier demand not recorded");
        }
    }

    async fn others_waiting(
        &self,
        tier: Priority,
        agency: &AgencyId,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let key = (tier, agency.clone());
        if let Some((at, waiting)) = self
            .others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if at.elapsed() < OTHERS_CACHE {
                return Ok(*waiting);
            }
        }
        let since = now - chrono::Duration::from_std(DEMAND_WINDOW).unwrap_or_default();
        let waiting = self.slots.others_waiting(tier, agency, since).await?;
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), waiting));
        Ok(waiting)
    }
}

/// A dispatcher that stamps each dispatch's agency as demand on its tier, after the send.
pub struct DemandStampingDispatcher {
    inner: Arc<dyn Dispatcher>,
    fairness: Fairness,
}

impl DemandStampingDispatcher {
    pub fn new(inner: Arc<dyn Dispatcher>, fairness: Fairness) -> Self {
        Self { inner, fairness }
    }
}

#[async_trait]
impl Dispatcher for DemandStampingDispatcher {
    async fn dispatch(&self, message: &DispatchMessage, delay: Duration) -> Result<(), AppError> {
        self.inner.dispatch(message, delay).await?;
        self.fairness
            .note_demand(message.priority, &message.agency_id, Utc::now())
            .await;
        Ok(())
    }

    fn queue_url(&self, tier: Priority) -> Option<String> {
        self.inner.queue_url(tier)
    }

    async fn depth(&self, tier: Priority) -> Result<QueueDepth, AppError> {
        self.inner.depth(tier).await
    }
}

#[cfg(test)]
#[path = "fairness_tests.rs"]
mod tests;
