//! Rules schemathesis found the document did not state (issue 14, an exact contract): for each,
//! a request is valid for the document exactly when the API accepts it.

use crate::schema::{self, component, doc, parameters};
use crate::support::*;
use serde_json::{json, Value};
use shared::config::DEFAULT_LEASE_SECONDS;
use shared::domain::Metadata;
use shared::service::runner::run_limit;
use shared::service::{CompleteInput, NewTaskInput, TaskPatch};
use std::time::Duration;

fn valid(schema: &Value, instance: &Value) -> bool {
    schema::problems(schema, instance).is_empty()
}

/// Each executor type's config: the document's oneOf branch for the type agrees with the
/// executor's own check, for a task, a step and a batch item.
#[tokio::test]
async fn each_executor_type_has_its_config_documented() {
    let executors = [
        json!({"type": "echo"}),
        json!({"type": "echo", "config": {}}),
        json!({"type": "echo", "config": {"x": 1}}),
        json!({"type": "manual"}),
        json!({"type": "manual", "config": {"url": "https://example.com"}}),
        json!({"type": "http"}),
        json!({"type": "http", "config": {}}),
        json!({"type": "http", "config": {"url": "https://example.com/hook"}}),
        json!({"type": "http", "config": {"url": "HTTP://Example.com:8080/a?b=c#d", "timeoutSeconds": 20}}),
        json!({"type": "http", "config": {"url": "http://10.0.0.1:65535", "timeoutSeconds": null}}),
        json!({"type": "http", "config": {"url": "http://a:65536"}}),
        json!({"type": "http", "config": {"url": "http://a.1/"}}),
        json!({"type": "http", "config": {"url": "ftp://example.com"}}),
        json!({"type": "http", "config": {"url": "https://"}}),
        json!({"type": "http", "config": {"url": "https://example.com", "timeoutSeconds": 0.05}}),
        json!({"type": "http", "config": {"url": "https://example.com", "timeoutSeconds": 61}}),
        json!({"type": "http", "config": {"url": "https://example.com", "method": "GET"}}),
        json!({"type": "sleep"}),
        json!({"type": "sleep", "config": {"seconds": 1.5, "failAttempts": 2}}),
        json!({"type": "sleep", "config": {"seconds": null, "failAttempts": null}}),
        json!({"type": "sleep", "config": {"seconds": -1}}),
        json!({"type": "sleep", "config": {"seconds": 1e-200}}),
        json!({"type": "sleep", "config": {"failAttempts": 1.5}}),
        json!({"type": "sleep", "config": {"failAttempts": 101}}),
        json!({"type": "sleep", "config": {"minutes": 1}}),
        json!({"type": "sleep", "config": null}),
        json!({"type": "nope"}),
        json!({"config": {}}),
    ];
    let api = Api::new();
    let mut refused = 0;
    for executor in &executors {
        let task = json!({"title": "t", "executor": executor});
        let documented = valid(component("NewTask"), &task);
        let reply = api
            .send(
                &Event::load("api-create-task")
                    .without_header("Idempotency-Key")
                    .body(&task),
            )
            .await;
        assert_eq!(
            reply.status == 201,
            documented,
            "task {executor}: {:#}",
            reply.body
        );
        if !documented {
            refused += 1;
            assert_eq!(reply.fields(), ["executor"], "{executor}");
        }

        let step_config = json!({"executor": executor, "assignedTo": WORKER});
        let chain = json!({"title": "t", "type": "multi_step",
            "steps": [{"name": "a", "config": step_config}]});
        let documented = valid(component("NewTask"), &chain);
        assert_eq!(documented, valid(component("StepConfig"), &step_config));
        let reply = api
            .send(
                &Event::load("api-create-task")
                    .without_header("Idempotency-Key")
                    .body(&chain),
            )
            .await;
        assert_eq!(
            reply.status == 201,
            documented,
            "step {executor}: {:#}",
            reply.body
        );

        // Batch items are never run by hand: manual is refused there too.
        let batch = json!({"items": [1], "executor": executor});
        let documented = valid(component("NewBatch"), &batch);
        assert_eq!(
            documented,
            valid(component("NewTask"), &task) && executor["type"] != "manual"
        );
        let reply = api
            .send(&Event::load("api-create-batch").body(&batch))
            .await;
        assert_eq!(
            reply.status == 202,
            documented,
            "batch {executor}: {:#}",
            reply.body
        );
    }
    assert!(refused > 10, "the cases include refusals ({refused})");
}

