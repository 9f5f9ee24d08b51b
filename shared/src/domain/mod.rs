//! The task domain: validated value types, the task lifecycle and the records
//! the store persists. Nothing here talks to AWS.

pub mod batch;
pub mod fields;
pub mod identity;
pub mod ids;
pub mod lifecycle;
pub mod limits;
pub mod step;
pub mod task;

pub use batch::{BatchJob, BatchStatus};
pub use fields::{Description, Metadata, Priority, TaskType, Title};
pub use identity::{Caller, Role};
pub use ids::{AgencyId, AttachmentId, TaskId, UserId};
pub use lifecycle::TaskStatus;
pub use step::{StepStatus, TaskStep};
pub use task::{Attachment, Task};
