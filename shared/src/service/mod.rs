//! Use cases: what callers can do with tasks, with permissions and lifecycle
//! rules applied, written against the ports so they are testable without AWS.

pub mod agents;
pub mod batch_prep;
pub mod batch_runner;
#[cfg(test)]
mod batch_runner_tests;
pub mod batches;
#[cfg(test)]
mod batches_tests;
pub mod chains;
#[cfg(test)]
mod chains_tests;
pub mod fairness;
pub mod input;
pub mod pacing;
pub mod queues;
pub mod quotas;
pub mod request_rate;
pub mod runner;
#[cfg(test)]
mod runner_tests;
pub mod schedules;
pub mod state_events;
#[cfg(test)]
mod state_events_tests;
pub mod state_publisher;
pub mod sweeper;
#[cfg(test)]
mod sweeper_tests;
pub mod task_token;
pub mod tasks;

pub use agents::AgentService;
pub use batch_prep::{BatchPreparer, Prepared};
pub use batch_runner::BatchRunner;
pub use batches::{BatchService, BatchView};
pub use chains::ChainRunner;
pub use input::{AssignInput, AttachmentInput, CompleteInput, NewTaskInput, TaskPatch};
pub use queues::{AgencyTierStats, QueueOverview, QueueView, TierStats};
pub use request_rate::RequestQuota;
pub use runner::{Delivery, RunReport, TaskRunner};
pub use schedules::ScheduleService;
pub use sweeper::{SweepReport, Sweeper};
pub use tasks::{AttachmentDownload, Created, NewAttachment, Ports, TaskService};
