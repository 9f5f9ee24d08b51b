//! The task domain: validated value types, the task lifecycle and the records
//! the store persists. Nothing here talks to AWS.

pub mod agent;
pub mod batch;
pub mod batch_input;
pub mod chain;
pub mod execution;
pub mod fields;
pub mod identity;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod schedule;
pub mod segment;
pub mod step;
pub mod storable;
pub mod task;

pub use agent::{Agent, AgentStatus};
pub use batch::{
    BatchJob, BatchMessage, BatchSource, BatchStatus, ChunkCounts, ChunkDone, ChunkItem,
    ItemFailure, ManifestEntry, Preparation, PrepareBatch,
};
pub use chain::{ChainMessage, OnFailure, StepConfig};
pub use execution::{
    message_group, seconds_rounded_up, DispatchMessage, ExecutorSpec, RetryPolicy,
};
pub use fields::{Description, Metadata, Priority, TaskType, Title};
pub use identity::{Caller, Role};
pub use ids::{AgencyId, AttachmentId, ScheduleId, TaskId, UserId};
pub use lifecycle::TaskStatus;
pub use step::{StepStatus, TaskStep};
pub use task::{Attachment, Task};
