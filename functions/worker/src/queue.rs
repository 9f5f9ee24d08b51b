//! The two queue actions the worker takes itself, behind a port so its decisions can be
//! tested without SQS: setting a kept message's retry delay, and sending a message (a
//! delayed copy for a long retry, a chunk's continuation, a dead letter). `SqsQueue` is the
//! production adapter.

use async_trait::async_trait;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageAttributeValue;
use shared::AppError;
use std::time::Duration;

/// SQS caps DelaySeconds at 15 minutes.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

#[async_trait]
pub trait QueueActions: Send + Sync {
    /// Makes a received message visible again `seconds` from now (ChangeMessageVisibility).
    async fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), AppError>;

    /// Sends `body` to a queue with these string message attributes (SendMessage), visible
    /// after `delay` (DelaySeconds, whole seconds, at most [`MAX_DELAY`]).
    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        attributes: &[(&str, String)],
        delay: Duration,
    ) -> Result<(), AppError>;
}

/// `QueueActions` on Amazon SQS.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl QueueActions for SqsQueue {
    async fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        seconds: i32,
    ) -> Result<(), AppError> {
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| AppError::Unavailable(DisplayErrorContext(err).to_string()))
    }

    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        attributes: &[(&str, String)],
        delay: Duration,
    ) -> Result<(), AppError> {
        let attributes = attributes
            .iter()
            .filter_map(|(name, value)| {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .ok()?;
                Some(((*name).to_owned(), value))
            })
            .collect();
        self.client
            .send_message()
            .queue_url(queue_url)
            // Copies keep the original's group (its agency), as every tier message carries.
            .set_message_group_id(shared::domain::message_group(body))
            .message_body(body)
            .set_message_attributes(Some(attributes))
            .delay_seconds(shared::domain::seconds_rounded_up(delay.min(MAX_DELAY)) as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| AppError::Unavailable(DisplayErrorContext(err).to_string()))
    }
}
