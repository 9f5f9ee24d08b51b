//! State-change events end to end: the table's stream → the event publisher (its real binary)
//! → the stack's EventBridge bus → a rule → an SQS queue, which is how a user subscribes.
//! Each test subscribes to its own agency's events and checks, per task, step and batch, that
//! the events chain (each one's previousStatus is the status before it, in stream order)
//! from the creation to the end, with no event twice.

use integration_tests::{scaled, stack, unique_agency, wait_for_batch, wait_for_status, Client};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// A queue receiving the agency's state-change events through a rule on the stack's bus.
struct Subscription {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    events: Vec<Value>,
}

/// A rule on the shared stack's bus sending `agency`'s events to a queue of the test's own.
async fn subscribe(agency: &str) -> Subscription {
    let sdk = stack().sdk_config().await;
    subscribe_on(&sdk, &stack().refs["EventBus"], agency).await
}

async fn subscribe_on(
    sdk: &local_stack::emulator::SdkConfig,
    bus: &str,
    agency: &str,
) -> Subscription {
    let sdk = sdk.clone();
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    let name = format!("events-{agency}").replace(['.', '@', ':'], "-");
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let pattern = json!({"source": ["taskflow"], "detail": {"agencyId": [agency]}});
    events
        .put_rule()
        .name(&name)
        .event_bus_name(bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule(&name)
        .event_bus_name(bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    Subscription {
        sqs,
        queue_url,
        events: Vec::new(),
    }
}

impl Subscription {
    /// Receives what has arrived (one long poll).
    async fn receive(&mut self) -> usize {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        for message in &messages {
            let event: Value = serde_json::from_str(message.body().unwrap()).unwrap();
            self.events.push(event);
            self.sqs
                .delete_message()
                .queue_url(&self.queue_url)
                .receipt_handle(message.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        messages.len()
    }

    /// Receives until `done` holds for what arrived, then until two polls in a row bring
    /// nothing more (a duplicate would arrive with its original's batch or its retry).
    async fn collect_until(&mut self, what: &str, done: impl Fn(&Subscription) -> bool) {
        let deadline = std::time::Instant::now() + scaled(Duration::from_secs(90));
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                self.summary()
            );
            self.receive().await;
        }
        let mut quiet = 0;
        while quiet < 2 {
            quiet = if self.receive().await == 0 {
                quiet + 1
            } else {
                0
            };
        }
    }

    /// Each task's, step's and batch's statuses in stream order, with the checks every
    /// event stream must pass: source and detail-type agree with the detail, no event id
    /// twice, each event's previousStatus is the status before it, the first one has none.
    fn transitions(&self) -> BTreeMap<String, Vec<String>> {
        let mut ids = HashSet::new();
        let mut by_key: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for event in &self.events {
            assert_eq!(event["source"], "taskflow");
            let detail = &event["detail"];
            assert!(
                ids.insert(detail["eventId"].as_str().unwrap().to_owned()),
                "delivered twice: {detail}"
            );
            let kind = detail["kind"].as_str().unwrap();
            let status = detail["status"].as_str().unwrap();
            let title = |s: &str| {
                s.split('_')
                    .map(|w| w[..1].to_uppercase() + &w[1..])
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            assert_eq!(
                event["detail-type"],
                format!("{} {}", title(kind), title(status))
            );
            let key = match detail["step"].as_str() {
                Some(step) => format!("{kind}:{}:{step}", detail["taskId"].as_str().unwrap()),
                None => format!("{kind}:{}", detail["taskId"].as_str().unwrap()),
            };
            by_key.entry(key).or_default().push(detail);
        }
        by_key
            .into_iter()
            .map(|(key, mut details)| {
                details.sort_by_key(|d| d["sequence"].as_str().unwrap().to_owned());
                let mut previous = Value::Null;
                for d in &details {
                    assert_eq!(d["previousStatus"], previous, "{key}: {details:#?}");
                    previous = d["status"].clone();
                }
                let versions: Vec<u64> = details
                    .iter()
                    .filter_map(|d| d["version"].as_u64())
                    .collect();
                assert!(
                    versions.windows(2).all(|w| w[0] < w[1]),
                    "{key}: {versions:?}"
                );
                let statuses = details
                    .iter()
                    .map(|d| d["status"].as_str().unwrap().to_owned())
                    .collect();
                (key, statuses)
            })
            .collect()
    }

    fn summary(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| format!("{} {}", e["detail-type"], e["detail"]["taskId"]))
            .collect()
    }

    fn last_status(&self, wanted: &str) -> Option<String> {
        self.events
            .iter()
            .filter(|e| {
                let d = &e["detail"];
                let key = match d["step"].as_str() {
                    Some(step) => format!(
                        "{}:{}:{step}",
                        d["kind"].as_str().unwrap(),
                        d["taskId"].as_str().unwrap()
                    ),
                    None => format!(
                        "{}:{}",
                        d["kind"].as_str().unwrap(),
                        d["taskId"].as_str().unwrap()
                    ),
                };
                key == wanted
            })
            .max_by_key(|e| e["detail"]["sequence"].as_str().unwrap().to_owned())
            .map(|e| e["detail"]["status"].as_str().unwrap().to_owned())
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_task_a_chain_and_a_batch_publish_each_transition_once_in_order() {
    if stack().on_localstack() {
        println!("SKIPPED on LocalStack: the bus is moto's, its rules deliver to moto's SQS");
        return;
    }
    let agency = unique_agency("events");
    let boss = Client::as_user(&agency, "boss", "manager");
    let mut events = subscribe(&agency).await;

    let task = boss
        .create_task(
            &json!({"title": "echo", "priority": "high", "autoDispatch": true,
            "executor": {"type": "echo"}, "input": {"n": 1}}),
        )
        .await;
    let chain = boss
        .create_task(&json!({"title": "chain", "type": "multi_step", "priority": "high", "autoDispatch": true, "steps": [
            {"name": "a", "config": {"executor": {"type": "echo"}}},
            {"name": "b", "dependsOn": ["a"], "config": {"executor": {"type": "echo"}}},
            {"name": "c", "dependsOn": ["b"], "config": {"executor": {"type": "echo"}}},
        ]}))
        .await;
    let reply = boss
        .post("/api/batches", &json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}], "itemsPerBatch": 2, "priority": "high"}))
        .await;
    let batch = reply.body["id"].as_str().unwrap().to_owned();
    wait_for_status(&boss, &task, &["completed"]).await;
    wait_for_status(&boss, &chain, &["completed"]).await;
    assert_eq!(wait_for_batch(&boss, &batch).await["status"], "completed");

    let finished = [
        format!("task:{task}"),
        format!("task:{chain}"),
        format!("step:{chain}:c"),
        format!("batch:{batch}"),
    ];
    events
        .collect_until("every final event", |events| {
            finished
                .iter()
                .all(|key| events.last_status(key).is_some_and(|s| s == "completed"))
        })
        .await;
    let transitions = events.transitions();
    assert_eq!(
        transitions[&format!("task:{task}")],
        strings(&["queued", "in_progress", "completed"])
    );
    assert_eq!(
        transitions[&format!("task:{chain}")],
        strings(&["in_progress", "completed"])
    );
    for step in ["a", "b", "c"] {
        assert_eq!(
            transitions[&format!("step:{chain}:{step}")],
            strings(&["pending", "running", "completed"]),
            "step {step}"
        );
    }
    assert_eq!(
        transitions[&format!("batch:{batch}")],
        strings(&["pending", "processing", "completed"])
    );
}

