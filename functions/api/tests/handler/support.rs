//! Shared helpers: the `events/*.json` fixtures, small rewrites of them, an
//! in-memory app, and a contract check that runs on every response.

use crate::schema::{self, doc, resolve};
use api::App;
use lambda_http::http::HeaderMap;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{json, Value};
use shared::domain::{BatchJob, StepStatus, Task, TaskId, TaskStatus, TaskStep, TaskType, UserId};
use shared::ports::{BatchStore, TaskStore};

use shared::testing::{
    MemoryBatches, MemoryObjects, MemoryStore, MemoryWorld, RecordingOrchestrator,
};
use std::sync::Arc;

/// The task id every fixture uses in its path.
pub const TASK_ID: &str = "01JD0000000000000000000000";
/// Claims of the fixtures: a manager and a member of agency `acme`.
pub const AGENCY: &str = "acme";
pub const MANAGER: &str = "11111111-1111-4111-8111-111111111111";
pub const WORKER: &str = "22222222-2222-4222-8222-222222222222";

macro_rules! fixtures {
    ($($name:literal),+ $(,)?) => {
        &[$(($name, include_str!(concat!("../../../../events/", $name, ".json")))),+]
    };
}

/// Every API Gateway fixture: (name, raw JSON).
pub const API_EVENTS: &[(&str, &str)] = fixtures!(
    "api-list-tasks",
    "api-create-task",
    "api-get-task",
    "api-update-task",
    "api-delete-task",
    "api-assign-task",
    "api-start-task",
    "api-complete-task",
    "api-cancel-task",
    "api-task-steps",
    "api-add-attachment",
    "api-create-batch",
    "api-get-batch",
    "api-openapi",
    "api-no-identity",
);

pub fn raw_event(name: &str) -> &'static str {
    API_EVENTS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .1
}

/// A fixture as JSON, to be rewritten before it becomes a request.
#[derive(Debug, Clone)]
pub struct Event(pub Value);

impl Event {
    pub fn load(name: &str) -> Self {
        Self(serde_json::from_str(raw_event(name)).expect("fixture is JSON"))
    }

    /// Points the event at another method and path (stage prefix kept in the context).
    pub fn to(mut self, method: &str, path: &str) -> Self {
        let e = &mut self.0;
        e["httpMethod"] = json!(method);
        e["path"] = json!(path);
        e["requestContext"]["httpMethod"] = json!(method);
        e["requestContext"]["path"] = json!(format!("/prod{path}"));
        if e["resource"] == "/api/{proxy+}" {
            e["pathParameters"] = json!({"proxy": path.trim_start_matches("/api/")});
        }
        self
    }

    /// Replaces the fixture's task id with `id` in the path.
    pub fn id(self, id: &str) -> Self {
        let method = self.method();
        let path = self.path().replace(TASK_ID, id);
        self.to(&method, &path)
    }

    pub fn method(&self) -> String {
        self.0["httpMethod"]
            .as_str()
            .expect("httpMethod")
            .to_owned()
    }

    pub fn path(&self) -> String {
        self.0["path"].as_str().expect("path").to_owned()
    }

    pub fn caller(mut self, sub: &str, agency: &str, role: &str) -> Self {
        let claims = &mut self.0["requestContext"]["authorizer"]["claims"];
        if !claims.is_object() {
            *claims = json!({});
        }
        claims["sub"] = json!(sub);
        claims["custom:agencyId"] = json!(agency);
        claims["custom:role"] = json!(role);
        self
    }

    pub fn manager(self) -> Self {
        self.caller(MANAGER, AGENCY, "manager")
    }

    pub fn worker(self) -> Self {
        self.caller(WORKER, AGENCY, "member")
    }

    /// Sets a header (in `headers` and `multiValueHeaders`, replacing any casing of it).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self = self.without_header(name);
        self.0["headers"][name] = json!(value);
        self.0["multiValueHeaders"][name] = json!([value]);
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        for map in ["headers", "multiValueHeaders"] {
            if let Some(headers) = self.0[map].as_object_mut() {
                headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
            }
        }
        self
    }

    pub fn body(self, body: &Value) -> Self {
        self.raw_body(&body.to_string())
            .header("Content-Type", "application/json")
    }

    pub fn raw_body(mut self, body: &str) -> Self {
        self.0["body"] = json!(body);
        self
    }

    pub fn no_body(mut self) -> Self {
        self.0["body"] = Value::Null;
        self
    }

    pub fn query(mut self, params: &[(&str, &str)]) -> Self {
        let single: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| ((*k).into(), json!(v)))
            .collect();
        let multi: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| ((*k).into(), json!([v])))
            .collect();
        let or_null = |m: serde_json::Map<String, Value>| {
            if m.is_empty() {
                Value::Null
            } else {
                Value::Object(m)
            }
        };
        self.0["queryStringParameters"] = or_null(single);
        self.0["multiValueQueryStringParameters"] = or_null(multi);
        self
    }

    pub fn request(&self) -> Request {
        lambda_http::request::from_str(&self.0.to_string()).expect("a valid API Gateway event")
    }
}

