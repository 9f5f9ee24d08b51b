//! End-to-end tests: real HTTP against the local stack (moto + the in-process
//! API host), started once per test binary on ports of its own.

mod attachments;
mod batches;
mod chains;
mod concurrency;
mod console;
mod emulator;
mod errors;
mod fairness;
mod faults;
mod fixtures;
mod hot_keys;
mod lifecycle;
mod limits;
mod paging;
mod permissions;
mod priority;
mod promises;
mod quotas;
mod readme;
mod redrive;
mod schedules;
mod soak;
mod state_events;
mod tenancy;
mod tiers;
