//! Step Functions' 256 KiB state payload limit, which the emulator does not enforce: every
//! state input and output of an execution, read back from its history.

use aws_sdk_sfn::types::HistoryEvent;
use local_stack::limits::MAX_STATE_PAYLOAD_BYTES;

/// Each payload of the execution over 256 KiB, named by its event.
pub async fn oversize_states(sfn: &aws_sdk_sfn::Client, execution_arn: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(execution_arn)
            .set_next_token(token.clone())
            .send()
            .await
            .expect("execution history");
        for event in page.events() {
            for (what, payload) in payloads(event) {
                if payload.len() > MAX_STATE_PAYLOAD_BYTES {
                    found.push(format!(
                        "event {} ({:?}): {what} of {} bytes",
                        event.id(),
                        event.r#type(),
                        payload.len()
                    ));
                }
            }
        }
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            return found;
        }
    }
}

/// The state payloads an event carries.
fn payloads(event: &HistoryEvent) -> Vec<(&'static str, &str)> {
    let mut out = Vec::new();
    if let Some(d) = event.execution_started_event_details() {
        out.extend(d.input().map(|p| ("execution input", p)));
    }
    if let Some(d) = event.execution_succeeded_event_details() {
        out.extend(d.output().map(|p| ("execution output", p)));
    }
    if let Some(d) = event.state_entered_event_details() {
        out.extend(d.input().map(|p| ("state input", p)));
    }
    if let Some(d) = event.state_exited_event_details() {
        out.extend(d.output().map(|p| ("state output", p)));
    }
    if let Some(d) = event.task_scheduled_event_details() {
        out.push(("task parameters", d.parameters()));
    }
    if let Some(d) = event.task_succeeded_event_details() {
        out.extend(d.output().map(|p| ("task output", p)));
    }
    out
}