/// What the handler answered, with the body parsed.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// `Value::Null` for an empty body.
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The sorted names in `error.fields`.
    pub fn fields(&self) -> Vec<String> {
        let mut names: Vec<String> = self.body["error"]["fields"]
            .as_object()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("a task id").to_owned()
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status, status, "unexpected reply: {:#}", self.body);
        self
    }
}

/// The API over in-memory ports.
pub struct Api {
    pub app: App,
    pub store: Arc<MemoryStore>,
    /// Records the chain executions started and stopped and the step tokens answered.
    pub orchestrator: Arc<RecordingOrchestrator>,
    /// Batch jobs, their chunk counters and failed items.
    pub batches: Arc<MemoryBatches>,
    /// The batch bucket: chunks, manifests and uploaded inputs.
    pub objects: Arc<MemoryObjects>,
    /// All the ports, for running what the API queues (batch preparations).
    pub world: MemoryWorld,
    /// Schedules, seeded with one whose id is `TASK_ID` (version 1).
    pub schedules: shared::testing::MemorySchedules,
}

impl Api {
    pub fn new() -> Self {
        let world = MemoryWorld::new();
        let schedules = shared::testing::MemorySchedules::new(world.services().tasks);
        schedules
            .store
            .insert(shared::testing::sample_schedule(AGENCY, TASK_ID, MANAGER));
        Self {
            app: App::with_services(world.services()).with_schedules(schedules.service.clone()),
            schedules,
            store: world.store.clone(),
            orchestrator: world.orchestrator.clone(),
            batches: world.batches.clone(),
            objects: world.objects.clone(),
            world,
        }
    }

    /// Runs the batch preparations the API queued (as the batch preparer would), each to
    /// its end; answers how each went.
    pub async fn prepare(&self) -> Vec<shared::service::Prepared> {
        let preparer = self.world.services().batch_preparer;
        self.world
            .run_preparations(&preparer)
            .await
            .into_iter()
            .map(|outcome| outcome.expect("a preparation"))
            .collect()
    }

    pub async fn send(&self, event: &Event) -> Reply {
        self.call(event.request()).await
    }

    /// Runs the handler and checks the reply against openapi.json.
    pub async fn call(&self, request: Request) -> Reply {
        let method = request.method().as_str().to_owned();
        let path = request.raw_http_path().to_owned();
        let reply = into_reply(api::handle(&self.app, request).await);
        check_contract(&method, &path, &reply);
        reply
    }

    /// Stores a task with the fixtures' id in agency `acme`, changed by `change`.
    pub async fn seed(&self, change: impl FnOnce(&mut Task)) -> Task {
        self.seed_with_steps(change, &[]).await
    }

    pub async fn seed_with_steps(&self, change: impl FnOnce(&mut Task), steps: &[&str]) -> Task {
        let mut task = base_task();
        change(&mut task);
        let steps: Vec<TaskStep> = steps
            .iter()
            .enumerate()
            .map(|(i, name)| step(&task, i as u32, name))
            .collect();
        self.store
            .insert(&task, &steps, None)
            .await
            .expect("seeded task");
        task
    }

    /// Stores a batch (and its batch task) with the fixtures' id in agency
    /// `acme`: 3 inline items, processing, changed by `change`.
    pub async fn seed_batch(&self, change: impl FnOnce(&mut BatchJob)) -> BatchJob {
        let mut task = base_task();
        task.task_type = TaskType::Batch;
        task.status = TaskStatus::InProgress;
        task.priority = shared::domain::Priority::Background;
        let mut batch = base_batch();
        change(&mut batch);
        self.batches
            .create(&task, &batch, None)
            .await
            .expect("seeded batch");
        batch
    }

    /// The stored object at `key`, parsed as JSON.
    pub fn object(&self, key: &str) -> Option<Value> {
        let objects = self.objects.objects.lock().unwrap();
        objects
            .get(key)
            .map(|(body, _)| serde_json::from_slice(body).expect("a JSON object"))
    }