/// The publisher fails while its role may not PutEvents (an explicit deny on its IAM user,
/// which moto checks like AWS), and the events still arrive, each once, after the deny is
/// lifted: the stream mapping retried the records the function reported failed.
///
/// On a stack of its own: the deny holds up every record behind the first refused one (a shard
/// is delivered in order), so on the shared stack another test's batch in front of this task's
/// record could run out of retries and go to the OnFailure queue before this record was even
/// tried (seen: a concurrent test lost its task's first event).
#[tokio::test]
async fn events_refused_once_arrive_once_after_the_retry() {
    if stack().on_localstack() || stack().functions.is_empty() {
        println!("SKIPPED: needs the publisher's own IAM identity (function processes on moto)");
        return;
    }
    const STACK: &str = "taskflow-events-deny";
    let host = integration_tests::isolated_stack(STACK).await;
    let sdk = local_stack::emulator::sdk_config_for(&host.endpoints).await;
    let agency = unique_agency("events-deny");
    let boss = Client::as_user(&agency, "boss", "manager").at(&host.api_url());
    let mut events = subscribe_on(&sdk, &host.resources.refs["EventBus"], &agency).await;
    let iam = aws_sdk_iam::Client::new(&sdk);
    let user = format!("{STACK}-EventPublisherFunction");
    let deny = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "events:PutEvents", "Resource": "*"}]});
    iam.put_user_policy()
        .user_name(&user)
        .policy_name("deny-put-events")
        .policy_document(deny.to_string())
        .send()
        .await
        .unwrap();
    let stream_stats = host.stream_stats();

    let task = boss
        .create_task(
            &json!({"title": "echo", "priority": "high", "autoDispatch": true,
            "executor": {"type": "echo"}}),
        )
        .await;
    // Lifted as soon as the task's first change has failed to publish, and before any
    // assertion, so a failing test cannot leave it in place.
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(30));
    let mut failed = false;
    while !failed && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        failed = stream_stats.failed_a_record_with(&task);
    }
    events.receive().await;
    let while_denied = events.summary();
    iam.delete_user_policy()
        .user_name(&user)
        .policy_name("deny-put-events")
        .send()
        .await
        .unwrap();
    assert!(failed, "the publisher never failed on the task's records");
    assert!(
        while_denied.is_empty(),
        "got through while denied: {while_denied:?}"
    );

    let key = format!("task:{task}");
    events
        .collect_until("the task's events after the deny", |events| {
            events.last_status(&key).is_some_and(|s| s == "completed")
        })
        .await;
    assert_eq!(
        events.transitions()[&key],
        strings(&["queued", "in_progress", "completed"])
    );
}