/// The run limit the document states for the sleep executor is the template's default lease
/// less the worker's margin, and the http executor's timeout fits within it.
#[test]
fn the_documented_run_limit_is_the_default_deployments() {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml"))
            .expect("template.yaml");
    let lease = template
        .split("  LeaseSeconds:")
        .nth(1)
        .and_then(|rest| rest.lines().find_map(|l| l.trim().strip_prefix("Default:")))
        .expect("LeaseSeconds has a default")
        .trim()
        .parse::<u64>()
        .unwrap();
    assert_eq!(lease, DEFAULT_LEASE_SECONDS);
    let limit = run_limit(Duration::from_secs(DEFAULT_LEASE_SECONDS)).as_secs();
    let seconds = &component("SleepConfig")["properties"]["seconds"];
    assert_eq!(seconds["maximum"], json!(limit));
    assert!(seconds["description"]
        .as_str()
        .unwrap()
        .contains(&limit.to_string()));
    let description = component("SleepConfig")["description"].as_str().unwrap();
    assert!(description.contains(&format!("{limit} s")), "{description}");
    let timeout = component("HttpConfig")["properties"]["timeoutSeconds"]["maximum"]
        .as_u64()
        .unwrap();
    assert!(timeout <= limit);
}

/// Titles are trimmed, must keep a character that is not whitespace, and have no control
/// characters: the document's pattern says so for new tasks, edits and batches.
#[tokio::test]
async fn titles_follow_the_documented_pattern() {
    let titles = [
        ("Quarterly report", true),
        ("  padded  ", true),
        ("0", true),
        ("zero\u{200b}width", true),
        ("", false),
        ("   ", false),
        ("\u{a0}\u{3000}\u{2028}", false),
        ("tab\there", false),
        ("bell\u{7}", false),
        // Control characters that are whitespace are trimmed away at either end.
        ("\u{85}next line\n", true),
        ("\tindented", true),
        ("line\nbreak", false),
        ("c1\u{9f}", false),
        ("nul\u{0}", false),
    ];
    let api = Api::new();
    for (title, accepted) in titles {
        let new_task = json!({"title": title});
        assert_eq!(
            valid(component("NewTask"), &new_task),
            accepted,
            "{title:?}"
        );
        assert_eq!(
            NewTaskInput::parse(&new_task).is_ok(),
            accepted,
            "{title:?}"
        );
        let patch = json!({"title": title});
        assert_eq!(valid(component("TaskPatch"), &patch), accepted, "{title:?}");
        assert_eq!(TaskPatch::parse(&patch).is_ok(), accepted, "{title:?}");
        let batch = json!({"title": title, "items": [1]});
        assert_eq!(valid(component("NewBatch"), &batch), accepted, "{title:?}");
        let reply = api
            .send(&Event::load("api-create-batch").body(&batch))
            .await;
        assert_eq!(reply.status == 202, accepted, "{title:?}: {:#}", reply.body);
        if !accepted {
            assert_eq!(reply.fields(), ["title"]);
        }
    }
}

