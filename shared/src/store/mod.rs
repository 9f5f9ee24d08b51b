//! AWS adapters behind the ports in `crate::ports`.

pub mod attachments;
pub mod dynamo;
mod sdk_error;

pub use attachments::S3AttachmentStorage;
pub use dynamo::DynamoTaskStore;
pub(crate) use sdk_error::from_sdk;
