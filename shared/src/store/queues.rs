//! The tier queues on SQS.

use super::from_sdk;
use crate::domain::{DispatchMessage, Priority};
use crate::error::AppError;
use crate::ports::{Dispatcher, QueueDepth};
use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use std::collections::BTreeMap;
use std::time::Duration;

/// SQS caps DelaySeconds at 15 minutes.
const MAX_DELAY: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
pub struct SqsDispatcher {
    client: aws_sdk_sqs::Client,
    queue_urls: BTreeMap<Priority, String>,
    dlq_urls: BTreeMap<Priority, String>,
}

impl SqsDispatcher {
    pub fn new(
        client: aws_sdk_sqs::Client,
        queue_urls: BTreeMap<Priority, String>,
        dlq_urls: BTreeMap<Priority, String>,
    ) -> Self {
        Self {
            client,
            queue_urls,
            dlq_urls,
        }
    }

    fn url(urls: &BTreeMap<Priority, String>, tier: Priority) -> Result<&str, AppError> {
        urls.get(&tier)
            .map(String::as_str)
            .ok_or_else(|| AppError::internal(format!("no queue configured for tier {tier}")))
    }

    async fn counts(&self, url: &str) -> Result<(u64, u64), AppError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| from_sdk("sqs:GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let read = |name: QueueAttributeName| {
            attrs
                .get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((
            read(QueueAttributeName::ApproximateNumberOfMessages),
            read(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

#[async_trait]
impl Dispatcher for SqsDispatcher {
    async fn dispatch(&self, message: &DispatchMessage, delay: Duration) -> Result<(), AppError> {
        let body = serde_json::to_string(message).map_err(AppError::internal)?;
        self.client
            .send_message()
            .queue_url(Self::url(&self.queue_urls, message.priority)?)
            .set_message_group_id(crate::domain::message_group(&body))
            .message_body(body)
            .delay_seconds(crate::domain::seconds_rounded_up(delay.min(MAX_DELAY)) as i32)
            .send()
            .await
            .map_err(|e| from_sdk("sqs:SendMessage", e))?;
        Ok(())
    }

    fn queue_url(&self, tier: Priority) -> Option<String> {
        self.queue_urls.get(&tier).cloned()
    }

    async fn depth(&self, tier: Priority) -> Result<QueueDepth, AppError> {
        let (waiting, in_flight) = self.counts(Self::url(&self.queue_urls, tier)?).await?;
        let (dead, dead_in_flight) = self.counts(Self::url(&self.dlq_urls, tier)?).await?;
        Ok(QueueDepth {
            waiting,
            in_flight,
            dead_letters: dead + dead_in_flight,
        })
    }
}

/// The batch preparer's queue (the upload notifications' queue too).
#[derive(Debug, Clone)]
pub struct SqsPreparations {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsPreparations {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

#[async_trait]
impl crate::ports::Preparations for SqsPreparations {
    async fn request(&self, request: &crate::domain::PrepareBatch) -> Result<(), AppError> {
        let body = serde_json::to_string(&serde_json::json!({ "prepareBatch": request }))
            .map_err(AppError::internal)?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| from_sdk("sqs:SendMessage", e))?;
        Ok(())
    }
}