/// What DynamoDB can store, at every depth: metadata, inputs and results refuse an empty key
/// or an unstorable number anywhere, in the document as in the parsers.
#[test]
fn stored_json_is_documented_at_every_depth() {
    let values = [
        (json!({"a": {"b": [1, "x", null, true, {"c": 0}]}}), true),
        (json!({"a": {"b": -1e125, "c": 1e-130, "d": 0.0}}), true),
        (json!({"": 1}), false),
        (json!({"a": {"": []}}), false),
        (json!({"a": [{"b": {"": 1}}]}), false),
        (json!({"a": {"b": 1e-200}}), false),
        (json!({"a": [1e126]}), false),
        (json!({"a": {"b": -1e-131}}), false),
    ];
    for (value, storable) in &values {
        assert_eq!(valid(component("Metadata"), value), *storable, "{value}");
        assert_eq!(Metadata::parse(value.clone()).is_ok(), *storable, "{value}");
        let task = json!({"title": "t", "metadata": value, "input": value});
        assert_eq!(valid(component("NewTask"), &task), *storable, "{value}");
        assert_eq!(NewTaskInput::parse(&task).is_ok(), *storable, "{value}");
        let patch = json!({"metadata": value});
        assert_eq!(valid(component("TaskPatch"), &patch), *storable, "{value}");
        assert_eq!(TaskPatch::parse(&patch).is_ok(), *storable, "{value}");
        let complete = json!({"result": [value]});
        assert_eq!(
            valid(component("Complete"), &complete),
            *storable,
            "{value}"
        );
        assert_eq!(
            CompleteInput::parse(&complete).is_ok(),
            *storable,
            "{value}"
        );
        let step = json!({"input": {"nested": value}});
        assert_eq!(valid(component("StepConfig"), &step), *storable, "{value}");
    }
    // Any other JSON value is storable as an input or a result.
    for scalar in [
        json!("text"),
        json!(0),
        json!(null),
        json!(false),
        json!([]),
    ] {
        assert!(valid(component("Complete"), &json!({"result": scalar})));
        assert!(CompleteInput::parse(&json!({"result": scalar})).is_ok());
    }
}

/// A batch's `source.key` has the shape the upload endpoint returns; a key of that shape the
/// API did not issue (another agency's, or nothing uploaded) is refused naming the field.
#[tokio::test]
async fn source_keys_have_the_shape_uploads_return() {
    let api = Api::new();
    let upload = api
        .send(
            &Event::load("api-create-batch")
                .to("POST", "/api/batches/uploads")
                .body(&json!({"fileName": "Orders.CSV"})),
        )
        .await
        .expect(201);
    let key = upload.body["key"].as_str().unwrap().to_owned();
    let source = |key: &str| json!({"source": {"key": key}});
    assert!(valid(component("NewBatch"), &source(&key)), "{key}");
    let ulid = key.split('/').nth(2).unwrap();
    for shaped in [
        format!("inputs/other-agency/{ulid}/Orders.CSV"),
        format!("inputs/{AGENCY}/{ulid}/never-uploaded.json"),
    ] {
        assert!(valid(component("NewBatch"), &source(&shaped)), "{shaped}");
        let reply = api
            .send(&Event::load("api-create-batch").body(&source(&shaped)))
            .await
            .expect(400);
        assert_eq!(reply.fields(), ["source.key"], "{shaped}");
    }
    for malformed in [
        "uploads/acme/a.csv".to_owned(),
        format!("inputs/{AGENCY}/a.csv"),
        format!("inputs/{AGENCY}/{ulid}/a.txt"),
        format!("inputs/{AGENCY}/{ulid}/sub/a.csv"),
    ] {
        assert!(
            !valid(component("NewBatch"), &source(&malformed)),
            "{malformed}"
        );
        api.send(&Event::load("api-create-batch").body(&source(&malformed)))
            .await
            .expect(400);
    }
}

/// The agents cursor is the last agent id of a page: any agent id resumes after it, and the
/// document's schema is the agent id's.
#[tokio::test]
async fn any_agent_id_is_an_agents_cursor() {
    let root = doc();
    let (_, list) = schema::operation_for("GET", "/api/agents").unwrap();
    let cursor = parameters(root, "/api/agents", list)
        .into_iter()
        .find(|p| p["name"] == "cursor")
        .unwrap();
    let api = Api::new();
    for (value, accepted) in [
        ("worker-1", true),
        ("0", true),
        ("a@b.c:d_e", true),
        ("¿>", false),
        ("a b", false),
        ("a#b", false),
    ] {
        assert_eq!(valid(&cursor["schema"], &json!(value)), accepted, "{value}");
        let reply = api
            .send(
                &Event::load("api-list-tasks")
                    .to("GET", "/api/agents")
                    .query(&[("cursor", value)]),
            )
            .await;
        assert_eq!(reply.status == 200, accepted, "{value}: {:#}", reply.body);
    }
}

