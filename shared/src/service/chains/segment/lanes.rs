//! A segment's fair-share slots, held by lanes: a step about to run takes a free lane, and
//! runs in that lane's slot. A delivery never runs more steps at once than a wave's
//! concurrency, so it needs no more lanes than that, and a lane keeps its slot from one step
//! to the next instead of giving it back and taking it again: a sequential chain writes its
//! slot twice per delivery, not twice per step. A lane gives its slot back when its step
//! waits in place (a backoff), when a wave is narrower than the lanes held, and when the
//! delivery's walk ends.

use crate::domain::{AgencyId, Priority, TaskId};
use crate::error::AppError;
use crate::service::chains::ChainRunner;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lanes of one delivery: those holding a slot (and until when), and those a step runs in.
#[derive(Default)]
pub(super) struct Lanes(Mutex<LaneState>);

#[derive(Default)]
struct LaneState {
    held: HashMap<usize, DateTime<Utc>>,
    busy: HashSet<usize>,
}

impl Lanes {
    /// A free lane for a run that ends at `run_ends`, marked busy: one whose slot covers the
    /// run, else one holding a slot, else the lowest without one. With whether its slot
    /// already covers the run.
    fn take(&self, run_ends: DateTime<Utc>) -> (usize, bool) {
        let mut state = self.lock();
        let free_held = |state: &LaneState| {
            let mut lanes: Vec<(usize, DateTime<Utc>)> = state
                .held
                .iter()
                .filter(|(lane, _)| !state.busy.contains(lane))
                .map(|(lane, until)| (*lane, *until))
                .collect();
            lanes.sort();
            lanes
        };
        let held = free_held(&state);
        let (lane, covered) = match held.iter().find(|(_, until)| *until >= run_ends) {
            Some((lane, _)) => (*lane, true),
            None => match held.first() {
                Some((lane, _)) => (*lane, false),
                None => {
                    let lane = (0..)
                        .find(|lane| !state.busy.contains(lane) && !state.held.contains_key(lane))
                        .unwrap_or_default();
                    (lane, false)
                }
            },
        };
        state.busy.insert(lane);
        (lane, covered)
    }

    /// The step running in `lane` has ended its turn; the lane keeps its slot.
    pub(super) fn put_back(&self, lane: usize) {
        self.lock().busy.remove(&lane);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The slot holder of a segment's lane. Step holders are `<task>#<step>`: the character after
/// the task's id tells them apart whatever a step is named.
fn holder(task: TaskId, lane: usize) -> String {
    format!("{task}@lane{lane}")
}

impl ChainRunner {
    /// Takes a free lane for a step run of up to `budget`, taking its slot or keeping the one
    /// it holds when that lease covers the run. The lease lasts until the invocation's
    /// `deadline`, as a batch chunk's does (no run of this delivery outlives it; without one,
    /// the run limit). None: the agency is over its cap while others wait (defer).
    pub(super) async fn hold_lane(
        &self,
        (agency, tier, task): (&AgencyId, Priority, TaskId),
        budget: Duration,
        (lanes, deadline): (&Lanes, Option<Instant>),
    ) -> Result<Option<usize>, AppError> {
        let now = Utc::now();
        let run_ends = now + chrono::Duration::from_std(budget).map_err(AppError::internal)?;
        let (lane, covered) = lanes.take(run_ends);
        let Some(fairness) = self.fairness.as_ref().filter(|_| !covered) else {
            return Ok(Some(lane));
        };
        let lease = deadline
            .map(|end| end.saturating_duration_since(Instant::now()))
            .unwrap_or(self.lease)
            .max(budget);
        let until = now + chrono::Duration::from_std(lease).map_err(AppError::internal)?;
        match fairness
            .admit(agency, tier, &holder(task, lane), until, now)
            .await
        {
            Ok(true) => {
                lanes.lock().held.insert(lane, until);
                Ok(Some(lane))
            }
            Ok(false) => {
                lanes.put_back(lane);
                Ok(None)
            }
            Err(err) => {
                lanes.put_back(lane);
                Err(err)
            }
        }
    }

    /// Gives `lane`'s slot back, if it holds one, and frees the lane.
    pub(super) async fn free_lane(
        &self,
        run_by: (&AgencyId, Priority, TaskId),
        lane: usize,
        lanes: &Lanes,
    ) {
        let held = {
            let mut state = lanes.lock();
            state.busy.remove(&lane);
            state.held.remove(&lane).is_some()
        };
        if held {
            self.release_lane(run_by, lane).await;
        }
    }

    /// Gives back the slots of the idle lanes past the first `keep`: before a wave of that
    /// width (the walk's end keeps none), so a narrower wave holds no slot it cannot use.
    pub(super) async fn free_lanes(
        &self,
        run_by: (&AgencyId, Priority, TaskId),
        keep: usize,
        lanes: &Lanes,
    ) {
        let freed: Vec<usize> = {
            let mut state = lanes.lock();
            let mut idle: Vec<usize> = state
                .held
                .keys()
                .filter(|lane| !state.busy.contains(lane))
                .copied()
                .collect();
            idle.sort_unstable();
            let freed: Vec<usize> = idle.into_iter().skip(keep).collect();
            for lane in &freed {
                state.held.remove(lane);
            }
            freed
        };
        for lane in freed {
            self.release_lane(run_by, lane).await;
        }
    }

    async fn release_lane(&self, (agency, tier, task): (&AgencyId, Priority, TaskId), lane: usize) {
        if let Some(fairness) = &self.fairness {
            fairness.release(agency, tier, &holder(task, lane)).await;
        }
    }
}
