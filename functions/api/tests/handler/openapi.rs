//! openapi.json against the implementation: routes, security, limits, enums,
//! request schemas against the real parsers, and response schemas against the
//! JSON the handler really returns.

use crate::schema::{self, assert_valid, component, doc, lint, operations, parameters, resolve};
use crate::support::*;
use serde_json::{json, Value};
use shared::domain::batch_input;
use shared::domain::chain::{
    DEFAULT_MANUAL_TIMEOUT_SECONDS, DEFAULT_STEP_TIMEOUT_SECONDS, MAX_STEP_ATTEMPTS,
    MAX_STEP_TIMEOUT_SECONDS,
};
use shared::domain::limits::*;
use shared::domain::{
    AgencyId, Agent, AgentStatus, Attachment, AttachmentId, BatchJob, BatchSource, BatchStatus,
    Caller, ExecutorSpec, Priority, RetryPolicy, Role, StepConfig, StepStatus, TaskId, TaskStatus,
    TaskType, UserId,
};
use shared::error::{AppError, FieldErrors};
use shared::service::batches::{
    DEFAULT_ITEMS_PER_BATCH, DEFAULT_PARALLELISM, MAX_INLINE_ITEMS, MAX_ITEMS_PER_BATCH,
    MAX_PARALLELISM,
};
use shared::service::{
    AssignInput, AttachmentInput, BatchView, CompleteInput, NewTaskInput, TaskPatch, TierStats,
};
use shared::testing::MemoryWorld;
use std::collections::BTreeSet;

fn set<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    items.into_iter().collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[test]
fn document_is_openapi_3_1_with_a_relative_server() {
    let doc = doc();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"].as_array().unwrap().len(), 1);
    assert_eq!(doc["servers"][0]["url"], "/");
    let bearer = &doc["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(
        (&bearer["type"], &bearer["scheme"], &bearer["bearerFormat"]),
        (&json!("http"), &json!("bearer"), &json!("JWT"))
    );
    let ids: Vec<&str> = operations(doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().expect("operationId"))
        .collect();
    assert_eq!(set(ids.iter()).len(), ids.len(), "operationIds are unique");
}

#[test]
fn paths_and_methods_are_exactly_the_route_table() {
    let documented: BTreeSet<(String, String)> = operations(doc())
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect();
    let routed: BTreeSet<(String, String)> = api::routes::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(documented, routed);
    assert_eq!(
        routed.len(),
        api::routes::ROUTES.len(),
        "no route is listed twice"
    );
}

#[test]
fn every_operation_but_the_document_needs_a_bearer_token() {
    let root = doc();
    assert_eq!(root["security"], json!([{"bearerAuth": []}]));
    for (method, path, op) in operations(root) {
        let security = op.get("security").unwrap_or(&root["security"]);
        let responses = &op["responses"];
        if path == "/api/openapi.json" {
            assert_eq!(security, &json!([]), "{method} {path} is public");
            assert!(responses.get("401").is_none());
            continue;
        }
        assert_eq!(security, &json!([{"bearerAuth": []}]), "{method} {path}");
        assert!(
            responses.get("401").is_some(),
            "{method} {path} declares 401"
        );
        // 429: every authenticated request counts against its agency's request rate.
        for status in ["429", "500", "503"] {
            assert!(
                responses.get(status).is_some(),
                "{method} {path} declares {status}"
            );
        }
        if path.contains("{id}") {
            assert!(
                responses.get("404").is_some(),
                "{method} {path} declares 404"
            );
        }
    }
}

#[test]
fn every_schema_compiles_and_uses_only_known_keywords() {
    let root = doc();
    let mut visited = 0;
    for (name, s) in root["components"]["schemas"].as_object().unwrap() {
        visited += lint(root, s, &format!("#/components/schemas/{name}"));
    }
    // Inline schemas of parameters, headers and bodies, and every $ref on the way.
    for (method, path, op) in operations(root) {
        for p in parameters(root, &path, op) {
            visited += lint(
                root,
                &p["schema"],
                &format!("{method} {path} {}", p["name"]),
            );
        }
        let body = op.get("requestBody").map(|b| resolve(root, b));
        for media in body
            .iter()
            .flat_map(|b| b["content"].as_object().unwrap().values())
        {
            visited += lint(root, &media["schema"], &format!("{method} {path} body"));
        }
        for (status, response) in op["responses"].as_object().unwrap() {
            let response = resolve(root, response);
            for media in response
                .get("content")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                visited += lint(
                    root,
                    &media.1["schema"],
                    &format!("{method} {path} {status}"),
                );
            }
            for header in response
                .get("headers")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                visited += lint(root, &resolve(root, header.1)["schema"], header.0);
            }
        }
    }
    assert!(visited > 100, "walked {visited} schemas");
}

