//! AWS adapters behind the ports in `crate::ports`.

pub mod attachments;
pub mod dynamo;
pub mod events;
pub mod objects;
pub mod orchestrator;
pub mod queues;
pub mod scheduler;
mod sdk_error;

pub use attachments::S3AttachmentStorage;
pub use dynamo::{
    DynamoAgentStore, DynamoBatchStore, DynamoRequestBuckets, DynamoSchedulingIndex,
    DynamoTaskStore,
};
pub use events::EventBridgeBus;
pub use objects::S3ObjectStore;
pub use orchestrator::SfnOrchestrator;
pub use queues::{SqsDispatcher, SqsPreparations};
pub use scheduler::{EventBridgeScheduler, SchedulerTarget};
pub(crate) use sdk_error::{conditional_write, from_sdk};
