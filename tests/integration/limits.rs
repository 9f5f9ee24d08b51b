//! AWS limits the emulator lets through, caught by the local host or the test helpers.

use integration_tests::limits::oversize_states;
use integration_tests::{eventually, isolated_stack, scaled, stack};
use std::time::Duration;

#[tokio::test]
async fn an_sqs_message_over_256_kib_is_caught_and_never_delivered() {
    let host = isolated_stack("taskflow-limits-sqs").await;
    let clients = stack().clients().await;
    let queue = &host.resources.refs["CriticalQueue"];
    // moto takes it; SQS would refuse the send.
    clients
        .sqs
        .send_message()
        .queue_url(queue)
        .message_body("x".repeat(300 * 1024))
        .send()
        .await
        .expect("moto accepts oversize messages");
    let violations = eventually(
        "the oversize message to be caught",
        scaled(Duration::from_secs(30)),
        || std::future::ready(Some(host.limit_violations()).filter(|v| !v.is_empty())),
    )
    .await;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("307200 byte message"),
        "{violations:?}"
    );
    integration_tests::wait_until_drained(queue).await;
    host.stop().await;
}

#[tokio::test]
async fn a_state_over_256_kib_is_caught_from_the_execution_history() {
    let sfn = stack().clients().await.sfn;
    let name = format!("oversize-{}", ulid::Ulid::new());
    let input = serde_json::json!({"padding": "x".repeat(300 * 1024)}).to_string();
    let started = sfn
        .start_execution()
        .state_machine_arn(&stack().config.chain_state_machine_arn)
        .name(&name)
        .input(input)
        .send()
        .await
        .expect("moto starts it; Step Functions would refuse the input");
    // The history is written as the execution runs.
    let found = eventually(
        "the oversize input in the history",
        scaled(Duration::from_secs(30)),
        || async {
            let found = oversize_states(&sfn, started.execution_arn()).await;
            Some(found).filter(|f| !f.is_empty())
        },
    )
    .await;
    assert!(found.iter().any(|f| f.contains("input")), "{found:?}");
    let _ = sfn
        .stop_execution()
        .execution_arn(started.execution_arn())
        .send()
        .await;
}
