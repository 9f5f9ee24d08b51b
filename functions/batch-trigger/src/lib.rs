//! Turns S3 upload notifications into batches. Each SQS record carries one S3
//! event; a record whose batch could not be created (a transient error) is
//! reported as a batch item failure and comes back. Test events and objects
//! outside `uploads/` are acknowledged and ignored.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use serde::Deserialize;
use shared::aws::AwsClients;
use shared::config::Config;
use shared::service::BatchService;
use shared::services::Services;
use shared::AppError;

pub struct BatchTrigger {
    batches: BatchService,
}

impl BatchTrigger {
    pub fn new(config: &Config, clients: &AwsClients) -> Self {
        Self {
            batches: Services::new(config, clients).batches,
        }
    }

    pub async fn from_env() -> Result<Self, AppError> {
        let config = Config::from_env()?;
        Ok(Self::new(&config, &AwsClients::from_env().await))
    }

    pub async fn handle_batch(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for record in event.records {
            let body = record.body.as_deref().unwrap_or_default();
            if let Err(err) = self.handle_notification(body).await {
                tracing::warn!(error = %err, "upload notification will be retried");
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
