//! How a firing reaches its target: retried by the target's retry policy, then dead-lettered
//! with the attributes EventBridge Scheduler sets.

use super::{LocalScheduler, Target};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The first retry's wait; each next one waits twice as long, up to [`RETRY_WAIT_CAP`]
/// (Scheduler's own waits are unpublished; these keep a pass short).
const RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_WAIT_CAP: std::time::Duration = std::time::Duration::from_secs(5);
/// Scheduler's retry policy where a target has none.
const DEFAULT_RETRIES: i32 = 185;
const DEFAULT_EVENT_AGE_SECONDS: i32 = 86_400;

impl LocalScheduler {
    /// Invokes the target with `input`, retrying by its policy; a firing still failing then
    /// goes to its dead-letter queue (the next pass does not repeat it, as on Scheduler).
    pub(super) async fn deliver(
        &self,
        invoke: &Target,
        target: &aws_sdk_scheduler::types::Target,
        schedule_arn: &str,
        input: &str,
        at: DateTime<Utc>,
    ) -> Result<Value, String> {
        let event: Value =
            serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.to_owned()));
        let policy = target.retry_policy();
        let retries = policy
            .and_then(|p| p.maximum_retry_attempts())
            .unwrap_or(DEFAULT_RETRIES)
            .max(0) as u32;
        let max_age = std::time::Duration::from_secs(
            policy
                .and_then(|p| p.maximum_event_age_in_seconds())
                .unwrap_or(DEFAULT_EVENT_AGE_SECONDS)
                .max(0) as u64,
        );
        let started = std::time::Instant::now();
        let mut wait = RETRY_WAIT;
        let mut retried = 0;
        loop {
            let error = match invoke(event.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            if retried < retries && started.elapsed() + wait < max_age {
                tracing::warn!(schedule = schedule_arn, scheduled = %at, retry = retried + 1, error = %error, "schedule target failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_WAIT_CAP);
                retried += 1;
                continue;
            }
            tracing::error!(schedule = schedule_arn, scheduled = %at, retries = retried, error = %error, "schedule target failed for good");
            let dead_letter = target.dead_letter_config().and_then(|d| d.arn());
            match dead_letter {
                Some(queue) => {
                    if let Err(err) = self
                        .dead_letter(queue, input, &error, retried, schedule_arn, target.arn())
                        .await
                    {
                        tracing::error!(schedule = schedule_arn, error = %err, "the failed firing could not be dead-lettered");
                    }
                }
                None => tracing::error!(
                    schedule = schedule_arn,
                    "the failed firing has no dead-letter queue: it is dropped"
                ),
            }
            return Err(error);
        }
    }

    /// The dead-letter event: the target's input, with the attributes Scheduler sets.
    async fn dead_letter(
        &self,
        queue_arn: &str,
        input: &str,
        error: &str,
        retries: u32,
        schedule_arn: &str,
        target_arn: &str,
    ) -> Result<()> {
        let name = queue_arn.rsplit(':').next().unwrap_or_default();
        let url = self
            .sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .with_context(|| format!("the dead-letter queue {queue_arn}"))?
            .queue_url
            .unwrap_or_default();
        let attribute = |value: String| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
        };
        let excerpt: String = error.chars().take(1_000).collect();
        let mut send = self.sqs.send_message().queue_url(url).message_body(input);
        for (key, value) in [
            ("ERROR_CODE", "TargetInvocationFailed".to_owned()),
            ("ERROR_MESSAGE", excerpt),
            ("RETRY_ATTEMPTS", retries.to_string()),
            ("SCHEDULE_ARN", schedule_arn.to_owned()),
            ("TARGET_ARN", target_arn.to_owned()),
        ] {
            send = send.message_attributes(key, attribute(value)?);
        }
        send.send().await.context("sending the dead-letter event")?;
        Ok(())
    }
}
