//! Fair share at dispatch: each agency has a window of task runs sent to a tier's queue and not
//! yet started (`AGENCY_DISPATCH_WINDOWS`); a dispatch that finds its window full is parked in
//! the table instead, and sent as the agency's runs start and free their places.
//!
//! **Why.** A queue without fair queues delivers in order, so the in-flight cap
//! ([`super::fairness`]) alone could not help another agency whose tasks arrive behind a
//! flood: every message of the flood queued ahead of them had to be delivered first (measured:
//! 740 messages, 38× the wait). With the window, at most one window of an agency's runs is in
//! the queue at once, so work sent by another agency waits behind at most that many.
//!
//! **Alone, an agency still gets the whole tier:** the window is sized to a round of the tier's
//! deliveries, and each start refills it (in the same worker, concurrently with the run).
//!
//! **Nothing is lost.** A parked dispatch is kept until it was sent (sent first, forgotten
//! after: a crash in between sends it twice, and the runner drops the second copy). A park
//! marks the window after writing the parked dispatch, and a refill clears only the mark it
//! read when it found nothing, so a refill never misses a parked dispatch it could have seen;
//! a park that raced the window's last start tries once more itself. The sweeper refills, too,
//! the agencies whose work waits (a window whose places all leaked frees them when their
//! leases end), and the tasks stay `queued` in the pending index throughout, so aging and
//! re-dispatch cover them as they cover a lost message.

use crate::domain::{AgencyId, DispatchMessage, Priority, TaskId};
use crate::error::AppError;
use crate::ports::{DispatchWindow, Dispatcher, Entry, Placement, QueueDepth};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a place is kept for a message waiting in the queue: as long as a tier's normal
/// wait, so a place whose message was lost (a dead letter after store outages) frees itself.
pub const PLACE_LEASE: Duration = Duration::from_secs(15 * 60);
/// After a full answer, an instance parks the agency's next dispatches on the tier straight
/// away for this long (each still tries once after parking): a flood's dispatches do not each
/// ask first.
const FULL_HINT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Pacing {
    window: Arc<dyn DispatchWindow>,
    sizes: BTreeMap<Priority, u32>,
    /// Sends to the tier queues.
    queue: Arc<dyn Dispatcher>,
    /// When this instance last found each agency's window on a tier full.
    full: Arc<Mutex<HashMap<(Priority, AgencyId), Instant>>>,
}

impl Pacing {
    /// `sizes`: each tier's window per agency (a tier missing from it is not paced).
    pub fn new(
        window: Arc<dyn DispatchWindow>,
        sizes: BTreeMap<Priority, u32>,
        queue: Arc<dyn Dispatcher>,
    ) -> Self {
        Self {
            window,
            sizes,
            queue,
            full: Arc::default(),
        }
    }

    /// Sends a task run to its tier's queue if its agency's window there has room, and parks it
    /// otherwise. Either way it will run.
    pub async fn dispatch(
        &self,
        message: &DispatchMessage,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let (agency, tier) = (&message.agency_id, message.priority);
        let Some(size) = self.sizes.get(&tier).copied() else {
            return self.queue.dispatch(message, Duration::ZERO).await;
        };
        if !self.known_full(tier, agency) {
            if self
                .enter(agency, tier, message.task_id, size, now, Entry::Dispatch)
                .await?
                == Placement::Entered
            {
                return self.send(message).await;
            }
            self.note_full(tier, agency);
        }
        self.window.park(message).await?;
        tracing::debug!(%agency, %tier, task = %message.task_id, "dispatch window full: parked");
        // The window's last run may have started between the full answer and the mark, with
        // no refill to come: try once more.
        if self
            .enter(agency, tier, message.task_id, size, now, Entry::Refill)
            .await?
            == Placement::Entered
        {
            self.forget_full(tier, agency);
            self.send(message).await?;
            self.window.unpark(agency, tier, message.task_id).await?;
        }
        Ok(())
    }

    /// A delivered run leaves the queue (it starts, or is dropped): frees its place and sends
    /// parked dispatches into the room. A failure is logged: the sweeper refills.
    pub async fn left_queue(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
        now: DateTime<Utc>,
    ) {
        let Some(size) = self.sizes.get(&tier).copied() else {
            return;
        };
        let result = async {
            let state = self.window.leave(agency, tier, task).await?;
            match state.parked_mark {
                Some(mark) => {
                    let room = size.saturating_sub(state.taken).max(1);
                    self.refill(agency, tier, size, Some(&mark), room, now)
                        .await
                }
                None => Ok(0),
            }
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(%agency, %tier, error = %err, "dispatch window not refilled; the sweeper will");
        }
    }

