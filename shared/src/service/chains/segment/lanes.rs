//! A segment's fair-share slots, one per lane: the k-th step of a wave runs in lane k. A
//! delivery never runs more steps at once than its widest wave, so it needs no more slots than
//! that, and a lane keeps its slot from one step to the next instead of giving it back and
//! taking it again: a sequential chain writes its slot twice per delivery, not twice per step.
//! A lane gives its slot back before its step waits in place (a backoff, another delivery's
//! live run), so a held slot still means a step running, and every lane gives its slot back
//! when the delivery's walk ends.

use crate::domain::{AgencyId, Priority, TaskId};
use crate::error::AppError;
use crate::service::chains::ChainRunner;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lanes of one delivery that hold a slot, and until when.
#[derive(Default)]
pub(super) struct Lanes(Mutex<HashMap<usize, DateTime<Utc>>>);

impl Lanes {
    fn held_until(&self, lane: usize) -> Option<DateTime<Utc>> {
        self.lock().get(&lane).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, DateTime<Utc>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The slot holder of a segment's lane. Step holders are `<task>#<step>`: the character after
/// the task's id tells them apart whatever a step is named.
fn holder(task: TaskId, lane: usize) -> String {
    format!("{task}@lane{lane}")
}

impl ChainRunner {
    /// Takes `lane`'s slot for a step run of up to `budget`, or keeps it when the lease it
    /// holds covers that run. The lease lasts until the invocation's `deadline`, as a batch
    /// chunk's does (no run of this delivery outlives it; without one, the run limit). False:
    /// the agency is over its cap while others wait (defer).
    pub(super) async fn hold_lane(
        &self,
        (agency, tier, task): (&AgencyId, Priority, TaskId),
        lane: usize,
        budget: Duration,
        (lanes, deadline): (&Lanes, Option<Instant>),
    ) -> Result<bool, AppError> {
        let Some(fairness) = &self.fairness else {
            return Ok(true);
        };
        let now = Utc::now();
        let run_ends = now + chrono::Duration::from_std(budget).map_err(AppError::internal)?;
        if lanes
            .held_until(lane)
            .is_some_and(|until| until >= run_ends)
        {
            return Ok(true);
        }
        let lease = deadline
            .map(|end| end.saturating_duration_since(Instant::now()))
            .unwrap_or(self.lease)
            .max(budget);
        let until = now + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
        if !fairness
            .admit(agency, tier, &holder(task, lane), until, now)
            .await?
        {
            return Ok(false);
        }
        lanes.lock().insert(lane, until);
        Ok(true)
    }

    /// Gives `lane`'s slot back, if it holds one.
    pub(super) async fn free_lane(
        &self,
        (agency, tier, task): (&AgencyId, Priority, TaskId),
        lane: usize,
        lanes: &Lanes,
    ) {
        let held = lanes.lock().remove(&lane).is_some();
        if let (true, Some(fairness)) = (held, &self.fairness) {
            fairness.release(agency, tier, &holder(task, lane)).await;
        }
    }

    /// Gives every lane's slot back: the delivery's walk has ended.
    pub(super) async fn free_lanes(
        &self,
        (agency, tier, task): (&AgencyId, Priority, TaskId),
        lanes: &Lanes,
    ) {
        let held: Vec<usize> = lanes.lock().drain().map(|(lane, _)| lane).collect();
        if let Some(fairness) = &self.fairness {
            for lane in held {
                fairness.release(agency, tier, &holder(task, lane)).await;
            }
        }
    }
}