/// A step's name is not only whitespace, and a dependency is a name too (never empty).
#[test]
fn step_names_follow_the_documented_schema() {
    for (name, accepted) in [
        ("a", true),
        ("qa/legal review", true),
        (" ", false),
        ("\u{3000}\t", false),
        ("", false),
    ] {
        let task = json!({"title": "t", "type": "multi_step", "steps": [{"name": name}]});
        assert_eq!(valid(component("NewTask"), &task), accepted, "{name:?}");
        assert_eq!(NewTaskInput::parse(&task).is_ok(), accepted, "{name:?}");
    }
    let empty_dependency = json!({"title": "t", "type": "multi_step",
        "steps": [{"name": "a"}, {"name": "b", "dependsOn": [""]}]});
    assert!(!valid(component("NewTask"), &empty_dependency));
    assert!(NewTaskInput::parse(&empty_dependency).is_err());
}

/// A whole number written with a fraction (`2.0`) is an integer for the document (JSON Schema),
/// and so for the API: every integer field takes it, at any depth.
#[tokio::test]
async fn whole_numbers_written_with_a_fraction_are_integers() {
    let api = Api::new();
    let chain = json!({"title": "t", "type": "multi_step", "retry": {"maxAttempts": 3.0, "baseDelaySeconds": 1.0},
        "steps": [{"name": "a", "order": 1.0, "config": {"timeoutSeconds": 2.0, "heartbeatSeconds": 1.0,
            "retry": {"maxAttempts": 2.0}, "executor": {"type": "sleep", "config": {"seconds": 1.0}}}}]});
    assert!(valid(component("NewTask"), &chain));
    let reply = api.send(&Event::load("api-create-task").body(&chain)).await;
    assert_eq!(reply.status, 201, "{:#}", reply.body);
    let batch = json!({"items": [1], "itemsPerBatch": 10.0, "parallelism": 2.0});
    let reply = api
        .send(&Event::load("api-create-batch").body(&batch))
        .await;
    assert_eq!(reply.status, 202, "{:#}", reply.body);
    // A fraction is still refused where a whole number is wanted.
    let half = json!({"title": "t", "type": "multi_step", "steps": [{"name": "a", "config": {"timeoutSeconds": 2.5}}]});
    assert!(!valid(component("NewTask"), &half));
    let reply = api.send(&Event::load("api-create-task").body(&half)).await;
    assert_eq!(reply.status, 400, "{:#}", reply.body);
    assert_eq!(reply.fields(), ["steps[0].config.timeoutSeconds"]);
}

/// A task's required capability has the shape of an agent's capability, in the document as in
/// the parser.
#[test]
fn a_required_capability_follows_the_capability_pattern() {
    for (capability, accepted) in [
        ("translation", true),
        ("pdf:ocr-v2.1_beta", true),
        ("î\\±", false),
        ("two words", false),
    ] {
        let task = json!({"title": "t", "requiredCapability": capability});
        assert_eq!(
            valid(component("NewTask"), &task),
            accepted,
            "{capability:?}"
        );
        assert_eq!(
            NewTaskInput::parse(&task).is_ok(),
            accepted,
            "{capability:?}"
        );
    }
}

/// A batch's toleratedFailurePercentage is 0 or a number DynamoDB can store (from 1e-130) up
/// to 100, in the document as in the API.
#[tokio::test]
async fn a_tolerated_failure_percentage_is_zero_or_storable() {
    let api = Api::new();
    for (percentage, accepted) in [
        (json!(0), true),
        (json!(1e-130), true),
        (json!(12.5), true),
        (json!(100), true),
        (json!(4.1497735691577524e-194), false),
        (json!(100.5), false),
        (json!(-1), false),
    ] {
        let batch = json!({"items": [1], "toleratedFailurePercentage": percentage});
        assert_eq!(
            valid(component("NewBatch"), &batch),
            accepted,
            "{percentage}"
        );
        let reply = api
            .send(&Event::load("api-create-batch").body(&batch))
            .await;
        assert_eq!(
            reply.status == 202,
            accepted,
            "{percentage}: {:#}",
            reply.body
        );
    }
}
