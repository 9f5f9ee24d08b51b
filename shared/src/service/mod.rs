//! Use cases: what callers can do with tasks, with permissions and lifecycle
//! rules applied, written against the ports so they are testable without AWS.

pub mod input;
pub mod tasks;

pub use input::{AssignInput, AttachmentInput, CompleteInput, NewTaskInput, TaskPatch};
pub use tasks::{Created, NewAttachment, TaskService};
