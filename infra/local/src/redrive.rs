//! Moving a tier's dead letters back to its queue on the local stack: what SQS's
//! `StartMessageMoveTask` does on AWS, which moto 5.2.5 answers with HTTP 500.

use anyhow::{Context, Result};
use aws_sdk_sqs::types::MessageSystemAttributeName;

/// Moves every message on `dead_letters` to `queue`, body, attributes and message group kept,
/// each deleted only after its copy is sent (a failure in between leaves a duplicate, never a
/// loss). Calls `progress` with the running total after each batch; returns the total.
pub async fn redrive(
    sqs: &aws_sdk_sqs::Client,
    dead_letters: &str,
    queue: &str,
    mut progress: impl FnMut(usize),
) -> Result<usize> {
    let mut moved = 0;
    loop {
        let received = sqs
            .receive_message()
            .queue_url(dead_letters)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .send()
            .await
            .with_context(|| format!("receiving from {dead_letters}"))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(moved);
        }
        for message in messages {
            let body = message.body().unwrap_or_default();
            let group = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned()
                .or_else(|| shared::domain::message_group(body));
            sqs.send_message()
                .queue_url(queue)
                .message_body(body)
                .set_message_attributes(message.message_attributes().cloned())
                .set_message_group_id(group)
                .send()
                .await
                .with_context(|| format!("sending to {queue}"))?;
            if let Some(receipt) = message.receipt_handle() {
                sqs.delete_message()
                    .queue_url(dead_letters)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .with_context(|| format!("deleting from {dead_letters}"))?;
            }
            moved += 1;
        }
        progress(moved);
    }
}