    /// Sends the agency's oldest parked dispatches on `tier` while its window has room, at most
    /// `most` (the sweeper's pass, for work whose refill was lost). Answers how many were sent.
    pub async fn refill_waiting(
        &self,
        agency: &AgencyId,
        tier: Priority,
        most: u32,
        now: DateTime<Utc>,
    ) -> Result<usize, AppError> {
        let Some(size) = self.sizes.get(&tier).copied() else {
            return Ok(0);
        };
        self.refill(agency, tier, size, None, size.min(most), now)
            .await
    }

    /// Sends up to `room` parked dispatches into a window of `size`, oldest first, each only
    /// once it has a place. With nothing parked, clears the mark read (if still the latest).
    ///
    /// Another refill may have read the same oldest ones and be sending them (a run stays
    /// listed from its place taken until it is forgotten after its send). Those hold places, so
    /// at most `size` are listed while being sent: reading `room + size` always reaches the
    /// runs this refill may send, and a full window stops it.
    async fn refill(
        &self,
        agency: &AgencyId,
        tier: Priority,
        size: u32,
        mark: Option<&str>,
        room: u32,
        now: DateTime<Utc>,
    ) -> Result<usize, AppError> {
        if room == 0 {
            return Ok(0);
        }
        let parked = self
            .window
            .parked(agency, tier, room.saturating_add(size) as usize)
            .await?;
        if parked.is_empty() {
            if let Some(mark) = mark {
                self.window.clear_parked_mark(agency, tier, mark).await?;
            }
            return Ok(0);
        }
        let mut sent = 0;
        for message in parked {
            if sent == room as usize {
                break;
            }
            // Another refill may have read the same parked dispatch: only the one that takes
            // its place sends it (and forgets it); the other moves on.
            match self
                .enter(agency, tier, message.task_id, size, now, Entry::Refill)
                .await?
            {
                Placement::Entered => {}
                Placement::Held => continue,
                Placement::Full => break,
            }
            self.send(&message).await?;
            self.window.unpark(agency, tier, message.task_id).await?;
            sent += 1;
        }
        tracing::debug!(%agency, %tier, sent, "parked dispatches sent");
        Ok(sent)
    }

    fn known_full(&self, tier: Priority, agency: &AgencyId) -> bool {
        let full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        full.get(&(tier, agency.clone()))
            .is_some_and(|at| at.elapsed() < FULL_HINT)
    }

    fn forget_full(&self, tier: Priority, agency: &AgencyId) {
        let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        full.remove(&(tier, agency.clone()));
    }

    fn note_full(&self, tier: Priority, agency: &AgencyId) {
        let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        full.retain(|_, at| at.elapsed() < FULL_HINT);
        full.insert((tier, agency.clone()), Instant::now());
    }

    async fn enter(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
        size: u32,
        now: DateTime<Utc>,
        entry: Entry,
    ) -> Result<Placement, AppError> {
        let until = now + chrono::Duration::from_std(PLACE_LEASE).unwrap_or_default();
        self.window
            .enter(agency, tier, task, until, size, now, entry)
            .await
    }

    /// Sends a run that holds its place; a failed send gives the place back (best effort: it
    /// expires otherwise) and is the caller's to handle.
    async fn send(&self, message: &DispatchMessage) -> Result<(), AppError> {
        let sent = self.queue.dispatch(message, Duration::ZERO).await;
        if sent.is_err() {
            let (agency, tier) = (&message.agency_id, message.priority);
            if let Err(err) = self.window.leave(agency, tier, message.task_id).await {
                tracing::warn!(%agency, %tier, error = %err, "place of an unsent run kept until its lease ends");
            }
        }
        sent
    }
}

/// A dispatcher whose immediate sends of task runs go through their agency's window. Delayed
/// sends pass straight through (none of its callers make them).
pub struct PacedDispatcher {
    pacing: Pacing,
    inner: Arc<dyn Dispatcher>,
}

impl PacedDispatcher {
    /// `pacing` must send through `inner` (or a dispatcher wrapping it).
    pub fn new(pacing: Pacing, inner: Arc<dyn Dispatcher>) -> Self {
        Self { pacing, inner }
    }
}

#[async_trait]
impl Dispatcher for PacedDispatcher {
    async fn dispatch(&self, message: &DispatchMessage, delay: Duration) -> Result<(), AppError> {
        if delay.is_zero() {
            self.pacing.dispatch(message, Utc::now()).await
        } else {
            self.inner.dispatch(message, delay).await
        }
    }

    fn queue_url(&self, tier: Priority) -> Option<String> {
        self.inner.queue_url(tier)
    }

    async fn depth(&self, tier: Priority) -> Result<QueueDepth, AppError> {
        self.inner.depth(tier).await
    }
}

#[cfg(test)]
#[path = "pacing_tests.rs"]
mod tests;