#[test]
fn limits_match_the_code() {
    let root = doc();
    let at = |pointer: &str| -> u64 {
        root.pointer(&format!("/components/schemas/{pointer}"))
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no number at {pointer}"))
    };
    let as_u64 = |n: usize| n as u64;
    let cases: &[(&str, usize)] = &[
        ("NewTask/properties/title/maxLength", MAX_TITLE_CHARS),
        ("TaskPatch/properties/title/maxLength", MAX_TITLE_CHARS),
        ("Task/properties/title/maxLength", MAX_TITLE_CHARS),
        (
            "NewTask/properties/description/maxLength",
            MAX_DESCRIPTION_CHARS,
        ),
        (
            "TaskPatch/properties/description/maxLength",
            MAX_DESCRIPTION_CHARS,
        ),
        (
            "Task/properties/description/maxLength",
            MAX_DESCRIPTION_CHARS,
        ),
        ("Metadata/maxProperties", MAX_METADATA_KEYS),
        (
            "NewTask/properties/metadata/maxProperties",
            MAX_METADATA_KEYS,
        ),
        ("Complete/properties/error/maxLength", MAX_ERROR_CHARS),
        ("KeySafeId/maxLength", MAX_ID_CHARS),
        ("NewTask/properties/assignedTo/maxLength", MAX_ID_CHARS),
        ("NewTask/properties/steps/maxItems", MAX_STEPS),
        ("StepsView/properties/steps/maxItems", MAX_STEPS),
        ("StepInput/properties/name/maxLength", MAX_STEP_NAME_CHARS),
        ("TaskStep/properties/name/maxLength", MAX_STEP_NAME_CHARS),
        ("Task/properties/attachments/maxItems", MAX_ATTACHMENTS),
        (
            "AttachmentRequest/properties/fileName/maxLength",
            MAX_FILE_NAME_CHARS,
        ),
        (
            "Attachment/properties/fileName/maxLength",
            MAX_FILE_NAME_CHARS,
        ),
        ("TaskList/properties/items/maxItems", MAX_PAGE_SIZE),
        ("NewBatch/properties/title/maxLength", MAX_TITLE_CHARS),
        ("NewBatch/properties/items/maxItems", MAX_INLINE_ITEMS),
        (
            "NewBatch/properties/parallelism/maximum",
            MAX_PARALLELISM as usize,
        ),
        (
            "NewBatch/properties/parallelism/default",
            DEFAULT_PARALLELISM as usize,
        ),
        (
            "NewBatch/properties/itemsPerBatch/maximum",
            MAX_ITEMS_PER_BATCH as usize,
        ),
        (
            "NewBatch/properties/itemsPerBatch/default",
            DEFAULT_ITEMS_PER_BATCH as usize,
        ),
        (
            "Batch/properties/parallelism/maximum",
            MAX_PARALLELISM as usize,
        ),
        (
            "Batch/properties/itemsPerBatch/maximum",
            MAX_ITEMS_PER_BATCH as usize,
        ),
        (
            "NewBatch/properties/toleratedFailurePercentage/maximum",
            100,
        ),
    ];
    for (pointer, limit) in cases {
        assert_eq!(at(pointer), as_u64(*limit), "{pointer}");
    }
    let list = &root["paths"]["/api/tasks"]["get"]["parameters"];
    let limit = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], json!(MAX_PAGE_SIZE));
    assert_eq!(limit["schema"]["default"], json!(DEFAULT_PAGE_SIZE));
    let key = &root["components"]["parameters"]["IdempotencyKey"]["schema"]["maxLength"];
    assert_eq!(key, &json!(MAX_IDEMPOTENCY_KEY_CHARS));
    // Byte limits are stated in the descriptions.
    let described = |schema: &str, pointer: &str, bytes: usize| {
        let text = component(schema)
            .pointer(pointer)
            .unwrap()
            .as_str()
            .unwrap();
        assert!(text.contains(&bytes.to_string()), "{schema}: {text}");
    };
    described("Metadata", "/description", MAX_METADATA_BYTES);
    described("NewBatch", "/properties/items/description", MAX_BODY_BYTES);
    for limit in [
        batch_input::MAX_INPUT_BYTES,
        batch_input::MAX_ITEMS,
        batch_input::MAX_ITEM_BYTES,
        batch_input::MAX_DEPTH,
    ] {
        described("NewBatch", "/properties/source/description", limit);
    }
    described(
        "Complete",
        "/properties/result/description",
        MAX_RESULT_BYTES,
    );
    let too_large = root["components"]["responses"]["PayloadTooLarge"]["description"]
        .as_str()
        .unwrap();
    assert!(too_large.contains(&MAX_BODY_BYTES.to_string()));
    let conflict = root["components"]["responses"]["Conflict"]["description"]
        .as_str()
        .unwrap();
    assert!(conflict.contains(&batch_input::MAX_INPUT_BYTES.to_string()));
    // Batch input files: the extensions `InputFormat` knows, in each place they are listed.
    for (schema, pointer) in [
        ("NewBatch", "/properties/source/properties/key/description"),
        ("BatchUploadRequest", "/properties/fileName/description"),
    ] {
        let text = component(schema)
            .pointer(pointer)
            .unwrap()
            .as_str()
            .unwrap();
        for ext in [".json", ".jsonl", ".ndjson", ".csv"] {
            let name = format!("x{ext}");
            assert!(
                batch_input::InputFormat::from_name(&name).is_some(),
                "{ext}"
            );
            assert!(
                text.contains(&format!("{ext},")) || text.contains(&format!("{ext} ")),
                "{schema}: {ext}"
            );
        }
        assert!(batch_input::InputFormat::from_name("x.txt").is_none());
    }
    // The failures page size.
    let (_, failures) = schema::operation_for("GET", "/api/batches/x/failures").unwrap();
    let limit = &parameters(root, "/api/batches/{id}/failures", failures)
        .into_iter()
        .find(|p| p["name"] == "limit")
        .unwrap()["schema"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"], &limit["default"]),
        (&json!(1), &json!(1000), &json!(100))
    );
    assert_eq!(
        component("BatchFailureList")["properties"]["items"]["maxItems"],
        1000
    );
}

