//! The batch preparer. Its queue carries two kinds of message:
//! - S3 upload notifications: each upload under `uploads/<agencyId>/` is recorded as a
//!   pending batch and its preparation is asked for;
//! - `{"prepareBatch": {…}}`: prepare a pending batch's round (from the API, a retry,
//!   an upload, a continuation or the sweeper), stopping before the invocation's deadline.
//!
//! A record that failed for a transient reason is reported as a batch item failure and
//! comes back. Test events and objects outside `uploads/` are acknowledged and ignored.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde::Deserialize;
use shared::aws::AwsClients;
use shared::config::Config;
use shared::domain::PrepareBatch;
use shared::service::batch_prep::STOP_MARGIN;
use shared::service::{BatchPreparer, BatchService};
use shared::services::Services;
use shared::AppError;
use std::time::Instant;

pub struct BatchTrigger {
    batches: BatchService,
    preparer: BatchPreparer,
}

/// A message asking for a preparation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PrepareMessage {
    prepare_batch: PrepareBatch,
}

impl BatchTrigger {
    pub fn new(config: &Config, clients: &AwsClients) -> Self {
        let services = Services::new(config, clients);
        Self {
            batches: services.batches,
            preparer: services.batch_preparer,
        }
    }

    /// The instant a preparation should stop starting work, for an invocation that must
    /// end by `deadline_ms` (milliseconds since the Unix epoch, from the Lambda context).
    pub fn stop_at(deadline_ms: u64) -> Instant {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let left = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
        Instant::now() + left.saturating_sub(STOP_MARGIN)
    }

    pub async fn from_env() -> Result<Self, AppError> {
        let config = Config::from_env()?;
        Ok(Self::new(&config, &AwsClients::from_env().await))
    }

    pub async fn handle_batch(&self, event: SqsEvent, stop_at: Instant) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let body = record.body.as_deref().unwrap_or_default();
            let handled = match serde_json::from_str::<PrepareMessage>(body) {
                Ok(message) => self
                    .preparer
                    .prepare(&message.prepare_batch, stop_at)
                    .await
                    .map(|outcome| {
                        tracing::info!(batch = %message.prepare_batch.batch_id, ?outcome, "preparation pass ended");
                    }),
                Err(_) => self.handle_notification(body).await,
            };
            if let Err(err) = handled {
                tracing::warn!(error = %err, "message will be retried");
                if let Some(id) = record.message_id {
                    let mut failure = BatchItemFailure::default();
                    failure.item_identifier = id;
                    response.batch_item_failures.push(failure);
                }
            }
        }
        response
    }

    async fn handle_notification(&self, body: &str) -> Result<(), AppError> {
        let event = match serde_json::from_str::<Notification>(body) {
            Ok(event) => event,
            Err(err) => {
                // s3:TestEvent, and anything else that is not a notification.
                let excerpt: String = body.chars().take(300).collect();
                tracing::info!(%err, %excerpt, "ignoring a message that is not an S3 event notification");
                return Ok(());
            }
        };
        for record in event.records {
            if !record.event_name.starts_with("ObjectCreated") {
                continue;
            }
            let key = decode_key(&record.s3.object.key);
            // One batch per object content: a redelivered, repeated or doubled
            // (multipart) notification of the same object maps to the same batch.
            let object = &record.s3.object;
            let version = object
                .version_id
                .clone()
                .or(object.e_tag.clone().map(|e| e.trim_matches('"').to_owned()))
                .or(object.sequencer.clone())
                .unwrap_or_default();
            match self.batches.create_from_upload(&key, &version).await? {
                Some(batch) => tracing::info!(%key, %batch, "batch created from upload"),
                None => tracing::info!(%key, "no new batch for this notification"),
            }
        }
        Ok(())
    }
}

/// The parts of an S3 event notification this function reads. Parsed leniently:
/// emulators leave out fields (such as `userIdentity`) that AWS always sends.
#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "Records")]
    records: Vec<NotificationRecord>,
}

#[derive(Debug, Deserialize)]
struct NotificationRecord {
    #[serde(rename = "eventName", default)]
    event_name: String,
    s3: NotificationS3,
}

#[derive(Debug, Deserialize)]
struct NotificationS3 {
    object: NotificationObject,
}

#[derive(Debug, Deserialize)]
struct NotificationObject {
    key: String,
    #[serde(rename = "eTag")]
    e_tag: Option<String>,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    sequencer: Option<String>,
}

/// S3 notifications URL-encode keys, with `+` for spaces.
pub fn decode_key(raw: &str) -> String {
    form_urlencoded::parse(format!("k={raw}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_url_decoded() {
        assert_eq!(
            decode_key("uploads%2Facme%2Fmy+orders.csv"),
            "uploads/acme/my orders.csv"
        );
        assert_eq!(
            decode_key("uploads/acme/a%2Bb.json"),
            "uploads/acme/a+b.json"
        );
    }
}
