//! An in-memory event bus that can refuse calls or entries on request.

use crate::error::AppError;
use crate::ports::{BusEntry, EventBus};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Mutex;

/// How one PutEvents call is answered.
#[derive(Debug)]
pub enum BusFault {
    /// The whole call fails (throttling, access denied, the network).
    Call(AppError),
    /// The entries at these positions of the call are refused; the others accepted.
    Entries(Vec<usize>),
}

#[derive(Debug, Default)]
pub struct MemoryEventBus {
    accepted: Mutex<Vec<BusEntry>>,
    /// Entries per call, refused ones included.
    calls: Mutex<Vec<usize>>,
    faults: Mutex<VecDeque<BusFault>>,
}

impl MemoryEventBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next calls are answered with these faults, in order, then normally.
    pub fn fail_next(&self, fault: BusFault) {
        self.faults.lock().unwrap().push_back(fault);
    }

    /// Every entry accepted so far, in order.
    pub fn accepted(&self) -> Vec<BusEntry> {
        self.accepted.lock().unwrap().clone()
    }

    /// The size of each call made so far.
    pub fn calls(&self) -> Vec<usize> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    async fn put(&self, entries: &[BusEntry]) -> Result<Vec<Option<String>>, AppError> {
        self.calls.lock().unwrap().push(entries.len());
        let refused = match self.faults.lock().unwrap().pop_front() {
            Some(BusFault::Call(err)) => return Err(err),
            Some(BusFault::Entries(positions)) => positions,
            None => Vec::new(),
        };
        let mut accepted = self.accepted.lock().unwrap();
        Ok(entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                if refused.contains(&i) {
                    Some("InternalFailure".to_owned())
                } else {
                    accepted.push(entry.clone());
                    None
                }
            })
            .collect())
    }
}