    /// The keys of the stored objects under `prefix`, sorted.
    pub fn object_keys(&self, prefix: &str) -> Vec<String> {
        let objects = self.objects.objects.lock().unwrap();
        let mut keys: Vec<String> = objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// Stores a multi_step task with the fixtures' id, in_progress and assigned
    /// to the worker, with `steps` as given (see `chain_step`). Each step given
    /// a token waits for it like a step the chain dispatched.
    pub async fn seed_chain(&self, steps: &[(TaskStep, Option<&str>)]) -> Task {
        let mut task = base_task();
        assigned_to_worker(TaskStatus::InProgress)(&mut task);
        task.task_type = TaskType::MultiStep;
        task.started_at = Some(chrono::Utc::now());
        task.execution_arn = Some(format!(
            "arn:aws:states:us-east-1:123456789012:execution:chain:{TASK_ID}-1"
        ));
        let records: Vec<TaskStep> = steps.iter().map(|(s, _)| s.clone()).collect();
        self.store
            .insert(&task, &records, None)
            .await
            .expect("seeded chain");
        for (step, token) in steps {
            if let Some(token) = token {
                self.store
                    .set_step_token(&task.agency_id, task.id, &step.name, token)
                    .await
                    .expect("stored token");
            }
        }
        task
    }
}

/// A pending simple task with the fixtures' id, as the store would hold it
/// (built from JSON so fields added later with defaults need no change here).
pub fn base_task() -> Task {
    let now = chrono::Utc::now();
    serde_json::from_value(json!({
        "id": TASK_ID,
        "agencyId": AGENCY,
        "createdBy": MANAGER,
        "title": "Seeded task",
        "type": "simple",
        "priority": "normal",
        "status": "pending",
        "metadata": {},
        "attachments": [],
        "version": 1,
        "createdAt": now,
        "updatedAt": now,
    }))
    .expect("a valid task")
}

/// A processing batch of 3 inline items with the fixtures' id, as the store
/// would hold it once its one chunk is written and its execution started.
pub fn base_batch() -> BatchJob {
    let now = chrono::Utc::now();
    serde_json::from_value(json!({
        "id": TASK_ID,
        "taskId": TASK_ID,
        "agencyId": AGENCY,
        "status": "processing",
        "source": "inline",
        "priority": "background",
        "executor": {"type": "echo", "config": {}},
        "parallelism": 10,
        "toleratedFailurePercentage": 0.0,
        "itemsPerBatch": 100,
        "totalItems": 3,
        "chunkCount": 1,
        "processedItems": 0,
        "successItems": 0,
        "failedItems": 0,
        "round": 0,
        "manifestKey": format!("batches/{AGENCY}/{TASK_ID}/round-000/manifest.json"),
        "executionArn": format!("arn:aws:states:us-east-1:123456789012:execution:batch:{TASK_ID}-r0"),
        "createdAt": now,
        "startedAt": now,
    }))
    .expect("a valid batch")
}

pub fn step(task: &Task, order: u32, name: &str) -> TaskStep {
    TaskStep {
        id: name.to_owned(),
        task_id: task.id,
        name: name.to_owned(),
        order,
        depends_on: Vec::new(),
        status: StepStatus::Pending,
        config: json!({}),
        result: None,
        error: None,
        started_at: None,
        completed_at: None,
        attempts: 0,
        run_until: None,
    }
}

/// A step of the fixtures' task with `config`, in `status` (one run started
/// when it is running).
pub fn chain_step(order: u32, name: &str, status: StepStatus, config: Value) -> TaskStep {
    let mut step = step(&base_task(), order, name);
    if status != StepStatus::Pending {
        step.started_at = Some(chrono::Utc::now());
        step.attempts = 1;
    }
    step.status = status;
    step.config = config;
    step
}

/// The path of a step's completion route.
pub fn step_path(task: TaskId, step: &str) -> String {
    format!("/api/tasks/{task}/steps/{step}/complete")
}

/// Seeds: the task assigned to the worker, in `status`.
pub fn assigned_to_worker(status: TaskStatus) -> impl FnOnce(&mut Task) {
    move |task: &mut Task| {
        task.assigned_to = Some(UserId::parse(WORKER).unwrap());
        task.status = status;
    }
}

fn into_reply(response: Response<Body>) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes: &[u8] = response.body().as_ref();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        assert_eq!(
            headers.get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json"),
            "a body is always JSON"
        );
        serde_json::from_slice(bytes).expect("the body is JSON")
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Every reply must be one the document describes: a declared status, a body
/// matching its schema, required headers present and no undeclared ones.
fn check_contract(method: &str, path: &str, reply: &Reply) {
    let root = doc();
    let what = format!("{method} {path} -> {}", reply.status);
    let response = match schema::operation_for(method, path) {
        Some((template, op)) => {
            let declared = op["responses"].get(reply.status.to_string());
            let declared = declared.unwrap_or_else(|| {
                panic!(
                    "{what}: status not documented for {method} {template}: {:#}",
                    reply.body
                )
            });
            resolve(root, declared)
        }
        // Undocumented methods and paths: the generic error responses.
        None => {
            let name = match reply.status {
                401 => "Unauthorized",
                404 => "NotFound",
                405 => "MethodNotAllowed",
                other => panic!("{what}: status {other} for an undocumented route"),
            };
            &root["components"]["responses"][name]
        }
    };
    match response.pointer("/content/application~1json/schema") {
        Some(body_schema) => schema::assert_valid(body_schema, &reply.body, &what),
        None => assert!(reply.body.is_null(), "{what}: undocumented body"),
    }
    let declared_headers = response.get("headers").and_then(Value::as_object);
    for (name, header) in declared_headers.into_iter().flatten() {
        let header = resolve(root, header);
        match reply.headers.get(name) {
            Some(value) => {
                let value = json!(value.to_str().expect("ASCII header"));
                schema::assert_valid(&header["schema"], &value, &format!("{what} {name}"));
            }
            None => assert!(
                header["required"] != true,
                "{what}: required header {name} is missing"
            ),
        }
    }
    for name in reply.headers.keys() {
        let documented = name == "content-type"
            || declared_headers
                .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case(name.as_str())));
        assert!(documented, "{what}: header {name} is not documented");
    }
}
