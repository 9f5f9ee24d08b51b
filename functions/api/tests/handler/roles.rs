//! Who may call what: every route × every role (manager, member, agent; an operator is held
//! to the member rule), plus the assignee, a manual step's assignee and the agent itself where the rule
//! names them, as one table. Each row runs against a fresh in-memory world
//! seeded with the state the call needs, so an allowed call gets a 2xx (not a
//! 409 or 404 that would hide the role check) and a refused one gets a 403 that
//! changes nothing. A route added to `ROUTES` without a row fails the test.

use crate::support::{base_task, chain_step, step, Event, AGENCY, MANAGER, TASK_ID, WORKER};
use api::routes::ROUTES;
use api::App;
use serde_json::{json, Value};
use shared::domain::{
    AgencyId, BatchStatus, ExecutorSpec, ItemFailure, StepStatus, Task, TaskId, TaskStatus,
    TaskType, UserId,
};
use shared::ports::{AgentStore, BatchStore, TaskStore};
use shared::testing::MemoryWorld;
use std::collections::BTreeSet;

/// A member with no part in the task.
const MEMBER: &str = "33333333-3333-4333-8333-333333333333";
/// An operator with no part in any task.
const OPERATOR: &str = "55555555-5555-4555-8555-555555555555";
/// An agent that is neither the task's assignee nor the agent in the path.
const AGENT: &str = "agent-ocr-1";
/// The agent named by `PUT /api/agents/{id}`.
const THE_AGENT: &str = "agent-ocr-2";
/// Who completes the manual step (not the task's assignee, who is `WORKER`).
const STEP_ASSIGNEE: &str = "44444444-4444-4444-8444-444444444444";
/// The manual step of `State::ManualStepWaiting`.
const STEP: &str = "review";
/// The attachment of `State::Attached`.
const ATTACHMENT: &str = "01JD0000000000000000000A77";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Manager,
    Member,
    Agent,
    /// The task's assignee (`WORKER`), with this role.
    Assignee(&'static str),
    /// The manual step's assignee, a member.
    StepAssignee,
    /// The caller whose id is the agent id in the path, with this role.
    Itself(&'static str),
    /// An operator with no part in the task: inside its agency it may do what a member may,
    /// so every row's member rule is also the operator's.
    Operator,
}

impl Who {
    fn claims(self) -> (&'static str, &'static str) {
        match self {
            Who::Manager => (MANAGER, "manager"),
            Who::Member => (MEMBER, "member"),
            Who::Agent => (AGENT, "agent"),
            Who::Assignee(role) => (WORKER, role),
            Who::StepAssignee => (STEP_ASSIGNEE, "member"),
            Who::Itself(role) => (THE_AGENT, role),
            Who::Operator => (OPERATOR, "operator"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 2xx.
    Allowed,
    /// 403 `forbidden`, and nothing changed.
    Forbidden,
}

/// What the world holds before the call.
#[derive(Debug, Clone, Copy)]
enum State {
    Nothing,
    /// A human task (no executor), assigned to `WORKER` unless pending.
    Human(TaskStatus),
    /// A human task in progress, assigned to `WORKER`, with the attachment `ATTACHMENT`.
    Attached,
    /// A task with the echo executor, assigned to `WORKER`.
    Automated(TaskStatus),
    /// A pending multi_step task assigned to `WORKER`: steps a → b.
    Chain,
    /// A running chain whose manual step `review` waits for `STEP_ASSIGNEE`.
    ManualStepWaiting,
    /// A batch of two inline items, processing.
    Batch,
    /// A batch that failed with one failed item.
    FinishedBatch,
    /// `THE_AGENT` registered and online.
    RegisteredAgent,
}

struct Case {
    method: &'static str,
    /// A template from `ROUTES`.
    path: &'static str,
    query: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    state: State,
    rules: &'static [(Who, Expect)],
}

use Expect::{Allowed as A, Forbidden as F};
use Who::{Agent, Assignee, Itself, Manager, Member, StepAssignee};

const ANYONE: &[(Who, Expect)] = &[(Manager, A), (Member, A), (Agent, A)];
const MANAGERS_ONLY: &[(Who, Expect)] = &[(Manager, A), (Member, F), (Agent, F)];
/// Managers only; being the task's assignee does not help.
const MANAGERS_NOT_ASSIGNEES: &[(Who, Expect)] = &[
    (Manager, A),
    (Member, F),
    (Agent, F),
    (Assignee("member"), F),
    (Assignee("agent"), F),
];

const fn case(
    method: &'static str,
    path: &'static str,
    state: State,
    rules: &'static [(Who, Expect)],
) -> Case {
    Case {
        method,
        path,
        query: &[],
        body: None,
        state,
        rules,
    }
}

const fn with_body(
    method: &'static str,
    path: &'static str,
    body: &'static str,
    state: State,
    rules: &'static [(Who, Expect)],
) -> Case {
    Case {
        method,
        path,
        query: &[],
        body: Some(body),
        state,
        rules,
    }
}

/// A schedule definition for the schedule rows.
const SCHEDULE: &str =
    r#"{"name": "Nightly", "expression": "cron(0 2 * * ? *)", "template": {"title": "Nightly"}}"#;

const TABLE: &[Case] = &[
    case("GET", "/api/openapi.json", State::Nothing, ANYONE),
    case(
        "GET",
        "/api/tasks",
        State::Human(TaskStatus::Assigned),
        ANYONE,
    ),
    with_body(
        "POST",
        "/api/tasks",
        r#"{"title": "Quarterly report"}"#,
        State::Nothing,
        MANAGERS_ONLY,
    ),
    case(
        "GET",
        "/api/tasks/{id}",
        State::Human(TaskStatus::Assigned),
        ANYONE,
    ),
    with_body(
        "PUT",
        "/api/tasks/{id}",
        r#"{"title": "Q3 report"}"#,
        State::Human(TaskStatus::Assigned),
        MANAGERS_NOT_ASSIGNEES,
    ),
    case(
        "DELETE",
        "/api/tasks/{id}",
        State::Human(TaskStatus::Assigned),
        MANAGERS_NOT_ASSIGNEES,
    ),
    Case {
        query: &[("hard", "true")],
        ..case(
            "DELETE",
            "/api/tasks/{id}",
            State::Human(TaskStatus::Assigned),
            MANAGERS_NOT_ASSIGNEES,
        )
    },
    with_body(
        "POST",
        "/api/tasks/{id}/assign",
        r#"{"assignee": "22222222-2222-4222-8222-222222222222"}"#,
        State::Human(TaskStatus::Pending),
        MANAGERS_ONLY,
    ),
    with_body(
        "POST",
        "/api/tasks/{id}/assign",
        r#"{"assignee": "someone-else"}"#,
        State::Human(TaskStatus::Assigned),
        MANAGERS_NOT_ASSIGNEES,
    ),
    // Human work is started by its assignee only, not even by a manager...
    case(
        "POST",
        "/api/tasks/{id}/start",
        State::Human(TaskStatus::Assigned),
        &[
            (Manager, F),
            (Member, F),
            (Agent, F),
            (Assignee("member"), A),
            (Assignee("agent"), A),
        ],
    ),
    // ...while managers may also start automated work and chains.
    case(
        "POST",
        "/api/tasks/{id}/start",
        State::Automated(TaskStatus::Assigned),
        &[
            (Manager, A),
            (Member, F),
            (Agent, F),
            (Assignee("member"), A),
            (Assignee("agent"), A),
        ],
    ),
    case(
        "POST",
        "/api/tasks/{id}/start",
        State::Chain,
        &[
            (Manager, A),
            (Member, F),
            (Agent, F),
            (Assignee("member"), A),
            (Assignee("agent"), A),
        ],
    ),
    with_body(
        "POST",
        "/api/tasks/{id}/complete",
        r#"{"result": {"pages": 12}}"#,
        State::Human(TaskStatus::InProgress),
        &[
            (Manager, F),
            (Member, F),
            (Agent, F),
            (Assignee("member"), A),
            (Assignee("agent"), A),
        ],
    ),
    with_body(
        "POST",
        "/api/tasks/{id}/complete",
        r#"{"error": "printer on fire"}"#,
        State::Human(TaskStatus::InProgress),
        &[
            (Manager, F),
            (Member, F),
            (Agent, F),
            (Assignee("member"), A),
        ],
    ),
    case(
        "POST",
        "/api/tasks/{id}/cancel",
        State::Human(TaskStatus::InProgress),
        MANAGERS_NOT_ASSIGNEES,
    ),
    case("GET", "/api/tasks/{id}/steps", State::Chain, ANYONE),
    case(
        "GET",
        "/api/tasks/{id}/attachments/{attachmentId}",
        State::Attached,
        ANYONE,
    ),
    with_body(
        "POST",
        "/api/tasks/{id}/attachments",
        r#"{"fileName": "notes.txt", "contentType": "text/plain"}"#,
        State::Human(TaskStatus::InProgress),
        &[
            (Manager, A),
            (Member, F),
            (Agent, F),
            (Assignee("member"), A),
            (Assignee("agent"), A),
        ],
    ),
    case(
        "POST",
        "/api/tasks/{id}/retry",
        State::Automated(TaskStatus::Failed),
        MANAGERS_NOT_ASSIGNEES,
    ),
    with_body(
        "POST",
        "/api/tasks/{id}/steps/{stepId}/complete",
        r#"{"result": {"approved": true}}"#,
        State::ManualStepWaiting,
        &[
            (Manager, A),
            (Member, F),
            (Agent, F),
            (StepAssignee, A),
            // The task's assignee is not the step's.
            (Assignee("member"), F),
        ],
    ),
    with_body(
        "POST",
        "/api/batches",
        r#"{"title": "Re-index", "items": [{"n": 1}, {"n": 2}]}"#,
        State::Nothing,
        MANAGERS_ONLY,
    ),
    with_body(
        "POST",
        "/api/batches/uploads",
        r#"{"fileName": "items.csv"}"#,
        State::Nothing,
        MANAGERS_ONLY,
    ),
    case("GET", "/api/batches", State::Batch, ANYONE),
    case("GET", "/api/batches/{id}", State::Batch, ANYONE),
    case(
        "GET",
        "/api/batches/{id}/failures",
        State::FinishedBatch,
        ANYONE,
    ),
    case(
        "POST",
        "/api/batches/{id}/retry-failed",
        State::FinishedBatch,
        MANAGERS_ONLY,
    ),
    case("GET", "/api/agents", State::RegisteredAgent, ANYONE),
    with_body(
        "PUT",
        "/api/agents/{id}",
        r#"{"capabilities": ["ocr"], "capacity": 3}"#,
        State::RegisteredAgent,
        &[
            (Manager, A),
            (Itself("agent"), A),
            // Another agent may not speak for it...
            (Agent, F),
            // ...nor may a member, not even one whose id it is.
            (Member, F),
            (Itself("member"), F),
        ],
    ),
    case("GET", "/api/queues", State::Nothing, ANYONE),
    // Schedules: every case's world holds one with the id TASK_ID (see `app_for`).
    case("GET", "/api/schedules", State::Nothing, ANYONE),
    with_body(
        "POST",
        "/api/schedules",
        SCHEDULE,
        State::Nothing,
        MANAGERS_ONLY,
    ),
    case("GET", "/api/schedules/{id}", State::Nothing, ANYONE),
    with_body(
        "PUT",
        "/api/schedules/{id}",
        SCHEDULE,
        State::Nothing,
        MANAGERS_ONLY,
    ),
    case(
        "DELETE",
        "/api/schedules/{id}",
        State::Nothing,
        MANAGERS_ONLY,
    ),
    case(
        "POST",
        "/api/schedules/{id}/pause",
        State::Nothing,
        MANAGERS_ONLY,
    ),
    case(
        "POST",
        "/api/schedules/{id}/resume",
        State::Nothing,
        MANAGERS_ONLY,
    ),
];

fn user(id: &str) -> UserId {
    UserId::parse(id).expect("a valid user id")
}

fn agency() -> AgencyId {
    AgencyId::parse(AGENCY).expect("a valid agency")
}

async fn insert(world: &MemoryWorld, task: &Task, steps: &[shared::domain::TaskStep]) {
    world
        .store
        .insert(task, steps, None)
        .await
        .expect("seeded task");
}

/// Calls the handler; the status and the parsed body (`Null` when empty).
async fn call(app: &App, event: &Event) -> (u16, Value) {
    let response = api::handle(app, event.request()).await;
    let status = response.status().as_u16();
    let bytes: &[u8] = response.body().as_ref();
    let body = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    (status, body)
}

/// Stores what `state` describes; returns the id that replaces `{id}`.
/// The API over `world`, with schedules holding one whose id is `TASK_ID`.
fn app_for(world: &MemoryWorld) -> App {
    let schedules = shared::testing::MemorySchedules::new(world.services().tasks);
    schedules
        .store
        .insert(shared::testing::sample_schedule(AGENCY, TASK_ID, MANAGER));
    App::with_services(world.services()).with_schedules(schedules.service)
}

async fn seed(world: &MemoryWorld, app: &App, state: State) -> String {
    let mut task = base_task();
    match state {
        State::Nothing => TASK_ID.to_owned(),
        State::Human(status) | State::Automated(status) => {
            task.status = status;
            if status != TaskStatus::Pending {
                task.assigned_to = Some(user(WORKER));
            }
            if matches!(state, State::Automated(_)) {
                task.executor = Some(ExecutorSpec {
                    kind: "echo".into(),
                    config: json!({}),
                });
                task.input = Some(json!({"n": 1}));
                if status == TaskStatus::Failed {
                    task.attempts = 4;
                    task.error = Some("boom".into());
                }
            }
            insert(world, &task, &[]).await;
            TASK_ID.to_owned()
        }
        State::Attached => {
            task.status = TaskStatus::InProgress;
            task.assigned_to = Some(user(WORKER));
            task.attachments.push(shared::domain::Attachment {
                id: shared::domain::AttachmentId::parse(ATTACHMENT).expect("an attachment id"),
                file_name: "notes.txt".into(),
                content_type: "text/plain".into(),
                key: format!("attachments/{AGENCY}/{TASK_ID}/{ATTACHMENT}/notes.txt"),
                uploaded_by: user(WORKER),
                created_at: chrono::Utc::now(),
            });
            insert(world, &task, &[]).await;
            TASK_ID.to_owned()
        }
        State::Chain => {
            task.task_type = TaskType::MultiStep;
            task.status = TaskStatus::Assigned;
            task.assigned_to = Some(user(WORKER));
            let first = step(&task, 0, "a");
            let mut second = step(&task, 1, "b");
            second.depends_on = vec!["a".into()];
            insert(world, &task, &[first, second]).await;
            TASK_ID.to_owned()
        }
        State::ManualStepWaiting => {
            task.task_type = TaskType::MultiStep;
            task.status = TaskStatus::InProgress;
            task.assigned_to = Some(user(WORKER));
            task.started_at = Some(chrono::Utc::now());
            task.execution_arn = Some(format!(
                "arn:aws:states:us-east-1:123456789012:execution:chain:{TASK_ID}-1"
            ));
            let manual = chain_step(
                0,
                STEP,
                StepStatus::Running,
                json!({"executor": {"type": "manual"}, "assignee": STEP_ASSIGNEE}),
            );
            insert(world, &task, &[manual]).await;
            world
                .store
                .set_step_token(&task.agency_id, task.id, STEP, "token-review")
                .await
                .expect("stored token");
            TASK_ID.to_owned()
        }
        State::Batch | State::FinishedBatch => {
            let create = Event::load("api-get-task")
                .to("POST", "/api/batches")
                .manager()
                .body(&json!({"title": "Seeded batch", "items": [{"n": 1}, {"n": 2}]}));
            let (status, body) = call(app, &create).await;
            assert_eq!(status, 202, "seeding a batch: {body:#}");
            let id = body["id"].as_str().expect("a batch id").to_owned();
            for prepared in world
                .run_preparations(&world.services().batch_preparer)
                .await
            {
                prepared.expect("prepared");
            }
            if matches!(state, State::FinishedBatch) {
                let id = TaskId::parse(&id).expect("a batch id");
                let mut batch = world
                    .batches
                    .get(&agency(), id)
                    .await
                    .expect("read")
                    .expect("the seeded batch");
                batch.status = BatchStatus::Failed;
                batch.processed_items = 2;
                batch.success_items = 1;
                batch.failed_items = 1;
                batch.completed_at = Some(chrono::Utc::now());
                world.batches.put(&batch).await.expect("stored");
                world
                    .batches
                    .record_failures(
                        &agency(),
                        id,
                        &[ItemFailure {
                            index: 1,
                            error: "boom".into(),
                        }],
                    )
                    .await
                    .expect("stored failure");
            }
            id
        }
        State::RegisteredAgent => {
            world
                .agents
                .heartbeat(
                    &agency(),
                    &user(THE_AGENT),
                    &["ocr".to_owned()],
                    2,
                    chrono::Utc::now(),
                )
                .await
                .expect("registered agent");
            THE_AGENT.to_owned()
        }
    }
}

/// Everything a refused call must leave as it was.
async fn snapshot(world: &MemoryWorld, id: &str) -> Value {
    let agency = agency();
    let steps = match TaskId::parse(id) {
        Ok(task) => serde_json::to_value(world.store.steps(&agency, task).await.expect("steps"))
            .expect("JSON"),
        Err(_) => Value::Null,
    };
    let batch = match TaskId::parse(id) {
        Ok(batch) => serde_json::to_value(world.batches.get(&agency, batch).await.expect("batch"))
            .expect("JSON"),
        Err(_) => Value::Null,
    };
    let mut objects: Vec<String> = world
        .objects
        .objects
        .lock()
        .expect("not poisoned")
        .keys()
        .cloned()
        .collect();
    objects.sort();
    json!({
        "tasks": serde_json::to_value(world.store.all_tasks()).expect("JSON"),
        "steps": steps,
        "batch": batch,
        "agents": serde_json::to_value(world.agents.list(&agency).await.expect("agents")).expect("JSON"),
        "objects": objects,
        "dispatched": world.dispatcher.sent.lock().expect("not poisoned").len(),
        "executions": world.orchestrator.started.lock().expect("not poisoned").len(),
        "stopped": world.orchestrator.stopped.lock().expect("not poisoned").len(),
        "answers": world.orchestrator.answers.lock().expect("not poisoned").len(),
    })
}

fn request(case: &Case, who: Who, id: &str) -> Event {
    let path = case
        .path
        .replace("{id}", id)
        .replace("{stepId}", STEP)
        .replace("{attachmentId}", ATTACHMENT);
    let (sub, role) = who.claims();
    let event = Event::load("api-get-task")
        .to(case.method, &path)
        .caller(sub, AGENCY, role)
        .query(case.query);
    match case.body {
        Some(body) => event.body(&serde_json::from_str(body).expect("the row's body is JSON")),
        None => event.no_body(),
    }
}

#[test]
fn the_table_covers_every_route_and_every_role() {
    let table: BTreeSet<(&str, &str)> = TABLE.iter().map(|c| (c.method, c.path)).collect();
    let routes: BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    let missing: Vec<_> = routes.difference(&table).collect();
    let unknown: Vec<_> = table.difference(&routes).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "routes without a row: {missing:?}; rows for no route: {unknown:?}"
    );
    for case in TABLE {
        for role in [Manager, Member, Agent] {
            assert!(
                case.rules.iter().any(|(who, _)| *who == role),
                "{} {} ({:?}) has no row for {role:?}",
                case.method,
                case.path,
                case.state
            );
        }
    }
}

#[tokio::test]
async fn every_route_answers_every_role_as_the_table_says() {
    let mut wrong = Vec::new();
    let mut rows = 0;
    for case in TABLE {
        let operator = case
            .rules
            .iter()
            .find(|(who, _)| *who == Member)
            .map(|&(_, expect)| (Who::Operator, expect));
        for &(who, expect) in case.rules.iter().chain(operator.iter()) {
            rows += 1;
            let world = MemoryWorld::new();
            let app = app_for(&world);
            let id = seed(&world, &app, case.state).await;
            let before = snapshot(&world, &id).await;
            let (status, body) = call(&app, &request(case, who, &id)).await;
            let row = format!(
                "{} {}{} ({:?}) as {who:?}",
                case.method,
                case.path,
                if case.query.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", case.query)
                },
                case.state
            );
            match expect {
                Expect::Allowed if !(200..300).contains(&status) => {
                    wrong.push(format!("{row}: expected 2xx, got {status} {body}"));
                }
                Expect::Forbidden if status != 403 || body["error"]["code"] != "forbidden" => {
                    wrong.push(format!(
                        "{row}: expected 403 forbidden, got {status} {body}"
                    ));
                }
                Expect::Forbidden if snapshot(&world, &id).await != before => {
                    wrong.push(format!("{row}: refused, but something changed"));
                }
                _ => {}
            }
        }
    }
    assert!(rows > 3 * ROUTES.len(), "only {rows} rows");
    assert!(
        wrong.is_empty(),
        "{} of {rows} rows disagree with the table:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
