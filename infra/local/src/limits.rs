//! AWS limits the emulator does not enforce, checked by the local host. A violation is
//! logged as an error and kept, so a test can assert there were none (or that one was caught).
//!
//! Checked elsewhere: DynamoDB's 400 KB item limit is enforced by moto itself (PutItem and
//! UpdateItem answer ValidationException); API Gateway's and Lambda's payload limits by the
//! local gateway (`api_gateway`).

use std::sync::{Arc, Mutex};

/// SQS's largest message: body and attributes together.
pub const MAX_SQS_MESSAGE_BYTES: usize = 256 * 1024;
/// Step Functions' largest state input or output.
pub const MAX_STATE_PAYLOAD_BYTES: usize = 256 * 1024;

/// The violations a local stack has seen.
#[derive(Debug, Clone, Default)]
pub struct LimitViolations(Arc<Mutex<Vec<String>>>);

impl LimitViolations {
    pub fn record(&self, what: String) {
        tracing::error!(violation = %what, "an AWS limit was exceeded; AWS would have refused this");
        self.0.lock().expect("not poisoned").push(what);
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

/// The size SQS counts for a message: its body plus each attribute's name, type and value.
pub fn sqs_message_bytes(message: &aws_sdk_sqs::types::Message) -> usize {
    let body = message.body.as_deref().map_or(0, str::len);
    let attributes: usize = message
        .message_attributes
        .iter()
        .flatten()
        .map(|(name, value)| {
            name.len()
                + value.data_type.len()
                + value.string_value.as_deref().map_or(0, str::len)
                + value.binary_value.as_ref().map_or(0, |b| b.as_ref().len())
        })
        .sum();
    body + attributes
}
