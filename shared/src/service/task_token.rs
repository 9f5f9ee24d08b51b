//! Whether a task token still waits for its answer, asked when its message arrives: a copy
//! whose token has closed (Step Functions timed it out and sent a retry, or the execution
//! ended) must not run its work a second time beside the live copy.

use crate::error::AppError;
use crate::ports::Orchestrator;
use std::time::Duration;

/// The pauses before a token that a heartbeat called unknown is asked again.
const RECHECKS: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// Asks with a heartbeat, which also restarts the token's heartbeat clock. A "no" is asked
/// again after a pause before it is believed: moto registers a waiting token's heartbeat only
/// after sending the token's message, so a worker that picks the message up at once is told
/// the token is invalid, and dropping that live copy would leave the execution waiting for its
/// heartbeat timeout. A copy whose token really closed is dropped 2.5 s later.
pub async fn still_waits(orchestrator: &dyn Orchestrator, token: &str) -> Result<bool, AppError> {
    for pause in RECHECKS {
        if orchestrator.heartbeat(token).await? {
            return Ok(true);
        }
        tokio::time::sleep(pause).await;
    }
    orchestrator.heartbeat(token).await
}