#[test]
fn enums_match_the_domain() {
    let names = |all: Vec<&'static str>| set(all.into_iter().map(str::to_owned));
    let e = |name: &str| strings(&component(name)["enum"]);
    assert_eq!(
        e("Priority"),
        names(Priority::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("TaskType"),
        names(TaskType::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("TaskStatus"),
        names(TaskStatus::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("StepStatus"),
        names(StepStatus::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("Role"),
        names(Role::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("AgentStatus"),
        names(AgentStatus::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("BatchStatus"),
        names(BatchStatus::ALL.iter().map(|p| p.as_str()).collect())
    );
    assert_eq!(
        e("BatchSource"),
        names(BatchSource::ALL.iter().map(|p| p.as_str()).collect())
    );
    // Request enums: the domain's values, and null for "absent".
    let with_null = |schema: &str, field: &str| {
        let values = &component(schema)["properties"][field]["enum"];
        assert!(
            values.as_array().unwrap().contains(&Value::Null),
            "{schema}.{field}"
        );
        values
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect::<BTreeSet<_>>()
    };
    let priorities = names(Priority::ALL.iter().map(|p| p.as_str()).collect());
    assert_eq!(with_null("NewTask", "priority"), priorities);
    assert_eq!(with_null("NewBatch", "priority"), priorities);
    // archivedFrom: every status that can become archived.
    let archivable = TaskStatus::ALL
        .iter()
        .filter(|s| s.can_become(TaskStatus::Archived))
        .map(|s| s.as_str())
        .collect();
    assert_eq!(
        strings(&component("Task")["properties"]["archivedFrom"]["enum"]),
        names(archivable)
    );
    // Every error code the API can produce.
    let errors = [
        AppError::MalformedJson(String::new()),
        AppError::Validation(FieldErrors::new()),
        AppError::Unauthorized,
        AppError::Forbidden(String::new()),
        AppError::NotFound { what: "task" },
        AppError::NoRoute {
            method: "GET".into(),
            path: "/".into(),
        },
        AppError::MethodNotAllowed {
            method: "GET".into(),
            path: "/".into(),
        },
        AppError::InvalidTransition {
            current: "a".into(),
            requested: "b".into(),
        },
        AppError::Conflict(String::new()),
        AppError::VersionConflict {
            expected: 1,
            current: 2,
        },
        AppError::IdempotencyKeyReused,
        AppError::PayloadTooLarge { size: 1, limit: 0 },
        AppError::UnsupportedMediaType(String::new()),
        AppError::Internal(String::new()),
        AppError::Unavailable(String::new()),
        AppError::QuotaExceeded {
            quota: "requestRate",
            limit: 1,
            retry_after_seconds: 1,
            detail: String::new(),
        },
    ];
    let code = &component("Error")["properties"]["error"]["properties"]["code"]["enum"];
    assert_eq!(
        strings(code),
        names(errors.iter().map(AppError::code).collect())
    );
    // Each status is declared by the shared response that carries it.
    let responses = &doc()["components"]["responses"];
    for err in &errors {
        let name = match err.status_code() {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            405 => "MethodNotAllowed",
            409 => "Conflict",
            413 => "PayloadTooLarge",
            415 => "UnsupportedMediaType",
            422 => "IdempotencyKeyReused",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            other => panic!("undocumented status {other}"),
        };
        let description = responses[name]["description"].as_str().unwrap();
        if !matches!(err, AppError::NoRoute { .. }) {
            assert!(
                description.contains(err.code()),
                "{name} mentions {}",
                err.code()
            );
        }
    }
}

type Parser = fn(&Value) -> Result<(), AppError>;

fn parser_for(operation_id: &str) -> Parser {
    match operation_id {
        "createTask" => |b| NewTaskInput::parse(b).map(drop),
        "updateTask" => |b| TaskPatch::parse(b).map(drop),
        "assignTask" => |b| AssignInput::parse(b).map(drop),
        "completeTask" | "completeStep" => |b| CompleteInput::parse(b).map(drop),
        "addAttachment" => |b| AttachmentInput::parse(b).map(drop),
        // The agent service parses the registration (after the id and role
        // checks, which a manager registering a valid id passes).
        "registerAgent" => |b| {
            let agents = MemoryWorld::new().services().agents;
            let manager = Caller::from_claims(Some(MANAGER), Some(AGENCY), Some("manager"))?;
            block_on(agents.heartbeat(&manager, WORKER, b)).map(drop)
        },
        // The batch service parses both batch bodies (a manager passes its role check).
        "createBatch" => |b| {
            let batches = MemoryWorld::new().services().batches;
            let manager = Caller::from_claims(Some(MANAGER), Some(AGENCY), Some("manager"))?;
            block_on(batches.create(&manager, b)).map(drop)
        },
        "createBatchUpload" => |b| {
            let batches = MemoryWorld::new().services().batches;
            let manager = Caller::from_claims(Some(MANAGER), Some(AGENCY), Some("manager"))?;
            block_on(batches.upload_url(&manager, b)).map(drop)
        },
        // The schedule service parses the definition, its template as a task body.
        "createSchedule" | "updateSchedule" => |b| {
            let tasks = MemoryWorld::new().services().tasks;
            shared::service::schedules::ScheduleInput::parse(b, &tasks).map(drop)
        },
        other => panic!("{other} has a request body but no parser here"),
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(future)
}

/// Operations whose parser ignores fields it does not know; their schemas
/// leave `additionalProperties` open and say so.
const IGNORES_UNKNOWN_FIELDS: &[&str] = &[];

/// Properties of which a body must give exactly one (stated in words in the
/// schema's description); leaving out all of them is rejected naming the first.
const EXACTLY_ONE_OF: &[(&str, &[&str])] = &[("createBatch", &["items", "source"])];

fn rejected_fields(result: Result<(), AppError>) -> Vec<String> {
    match result {
        Err(AppError::Validation(fields)) => fields.iter().map(|(k, _)| k.clone()).collect(),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// StepConfig says what `StepConfig::parse` accepts (the service checks every
/// step's config with it when a task is created): valid configs pass both, and
/// each invalid one fails both, the parser naming the field.
#[test]
fn step_config_schema_agrees_with_the_parser() {
    let schema = component("StepConfig");
    let valid = [
        json!({}),
        json!({"executor": {"type": "http", "config": {"url": "https://example.com/hook"}},
            "input": [1, "two"], "retry": {"maxAttempts": MAX_STEP_ATTEMPTS},
            "timeoutSeconds": MAX_STEP_TIMEOUT_SECONDS, "heartbeatSeconds": 1,
            "onFailure": "continue"}),
        json!({"executor": {"type": "manual"}, "assignee": WORKER, "onFailure": "skip_dependents"}),
        json!({"executor": {"type": "echo"}, "assignee": WORKER, "onFailure": "fail_task"}),
        // null is "absent" everywhere but executor.
        json!({"input": null, "retry": null, "timeoutSeconds": null, "heartbeatSeconds": null,
            "assignee": null, "onFailure": null}),
    ];
    for config in &valid {
        assert_valid(schema, config, &format!("{config}"));
        StepConfig::parse(config).unwrap_or_else(|e| panic!("{config}: {e:?}"));
    }
    let parsed = StepConfig::parse(&json!({"executor": {"type": "manual"}, "assignee": WORKER}));
    let manual = parsed.unwrap();
    // Step Functions requires a heartbeat shorter than the timeout: one second less, in effect none.
    assert_eq!(
        (manual.timeout_seconds, manual.heartbeat_seconds),
        (
            DEFAULT_MANUAL_TIMEOUT_SECONDS,
            DEFAULT_MANUAL_TIMEOUT_SECONDS - 1
        )
    );
    let defaults = StepConfig::parse(&json!({})).unwrap();
    assert_eq!(defaults.timeout_seconds, DEFAULT_STEP_TIMEOUT_SECONDS);
    let described = |field: &str, text: &str| {
        let description = schema["properties"][field]["description"].as_str().unwrap();
        assert!(description.contains(text), "{field}: {description}");
    };
    described(
        "timeoutSeconds",
        &format!("Default {DEFAULT_STEP_TIMEOUT_SECONDS}, or {DEFAULT_MANUAL_TIMEOUT_SECONDS}"),
    );

    let invalid = [
        (json!({"target": "web"}), "target"),
        (json!({"executor": null}), "executor"),
        (json!({"executor": {"config": {}}}), "executor"),
        (json!({"retry": {"maxAttempts": 0}}), "retry"),
        (
            json!({"retry": {"maxAttempts": MAX_STEP_ATTEMPTS + 1}}),
            "retry",
        ),
        (
            json!({"retry": {"maxAttempts": 2, "baseDelaySeconds": 1}}),
            "retry",
        ),
        (json!({"retry": 3}), "retry"),
        (json!({"timeoutSeconds": 0}), "timeoutSeconds"),
        (
            json!({"timeoutSeconds": MAX_STEP_TIMEOUT_SECONDS + 1}),
            "timeoutSeconds",
        ),
        (json!({"heartbeatSeconds": "soon"}), "heartbeatSeconds"),
        (json!({"assignee": "a#b"}), "assignee"),
        (json!({"onFailure": "explode"}), "onFailure"),
        // A manual step: an assignee, and no heartbeat (if/then on executor.type).
        (json!({"executor": {"type": "manual"}}), "assignedTo"),
        (
            json!({"executor": {"type": "manual"}, "assignedTo": WORKER, "heartbeatSeconds": 5}),
            "heartbeatSeconds",
        ),
    ];
    for (config, field) in &invalid {
        assert!(
            !schema::problems(schema, config).is_empty(),
            "{config} is valid for the schema"
        );
        let (rejected, problem) = StepConfig::parse(config).expect_err("rejected");
        assert_eq!(&rejected, field, "{config}: {problem}");
    }
    // Rules across fields, which the schema states in words only.
    let across = [
        (
            json!({"timeoutSeconds": 5, "heartbeatSeconds": 9}),
            "heartbeatSeconds",
            "Less than timeoutSeconds",
        ),
        (
            json!({"timeoutSeconds": 5, "heartbeatSeconds": 5}),
            "heartbeatSeconds",
            "Less than timeoutSeconds",
        ),
        (
            json!({"heartbeatSeconds": DEFAULT_STEP_TIMEOUT_SECONDS}),
            "heartbeatSeconds",
            "Less than timeoutSeconds",
        ),
    ];
    for (config, field, rule) in &across {
        assert_valid(schema, config, &format!("{config}"));
        described(field, rule);
        let (rejected, problem) = StepConfig::parse(config).expect_err("rejected");
        assert_eq!(&rejected, field, "{config}: {problem}");
    }
}

/// The request schemas say what the parsers accept: each example is valid for
/// both, and an undeclared field is rejected by the parser where the schema
/// has `additionalProperties: false` (and accepted where it does not).
#[test]
fn request_schemas_agree_with_the_parsers() {
    let root = doc();
    let mut bodies = 0;
    for (method, path, op) in operations(root) {
        let Some(body) = op.get("requestBody") else {
            continue;
        };
        bodies += 1;
        let id = op["operationId"].as_str().unwrap();
        let parse = parser_for(id);
        let media = &body["content"]["application/json"];
        let body_schema = resolve(root, &media["schema"]);
        let example = &media["example"];
        assert_valid(body_schema, example, &format!("{method} {path} example"));
        parse(example).unwrap_or_else(|e| panic!("{id}: example rejected: {e}"));

        let mut extra = example.clone();
        extra["unexpected"] = json!(1);
        if IGNORES_UNKNOWN_FIELDS.contains(&id) {
            assert!(body_schema.get("additionalProperties").is_none(), "{id}");
            let description = body_schema["description"].as_str().unwrap_or("");
            assert!(description.contains("ignored"), "{id}: {description}");
            assert!(schema::problems(body_schema, &extra).is_empty());
            parse(&extra).unwrap_or_else(|e| panic!("{id}: extra field rejected: {e}"));
        } else {
            assert_eq!(body_schema["additionalProperties"], false, "{id}");
            assert!(!schema::problems(body_schema, &extra).is_empty());
            assert_eq!(rejected_fields(parse(&extra)), ["unexpected"], "{id}");
        }
        let one_of = EXACTLY_ONE_OF
            .iter()
            .find(|(op, _)| *op == id)
            .map(|(_, names)| *names)
            .unwrap_or(&[]);

        // Every declared property is one the parser knows (null where allowed).
        for (name, property) in body_schema["properties"].as_object().unwrap() {
            let property = resolve(root, property);
            let nullable = property["type"]
                .as_array()
                .is_some_and(|t| t.contains(&json!("null")));
            let mut with_null = example.clone();
            with_null[name] = Value::Null;
            let result = parse(&with_null);
            let schema_ok = schema::problems(body_schema, &with_null).is_empty();
            if nullable || property.get("type").is_none() {
                // null is "absent": fine unless the field is required, or
                // it was the example's one of an exactly-one-of group (which
                // the document states too, with oneOf).
                let required = body_schema
                    .get("required")
                    .is_some_and(|r| strings(r).contains(name));
                let last_of_group = one_of.contains(&name.as_str())
                    && one_of.iter().all(|n| with_null[*n].is_null());
                assert_eq!(schema_ok, !last_of_group, "{id}.{name}");
                assert_eq!(
                    result.is_ok(),
                    !required && !last_of_group,
                    "{id}.{name}: {result:?}"
                );
                if last_of_group {
                    assert_eq!(rejected_fields(result), [one_of[0]], "{id}.{name}");
                }
            } else {
                assert!(!schema_ok, "{id}.{name} is not nullable");
                assert!(
                    rejected_fields(result).contains(name),
                    "{id}.{name}: the parser rejects null too"
                );
            }
        }
    }
    assert_eq!(bodies, 11);

    // Exactly one of the groups: both, or neither, are rejected naming the first.
    for (id, names) in EXACTLY_ONE_OF {
        let (_, _, op) = operations(root)
            .into_iter()
            .find(|(_, _, op)| op["operationId"] == *id)
            .unwrap();
        let body_schema = resolve(
            root,
            &op["requestBody"]["content"]["application/json"]["schema"],
        );
        let description = body_schema["description"].as_str().unwrap();
        assert!(
            description.contains(&format!("exactly one of `{}` or `{}`", names[0], names[1])),
            "{id}: {description}"
        );
        let mut neither = op["requestBody"]["content"]["application/json"]["example"].clone();
        for name in *names {
            neither.as_object_mut().unwrap().remove(*name);
        }
        assert_eq!(
            rejected_fields(parser_for(id)(&neither)),
            [names[0]],
            "{id}"
        );
    }
    let both = json!({"items": [1], "source": {"key": format!("inputs/{AGENCY}/x/a.csv")}});
    assert!(
        !schema::problems(component("NewBatch"), &both).is_empty(),
        "the document's oneOf refuses items and source together"
    );
    assert_eq!(rejected_fields(parser_for("createBatch")(&both)), ["items"]);

    // Step objects inside a new task.
    let steps = json!({"title": "t", "type": "multi_step", "steps": [
        {"name": "a", "order": 0, "dependsOn": null, "config": {"input": {"k": 1}}},
        {"name": "b", "dependsOn": ["a"]}]});
    assert_valid(component("NewTask"), &steps, "steps example");
    NewTaskInput::parse(&steps).unwrap();
    let mut extra = steps.clone();
    extra["steps"][0]["retries"] = json!(3);
    assert!(!schema::problems(component("NewTask"), &extra).is_empty());
    assert_eq!(
        rejected_fields(NewTaskInput::parse(&extra).map(drop)),
        ["steps[0].retries"]
    );
}

#[tokio::test]
async fn documented_query_parameters_are_the_accepted_ones() {
    let api = Api::new();
    let root = doc();
    let (_, list) = schema::operation_for("GET", "/api/tasks").unwrap();
    let params = parameters(root, "/api/tasks", list);
    let mut names = Vec::new();
    for p in &params {
        assert_eq!(p["in"], "query");
        let name = p["name"].as_str().unwrap();
        names.push(name);
        if name == "cursor" {
            continue;
        }
        let value = match &p["example"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_valid(&p["schema"], &p["example"], name);
        let reply = api
            .send(&Event::load("api-list-tasks").query(&[(name, &value)]))
            .await;
        assert_eq!(reply.status, 200, "{name}={value}: {:#}", reply.body);
    }
    assert_eq!(
        set(names),
        set([
            "status",
            "priority",
            "type",
            "assignedTo",
            "assignee",
            "dueBefore",
            "includeArchived",
            "limit",
            "cursor"
        ])
    );
    let unknown = api
        .send(&Event::load("api-list-tasks").query(&[("owner", "x")]))
        .await
        .expect(400);
    assert_eq!(unknown.fields(), ["owner"]);
    // limit bounds.
    for (limit, status) in [("0", 400), ("1", 200), ("100", 200), ("101", 400)] {
        api.send(&Event::load("api-list-tasks").query(&[("limit", limit)]))
            .await
            .expect(status);
    }
}

/// If-Match is read exactly where it is documented: with a stale tag, those
/// operations answer 409 version_conflict and the others ignore it.
#[tokio::test]
async fn if_match_is_honoured_exactly_where_documented() {
    let root = doc();
    for (method, path, op) in operations(root) {
        if !path.contains("{id}") {
            continue;
        }
        let documented = parameters(root, &path, op)
            .iter()
            .any(|p| p["name"] == "If-Match" && p["in"] == "header");
        let api = Api::new();
        api.seed(|t| t.assigned_to = Some(UserId::parse(MANAGER).unwrap()))
            .await;
        let mut event = Event::load("api-get-task")
            .to(&method, &path.replace("{id}", TASK_ID))
            .header("If-Match", "\"99\"");
        if let Some(body) = op.get("requestBody") {
            event = event.body(&body["content"]["application/json"]["example"]);
        }
        let reply = api.send(&event).await;
        let conflict = reply.code() == "version_conflict";
        assert_eq!(conflict, documented, "{method} {path}: {:#}", reply.body);
    }
}

/// Task, step and attachment serialization: everything they can emit is
/// declared, and everything required is always emitted.
#[test]
fn serialized_records_match_their_schemas_exactly() {
    let mut task = base_task();
    let minimal = serde_json::to_value(&task).unwrap();
    assert_valid(component("Task"), &minimal, "minimal task");
    assert_eq!(keys(&minimal), strings(&component("Task")["required"]));

    let now = chrono::Utc::now();
    let attachment = Attachment {
        id: AttachmentId::generate(),
        file_name: "a.pdf".into(),
        content_type: "application/pdf".into(),
        key: format!("attachments/acme/{TASK_ID}/x/a.pdf"),
        uploaded_by: UserId::parse(MANAGER).unwrap(),
        created_at: now,
    };
    task.assigned_to = Some(UserId::parse(WORKER).unwrap());
    task.description = Some(shared::domain::Description::parse("d").unwrap());
    task.due_at = Some(now);
    task.started_at = Some(now);
    task.completed_at = Some(now);
    task.result = Some(json!([1, "two", {"three": null}]));
    task.error = Some("earlier failure".into());
    task.attachments = vec![attachment.clone()];
    task.status = TaskStatus::Archived;
    task.archived_from = Some(TaskStatus::Failed);
    task.executor = Some(ExecutorSpec {
        kind: "http".into(),
        config: json!({"url": "https://example.com/hook"}),
    });
    task.input = Some(json!({"orderId": 7}));
    task.retry = Some(RetryPolicy {
        max_attempts: 3,
        base_delay_seconds: 10,
    });
    task.auto_dispatch = true;
    task.required_capability = Some("translation".into());
    task.attempts = 3;
    task.queued_at = Some(now);
    task.queue_wait_ms = Some(1250);
    task.dispatch_id = Some("01JD0000000000000000000001".into());
    task.lease_expires_at = Some(now);
    task.agent_reserved = true;
    task.execution_arn = Some(format!(
        "arn:aws:states:us-east-1:123456789012:execution:chain:{TASK_ID}-1"
    ));
    task.promoted_from = Some(Priority::Low);
    task.sla_breached_at = Some(now);
    let full = serde_json::to_value(&task).unwrap();
    assert_valid(component("Task"), &full, "fully populated task");
    assert_eq!(keys(&full), keys(&component("Task")["properties"]));

    let attachment = serde_json::to_value(&attachment).unwrap();
    assert_valid(component("Attachment"), &attachment, "attachment");
    assert_eq!(
        keys(&attachment),
        keys(&component("Attachment")["properties"])
    );

    let mut step = step(&task, 3, "render");
    let minimal = serde_json::to_value(&step).unwrap();
    assert_valid(component("TaskStep"), &minimal, "minimal step");
    assert_eq!(keys(&minimal), strings(&component("TaskStep")["required"]));
    step.result = Some(json!(7));
    step.error = Some("boom".into());
    step.started_at = Some(now);
    step.completed_at = Some(now);
    step.status = StepStatus::Failed;
    step.attempts = 2;
    step.run_until = Some(now);
    let full = serde_json::to_value(&step).unwrap();
    assert_valid(component("TaskStep"), &full, "full step");
    assert_eq!(keys(&full), keys(&component("TaskStep")["properties"]));

    let agent = serde_json::to_value(Agent {
        id: UserId::parse(WORKER).unwrap(),
        agency_id: AgencyId::parse(AGENCY).unwrap(),
        capabilities: vec!["translation".into()],
        capacity: 2,
        active_tasks: 1,
        status: AgentStatus::Offline,
        last_heartbeat_at: now,
        registered_at: now,
    })
    .unwrap();
    assert_valid(component("Agent"), &agent, "agent");
    assert_eq!(keys(&agent), keys(&component("Agent")["properties"]));

    let tier = serde_json::to_value(TierStats {
        tier: Priority::Background,
        backlog: 4,
        in_flight: 1,
        dead_letters: 0,
        oldest_waiting_seconds: 90,
        sla_seconds: None,
        breaches_last_hour: 0,
    })
    .unwrap();
    assert_valid(component("TierStats"), &tier, "tier stats");
    // Each scope emits the common fields plus its own: deadLetters (system), exact (agency).
    let common = strings(&component("TierStats")["required"]);
    let with = |field: &str| {
        let mut all = common.clone();
        all.insert(field.to_owned());
        all
    };
    assert_eq!(keys(&tier), with("deadLetters"));
    let agency_tier = serde_json::to_value(shared::service::AgencyTierStats {
        tier: Priority::Low,
        backlog: 2,
        in_flight: 1,
        oldest_waiting_seconds: 30,
        sla_seconds: Some(14_400),
        breaches_last_hour: 0,
        exact: true,
    })
    .unwrap();
    assert_valid(
        component("TierStats"),
        &agency_tier,
        "an agency's tier stats",
    );
    assert_eq!(keys(&agency_tier), with("exact"));
    assert_eq!(
        keys(&component("TierStats")["properties"]),
        with("deadLetters").union(&with("exact")).cloned().collect()
    );
}

/// A batch as the API shows it: everything it can emit is declared, and
/// everything required is always emitted.
#[test]
fn serialized_batches_match_their_schema_exactly() {
    let now = chrono::Utc::now();
    let id = TaskId::generate();
    let mut batch = BatchJob {
        id,
        task_id: id,
        agency_id: AgencyId::parse(AGENCY).unwrap(),
        title: "Nightly re-index".into(),
        status: BatchStatus::Pending,
        source: BatchSource::Inline,
        source_key: None,
        priority: Priority::Background,
        executor: ExecutorSpec {
            kind: "echo".into(),
            config: json!({}),
        },
        parallelism: 10,
        tolerated_failure_percentage: 0.0,
        items_per_batch: 100,
        total_items: 0,
        chunk_count: 0,
        processed_items: 0,
        success_items: 0,
        failed_items: 0,
        round: 0,
        manifest_key: None,
        results_key: None,
        execution_arn: None,
        error: None,
        created_at: now,
        started_at: None,
        completed_at: None,
        preparation: None,
    };
    let view = |batch: &BatchJob, eta: Option<u64>, url: Option<&str>| {
        serde_json::to_value(BatchView {
            batch: batch.clone(),
            progress_percent: 100.0,
            eta_seconds: eta,
            results_url: url.map(str::to_owned),
        })
        .unwrap()
    };
    let minimal = view(&batch, None, None);
    assert_valid(component("Batch"), &minimal, "minimal batch");
    assert_eq!(keys(&minimal), strings(&component("Batch")["required"]));

    let prefix = format!("batches/{AGENCY}/{id}/round-001");
    batch.status = BatchStatus::Failed;
    batch.source = BatchSource::S3Trigger;
    batch.source_key = Some(format!("uploads/{AGENCY}/orders.csv"));
    batch.round = 1;
    batch.manifest_key = Some(format!("{prefix}/manifest.json"));
    batch.results_key = Some(format!("{prefix}/results.json"));
    batch.execution_arn = Some(format!(
        "arn:aws:states:us-east-1:123456789012:execution:batch:{id}-r1"
    ));
    batch.error = Some("too many failed items".into());
    batch.started_at = Some(now);
    batch.completed_at = Some(now);
    batch.tolerated_failure_percentage = 12.5;
    batch.preparation = Some(shared::domain::Preparation {
        chunks_written: 3,
        items_read: 300,
        passes: 1,
        repairs: 0,
        updated_at: now,
    });
    let full = view(
        &batch,
        Some(42),
        Some("https://downloads.example/results.json"),
    );
    assert_valid(component("Batch"), &full, "fully populated batch");
    assert_eq!(keys(&full), keys(&component("Batch")["properties"]));

    let failure = serde_json::to_value(shared::domain::ItemFailure {
        index: 7,
        error: "boom".into(),
    })
    .unwrap();
    assert_valid(component("BatchItemFailure"), &failure, "item failure");
    assert_eq!(
        keys(&failure),
        keys(&component("BatchItemFailure")["properties"])
    );
}

/// The JSON real handlers return, checked against the named schemas (the
/// contract check in `support` does this for every reply as well).
#[tokio::test]
async fn real_responses_match_their_schemas() {
    let api = Api::new();
    let created = api
        .send(&Event::load("api-create-task").body(&json!({
            "title": "Everything", "description": "all fields", "type": "multi_step",
            "priority": "critical", "assignedTo": WORKER, "dueAt": "2030-01-01T00:00:00+02:00",
            "metadata": {"nested": {"deep": [1, 2]}},
            "steps": [{"name": "one"}, {"name": "two", "dependsOn": ["one"]}]})))
        .await
        .expect(201);
    let id = created.id();
    assert_valid(component("Task"), &created.body, "created task");
    assert_eq!(created.body["dueAt"], "2029-12-31T22:00:00Z");

    let attached = api
        .send(&Event::load("api-add-attachment").id(&id))
        .await
        .expect(201);
    assert_valid(
        component("AttachmentCreated"),
        &attached.body,
        "attachment reply",
    );
    let key = attached.body["attachment"]["key"].as_str().unwrap();
    assert!(key.starts_with(&format!("attachments/{AGENCY}/{id}/")));
    assert!(attached.body["upload"]["url"]
        .as_str()
        .unwrap()
        .ends_with(key));
    assert_eq!(
        attached.body["upload"]["headers"]["Content-Type"],
        "application/pdf"
    );
    assert_eq!(attached.body["taskVersion"], 2);

    for name in ["api-start-task", "api-cancel-task"] {
        api.send(&Event::load(name).id(&id)).await.expect(200);
    }
    let task = api
        .send(&Event::load("api-get-task").id(&id))
        .await
        .expect(200);
    assert_valid(component("Task"), &task.body, "task");
    let emitted = keys(&task.body);
    assert!(emitted.is_subset(&keys(&component("Task")["properties"])));
    assert!(strings(&component("Task")["required"]).is_subset(&emitted));
    assert_eq!(task.body["attachments"].as_array().unwrap().len(), 1);

    let list = api
        .send(&Event::load("api-list-tasks").query(&[]))
        .await
        .expect(200);
    assert_valid(component("TaskList"), &list.body, "task list");
    assert_eq!(list.body["items"][0], task.body);

    let steps = api
        .send(&Event::load("api-task-steps").id(&id))
        .await
        .expect(200);
    assert_valid(component("StepsView"), &steps.body, "steps view");
    assert_eq!(steps.body["taskId"], json!(id));

    let error = api
        .send(&Event::load("api-start-task").id(&id))
        .await
        .expect(409);
    assert_valid(component("Error"), &error.body, "error");
    assert_eq!(
        keys(&error.body["error"]),
        keys(&component("Error")["properties"]["error"]["properties"])
    );
}

/// The validator enforces what the document says, through `$ref`s: a task
/// reply with one thing wrong at a time fails its schema.
#[tokio::test]
async fn the_contract_check_is_strict() {
    let api = Api::new();
    let created = api
        .send(&Event::load("api-create-task").body(&json!({"title": "Strict"})))
        .await
        .expect(201);
    assert_valid(component("Task"), &created.body, "created task");
    let broken = |pointer: &str, value: Value| {
        let mut task = created.body.clone();
        match pointer.rsplit_once('/') {
            Some((parent, key)) => {
                task.pointer_mut(parent).unwrap()[key] = value;
            }
            None => unreachable!(),
        }
        task
    };
    for (what, task) in [
        ("undeclared property", broken("/surprise", json!(1))),
        ("date-time format", broken("/createdAt", json!("yesterday"))),
        ("ULID pattern", broken("/id", json!("not-a-ulid"))),
        ("enum", broken("/status", json!("sleeping"))),
        ("type", broken("/version", json!("1"))),
    ] {
        assert!(
            !schema::problems(component("Task"), &task).is_empty(),
            "{what} was not caught: {task:#}"
        );
    }
}

/// The agent, queue and retry routes, through the contract check.
#[tokio::test]
async fn agent_queue_and_retry_routes_answer_as_documented() {
    let api = Api::new();
    let at = |method: &str, path: &str| Event::load("api-get-task").to(method, path);
    let agent_path = format!("/api/agents/{WORKER}");
    let as_agent = |e: Event| e.caller(WORKER, AGENCY, "agent");

    let body = json!({"capabilities": ["review", "translation", "review"], "capacity": 2});
    let registered = api
        .send(&as_agent(at("PUT", &agent_path)).body(&body))
        .await
        .expect(200);
    assert_eq!(
        registered.body["capabilities"],
        json!(["review", "translation"])
    );
    assert_eq!(registered.body["status"], "online");
    // Only the agent itself or a manager; ids that cannot exist are 404.
    api.send(&at("PUT", &agent_path).worker().body(&body))
        .await
        .expect(403);
    api.send(&as_agent(at("PUT", &format!("/api/agents/{MANAGER}"))).body(&body))
        .await
        .expect(403);
    api.send(&at("PUT", "/api/agents/no$such").body(&body))
        .await
        .expect(404);
    let bad = api
        .send(&at("PUT", &agent_path).body(&json!({"capacity": 0, "team": "x"})))
        .await
        .expect(400);
    assert_eq!(bad.fields(), ["capacity", "team"]);

    let agents = api.send(&at("GET", "/api/agents")).await.expect(200);
    assert_eq!(agents.body["items"][0], registered.body);
    let queues = api.send(&at("GET", "/api/queues")).await.expect(200);
    let tiers: Vec<&Value> = queues.body["tiers"].as_array().unwrap().iter().collect();
    assert_eq!(tiers.len(), Priority::ALL.len());
    assert_eq!(tiers[4]["slaSeconds"], Value::Null);

    // Retry: managers only, and only failed tasks with an executor.
    let retry = at("POST", &format!("/api/tasks/{TASK_ID}/retry"));
    api.seed(|t| t.status = TaskStatus::Failed).await;
    api.send(&retry.clone().worker()).await.expect(403);
    let human = api.send(&retry).await.expect(409);
    assert_eq!(human.code(), "conflict");
    let api = Api::new();
    api.seed(|t| {
        t.executor = Some(ExecutorSpec {
            kind: "echo".into(),
            config: json!({}),
        })
    })
    .await;
    let pending = api.send(&retry).await.expect(409);
    assert_eq!(pending.code(), "invalid_transition");

    // Auto-assignment with no agent that has capacity.
    let auto = api
        .send(&Event::load("api-assign-task").body(&json!({"auto": true})))
        .await
        .expect(409);
    assert_eq!(auto.code(), "conflict");
}
