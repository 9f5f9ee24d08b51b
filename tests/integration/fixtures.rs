//! Every `events/*.json` fixture, invoked on the real binary of the function that takes it
//! (as `make invoke` and `sam local invoke` do), against this test stack: each gives the
//! outcome `events/README.md` documents.

use integration_tests::stack;
use local_stack::runtime::FunctionRuntime;
use serde_json::Value;

/// (fixture, function, expected outcome)
const FIXTURES: &[(&str, &str, Outcome)] = &[
    ("api-create-task", "ApiFunction", Outcome::Status(201)),
    ("api-list-tasks", "ApiFunction", Outcome::Status(200)),
    ("api-openapi", "ApiFunction", Outcome::Status(200)),
    ("api-no-identity", "ApiFunction", Outcome::Status(401)),
    ("api-create-batch", "ApiFunction", Outcome::Status(202)),
    // Each names a task or batch this stack does not hold.
    ("api-get-task", "ApiFunction", Outcome::Status(404)),
    ("api-update-task", "ApiFunction", Outcome::Status(404)),
    ("api-delete-task", "ApiFunction", Outcome::Status(404)),
    ("api-assign-task", "ApiFunction", Outcome::Status(404)),
    ("api-start-task", "ApiFunction", Outcome::Status(404)),
    ("api-complete-task", "ApiFunction", Outcome::Status(404)),
    ("api-cancel-task", "ApiFunction", Outcome::Status(404)),
    ("api-task-steps", "ApiFunction", Outcome::Status(404)),
    ("api-add-attachment", "ApiFunction", Outcome::Status(404)),
    ("api-get-batch", "ApiFunction", Outcome::Status(404)),
    // A dispatch for a task that does not exist: acknowledged, nothing to retry.
    (
        "sqs-tier-message",
        "WorkerFunction",
        Outcome::NoBatchItemFailures,
    ),
    // An upload notification for an object that is not there: the message comes back.
    (
        "sqs-batch-upload",
        "BatchTriggerFunction",
        Outcome::OneBatchItemFailure,
    ),
    ("scheduled-sweep", "SweeperFunction", Outcome::SweepReport),
    // A firing of a schedule this stack does not hold: nothing is created.
    (
        "schedule-firing",
        "ScheduleRunnerFunction",
        Outcome::NotFired,
    ),
    // Three status changes of one task, published to the stack's bus.
    (
        "dynamodb-stream",
        "EventPublisherFunction",
        Outcome::NoBatchItemFailures,
    ),
];

#[derive(Debug)]
enum Outcome {
    Status(u16),
    NoBatchItemFailures,
    OneBatchItemFailure,
    SweepReport,
    NotFired,
}

#[tokio::test]
async fn every_event_fixture_gives_its_documented_outcome() {
    if stack().functions.is_empty() {
        println!("SKIPPED: the functions run in-process (TASKFLOW_FUNCTIONS=in-process)");
        return;
    }
    let dir = local_stack::StackOptions::repo_root().join("events");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|f| f.0.to_owned()).collect();
    listed.push("s3-batch-upload".into()); // the notification sqs-batch-upload carries
    listed.sort();
    assert_eq!(on_disk, listed, "every fixture has a documented outcome");

    for (fixture, function, expected) in FIXTURES {
        let config = stack()
            .functions
            .iter()
            .find(|c| c.name == *function)
            .unwrap_or_else(|| panic!("{function}"))
            .clone();
        let event = std::fs::read(dir.join(format!("{fixture}.json"))).unwrap();
        let body = FunctionRuntime::new(config)
            .invoke(event)
            .await
            .unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let reply: Value = serde_json::from_slice(&body).unwrap();
        let failures = || reply["batchItemFailures"].as_array().map(Vec::len);
        match expected {
            Outcome::Status(status) => {
                assert_eq!(reply["statusCode"], *status, "{fixture}: {reply}")
            }
            Outcome::NoBatchItemFailures => assert_eq!(failures(), Some(0), "{fixture}: {reply}"),
            Outcome::OneBatchItemFailure => assert_eq!(failures(), Some(1), "{fixture}: {reply}"),
            Outcome::SweepReport => {
                assert!(reply["promoted"].is_u64(), "{fixture}: {reply}")
            }
            Outcome::NotFired => assert_eq!(
                (&reply["fired"], &reply["reason"]),
                (
                    &Value::Bool(false),
                    &Value::from("the schedule was deleted")
                ),
                "{fixture}: {reply}"
            ),
        }
    }
}
