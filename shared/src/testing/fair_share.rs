//! Fair share held in memory: the in-flight slots, tier demand and dispatch windows, as the
//! DynamoDB adapters keep them.

use crate::domain::{AgencyId, DispatchMessage, Priority, TaskId};
use crate::error::AppError;
use crate::ports::{Entry, Placement, WindowState};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// In-flight slots and tier demand held in memory, as `DynamoInFlightSlots` keeps them.
#[derive(Debug, Default)]
pub struct MemorySlots {
    /// (agency, tier) → holder → lease end.
    holders: Mutex<HashMap<(AgencyId, Priority), SlotLeases>>,
    /// tier → agency → its latest demand stamp.
    demand: Mutex<HashMap<Priority, SlotLeases<AgencyId>>>,
    /// Writes so far (each one request on AWS): slots taken or renewed, and given back.
    pub acquires: AtomicUsize,
    pub releases: AtomicUsize,
    /// The most slots one agency held on a tier at once.
    pub most_held: AtomicUsize,
}

type SlotLeases<K = String> = HashMap<K, DateTime<Utc>>;

#[async_trait]
impl crate::ports::InFlightSlots for MemorySlots {
    async fn acquire(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
        until: DateTime<Utc>,
        cap: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let mut all = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        let slots = all.entry((agency.clone(), tier)).or_default();
        if let Some(cap) = cap {
            if !slots.contains_key(holder) && slots.len() >= cap as usize {
                slots.retain(|_, expires| *expires > now);
                if slots.len() >= cap as usize {
                    return Ok(false);
                }
            }
        }
        slots.insert(holder.to_owned(), until);
        self.acquires.fetch_add(1, Ordering::SeqCst);
        self.most_held.fetch_max(slots.len(), Ordering::SeqCst);
        Ok(true)
    }

    async fn release(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
    ) -> Result<(), AppError> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        let mut all = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slots) = all.get_mut(&(agency.clone(), tier)) {
            slots.remove(holder);
        }
        Ok(())
    }

    async fn held(
        &self,
        agency: &AgencyId,
        tier: Priority,
        now: DateTime<Utc>,
    ) -> Result<u32, AppError> {
        let all = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        Ok(all.get(&(agency.clone(), tier)).map_or(0, |slots| {
            slots.values().filter(|e| **e > now).count() as u32
        }))
    }

    async fn stamp_demand(
        &self,
        tier: Priority,
        agency: &AgencyId,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let mut demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        demand.entry(tier).or_default().insert(agency.clone(), now);
        Ok(())
    }

    async fn others_waiting(
        &self,
        tier: Priority,
        agency: &AgencyId,
        since: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let demand = self.demand.lock().unwrap_or_else(|e| e.into_inner());
        Ok(demand
            .get(&tier)
            .is_some_and(|d| d.iter().any(|(a, at)| a != agency && *at >= since)))
    }
}

/// Dispatch windows and parked dispatches held in memory, as `DynamoDispatchWindow` keeps them.
#[derive(Debug, Default)]
pub struct MemoryWindow {
    windows: Mutex<HashMap<(AgencyId, Priority), Window>>,
    /// Calls to `enter`, for tests that count them.
    pub enters: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct Window {
    places: SlotLeases,
    parked: BTreeMap<TaskId, DispatchMessage>,
    mark: Option<String>,
    marks_written: u64,
}

impl MemoryWindow {
    /// Places taken in the agency's window on `tier` (expired ones included).
    pub fn taken(&self, agency: &AgencyId, tier: Priority) -> usize {
        self.with(agency, tier, |w| w.places.len())
    }

    /// The tasks holding places in the agency's window on `tier`.
    pub fn places(&self, agency: &AgencyId, tier: Priority) -> Vec<TaskId> {
        self.with(agency, tier, |w| {
            w.places
                .keys()
                .filter_map(|id| TaskId::parse(id).ok())
                .collect()
        })
    }

    /// Dispatches parked for the agency on `tier`.
    pub fn parked_count(&self, agency: &AgencyId, tier: Priority) -> usize {
        self.with(agency, tier, |w| w.parked.len())
    }

    /// Whether the window carries a parked mark.
    pub fn marked(&self, agency: &AgencyId, tier: Priority) -> bool {
        self.with(agency, tier, |w| w.mark.is_some())
    }

    fn with<T>(&self, agency: &AgencyId, tier: Priority, f: impl FnOnce(&mut Window) -> T) -> T {
        let mut all = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        f(all.entry((agency.clone(), tier)).or_default())
    }
}

#[async_trait]
impl crate::ports::DispatchWindow for MemoryWindow {
    async fn enter(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
        until: DateTime<Utc>,
        size: u32,
        now: DateTime<Utc>,
        entry: Entry,
    ) -> Result<Placement, AppError> {
        self.enters
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let task = task.to_string();
        Ok(self.with(agency, tier, |w| {
            if entry == Entry::Refill && w.places.contains_key(&task) {
                return Placement::Held;
            }
            if !w.places.contains_key(&task) && w.places.len() >= size as usize {
                w.places.retain(|_, expires| *expires > now);
                if w.places.len() >= size as usize {
                    return Placement::Full;
                }
            }
            w.places.insert(task, until);
            Placement::Entered
        }))
    }

    async fn leave(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<WindowState, AppError> {
        Ok(self.with(agency, tier, |w| {
            w.places.remove(&task.to_string());
            WindowState {
                taken: w.places.len() as u32,
                parked_mark: w.mark.clone(),
            }
        }))
    }

    async fn park(&self, message: &DispatchMessage) -> Result<(), AppError> {
        self.with(&message.agency_id, message.priority, |w| {
            w.parked.insert(message.task_id, message.clone());
            w.marks_written += 1;
            w.mark = Some(format!("{}#{}", message.task_id, w.marks_written));
        });
        Ok(())
    }

    async fn parked(
        &self,
        agency: &AgencyId,
        tier: Priority,
        limit: usize,
    ) -> Result<Vec<DispatchMessage>, AppError> {
        Ok(self.with(agency, tier, |w| {
            w.parked.values().take(limit.max(1)).cloned().collect()
        }))
    }

    async fn unpark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<(), AppError> {
        self.with(agency, tier, |w| w.parked.remove(&task));
        Ok(())
    }

    async fn clear_parked_mark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        mark: &str,
    ) -> Result<(), AppError> {
        self.with(agency, tier, |w| {
            if w.mark.as_deref() == Some(mark) {
                w.mark = None;
            }
        });
        Ok(())
    }
}
