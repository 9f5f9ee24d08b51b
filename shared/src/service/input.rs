//! Request bodies and query strings parsed into validated inputs. Parsing
//! collects every problem so a 400 names all the bad fields at once.

use crate::domain::chain::{assignee_of, ASSIGNEE_FIELD, DEPRECATED_ASSIGNEE_FIELD};
use crate::domain::limits::{
    DEFAULT_PAGE_SIZE, MAX_ERROR_CHARS, MAX_FILE_NAME_CHARS, MAX_PAGE_SIZE, MAX_RESULT_BYTES,
    MAX_STEPS, MAX_STEP_NAME_CHARS,
};
use crate::domain::limits::{MAX_INPUT_BYTES, MAX_STEP_NAME_CHARS as MAX_CAPABILITY_CHARS};
use crate::domain::{
    Description, ExecutorSpec, Metadata, Priority, RetryPolicy, TaskStatus, TaskType, Title, UserId,
};
use crate::error::{AppError, FieldErrors};
use crate::ports::TaskQuery;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// The body with a deprecated `assignee` renamed to `assignedTo`, so the rest of the parsing
/// knows one name, and whether it was renamed; both at once is a 400 naming `assignee`.
fn with_canonical_assignee(body: &Value) -> Result<(Cow<'_, Value>, bool), AppError> {
    let Value::Object(map) = body else {
        return Ok((Cow::Borrowed(body), false));
    };
    if let Err((field, problem)) = assignee_of(|field| map.get(field)) {
        let mut errors = FieldErrors::new();
        errors.add(field, problem);
        return Err(AppError::Validation(errors));
    }
    if !map.contains_key(DEPRECATED_ASSIGNEE_FIELD) {
        return Ok((Cow::Borrowed(body), false));
    }
    let mut map = map.clone();
    if let Some(value) = map.remove(DEPRECATED_ASSIGNEE_FIELD) {
        if !value.is_null() {
            map.insert(ASSIGNEE_FIELD.to_owned(), value);
        }
    }
    Ok((Cow::Owned(Value::Object(map)), true))
}

/// Parses a body that may name its assignee under the deprecated spelling; a problem with it
/// is reported under the name the caller sent.
fn parse_with_assignee<T>(
    body: &Value,
    parse: impl FnOnce(&Value) -> Result<T, AppError>,
) -> Result<T, AppError> {
    let (body, renamed) = with_canonical_assignee(body)?;
    match parse(&body) {
        Err(AppError::Validation(errors)) if renamed => {
            let mut named = FieldErrors::new();
            for (field, problem) in errors.iter() {
                let field = if field == ASSIGNEE_FIELD {
                    DEPRECATED_ASSIGNEE_FIELD
                } else {
                    field
                };
                named.add(field, problem.clone());
            }
            Err(AppError::Validation(named))
        }
        other => other,
    }
}

/// A JSON object being taken apart field by field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    errors: FieldErrors,
}

impl<'a> Fields<'a> {
    fn new(body: &'a Value, allowed: &[&str]) -> Result<Self, AppError> {
        let Value::Object(map) = body else {
            let mut errors = FieldErrors::new();
            errors.add("body", "must be a JSON object");
            return Err(AppError::Validation(errors));
        };
        let mut errors = FieldErrors::new();
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                errors.add(
                    key.clone(),
                    format!("unknown field; allowed: {}", allowed.join(", ")),
                );
            }
        }
        Ok(Self { map, errors })
    }

    /// The field's value, treating JSON null as absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn string(&mut self, field: &str) -> Option<&'a str> {
        match self.get(field) {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                self.errors.add(field, "must be a string");
                None
            }
        }
    }

    fn required_string(&mut self, field: &str) -> Option<&'a str> {
        if self.get(field).is_none() {
            self.errors.add(field, "is required");
            return None;
        }
        self.string(field)
    }

    fn parsed<T>(
        &mut self,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.string(field)?;
        self.errors.check(field, parse(raw))
    }

    fn timestamp(&mut self, field: &str) -> Option<DateTime<Utc>> {
        self.parsed(field, parse_timestamp)
    }

    fn finish(self) -> Result<(), AppError> {
        self.errors.into_result()
    }
}

pub fn parse_timestamp(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("'{raw}' is not an RFC 3339 timestamp (e.g. 2026-01-31T17:00:00Z)"))
}

/// A step as given on creation; scheduling details are interpreted by the chain runner.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    pub name: String,
    pub order: u32,
    pub depends_on: Vec<String>,
    pub config: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskInput {
    pub title: Title,
    pub description: Option<Description>,
    pub task_type: TaskType,
    pub priority: Priority,
    pub assigned_to: Option<UserId>,
    pub due_at: Option<DateTime<Utc>>,
    pub metadata: Metadata,
    pub steps: Vec<StepInput>,
    pub executor: Option<ExecutorSpec>,
    pub input: Option<Value>,
    pub retry: Option<RetryPolicy>,
    pub auto_dispatch: bool,
    pub required_capability: Option<String>,
}

/// `{"type": "...", "config": {...}}`; the executor itself checks the config.
pub(crate) fn parse_executor(value: &Value) -> Result<ExecutorSpec, String> {
    let shape = "must be {\"type\": \"echo|http|sleep|manual\", \"config\": {…}}";
    let Value::Object(map) = value else {
        return Err(shape.into());
    };
    if map.keys().any(|k| k != "type" && k != "config") {
        return Err(shape.into());
    }
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| shape.to_owned())?;
    let config = map
        .get("config")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    if !config.is_object() {
        return Err("config must be an object".into());
    }
    // Stored with the task or batch: a number DynamoDB cannot hold would fail the write.
    crate::domain::storable::check(&config).map_err(|problem| format!("config {problem}"))?;
    Ok(ExecutorSpec {
        kind: kind.to_owned(),
        config,
    })
}

pub fn parse_capability(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.chars().count() <= MAX_CAPABILITY_CHARS
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "must be 1–{MAX_CAPABILITY_CHARS} characters of A–Z a–z 0–9 - _ . :"
        ))
    }
}

impl NewTaskInput {
    pub fn parse(body: &Value) -> Result<Self, AppError> {
        parse_with_assignee(body, Self::parse_canonical)
    }

    fn parse_canonical(body: &Value) -> Result<Self, AppError> {
        let mut f = Fields::new(
            body,
            &[
                "title",
                "description",
                "type",
                "priority",
                ASSIGNEE_FIELD,
                "dueAt",
                "metadata",
                "steps",
                "executor",
                "input",
                "retry",
                "autoDispatch",
                "requiredCapability",
            ],
        )?;
        let title = f
            .required_string("title")
            .and_then(|t| f.errors.check("title", Title::parse(t)));
        let description = f.parsed("description", Description::parse);
        let task_type = f.parsed("type", str::parse).unwrap_or_default();
        let priority = f.parsed("priority", str::parse).unwrap_or_default();
        let assigned_to = f.parsed(ASSIGNEE_FIELD, UserId::parse);
        let due_at = f.timestamp("dueAt");
        let metadata = match f.get("metadata") {
            None => Metadata::default(),
            Some(v) => f
                .errors
                .check("metadata", Metadata::parse(v.clone()))
                .unwrap_or_default(),
        };
        let executor = f
            .get("executor")
            .and_then(|v| f.errors.check("executor", parse_executor(v)));
        let input = f.get("input").cloned();
        if let Some(input) = &input {
            let size = serde_json::to_vec(input)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_INPUT_BYTES {
                f.errors.add(
                    "input",
                    format!("must be at most {MAX_INPUT_BYTES} bytes as JSON (got {size})"),
                );
            } else if let Err(problem) = crate::domain::storable::check(input) {
                f.errors.add("input", problem);
            }
        }
        let retry = f
            .get("retry")
            .and_then(|v| f.errors.check("retry", RetryPolicy::parse(v)));
        let auto_dispatch = match f.get("autoDispatch") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                f.errors.add("autoDispatch", "must be true or false");
                false
            }
        };
        if auto_dispatch && executor.is_none() && task_type != TaskType::MultiStep {
            f.errors
                .add("autoDispatch", "needs an executor (or a multi_step task)");
        }
        let required_capability = f.parsed("requiredCapability", parse_capability);
        let steps_value = f.get("steps");
        let steps = parse_steps(&mut f.errors, steps_value);
        if task_type == TaskType::MultiStep && steps.is_empty() {
            f.errors
                .add("steps", "a multi_step task needs at least one step");
        }
        if task_type != TaskType::MultiStep && !steps.is_empty() {
            f.errors.add("steps", "only multi_step tasks have steps");
        }
        f.finish()?;
        Ok(Self {
            title: title.expect("validated"),
            description,
            task_type,
            priority,
            assigned_to,
            due_at,
            metadata,
            steps,
            executor,
            input,
            retry,
            auto_dispatch,
            required_capability,
        })
    }
}

fn parse_steps(errors: &mut FieldErrors, value: Option<&Value>) -> Vec<StepInput> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Value::Array(items) = value else {
        errors.add("steps", "must be an array");
        return Vec::new();
    };
    if items.len() > MAX_STEPS {
        errors.add(
            "steps",
            format!("at most {MAX_STEPS} steps (got {})", items.len()),
        );
        return Vec::new();
    }
    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |field: &str| format!("steps[{i}].{field}");
        let Value::Object(obj) = item else {
            errors.add(format!("steps[{i}]"), "must be an object");
            continue;
        };
        for key in obj.keys() {
            if !STEP_FIELDS.contains(&key.as_str()) {
                errors.add(
                    at(key),
                    format!("unknown field; allowed: {}", STEP_FIELDS.join(", ")),
                );
            }
        }
        let name = match obj.get("name").and_then(Value::as_str) {
            Some(n) if !n.trim().is_empty() && n.chars().count() <= MAX_STEP_NAME_CHARS => {
                n.to_owned()
            }
            _ => {
                errors.add(
                    at("name"),
                    format!("must be a string of 1–{MAX_STEP_NAME_CHARS} characters"),
                );
                continue;
            }
        };
        let order = match obj.get("order") {
            None => i as u32,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    errors.add(at("order"), "must be a non-negative integer");
                    continue;
                }
            },
        };
        let depends_on = match obj.get("dependsOn") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(deps)) if deps.iter().all(Value::is_string) => deps
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(_) => {
                errors.add(at("dependsOn"), "must be an array of step names");
                continue;
            }
        };
        let config = obj
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        if !config.is_object() {
            errors.add(at("config"), "must be an object");
            continue;
        }
        // Stored, and shown in step views, under the one name. A bad or doubled assignee is
        // left as sent, so that checking the config names the field the caller gave.
        let alias_is_valid = config
            .get(DEPRECATED_ASSIGNEE_FIELD)
            .and_then(Value::as_str)
            .is_some_and(|a| UserId::parse(a).is_ok());
        let config = match with_canonical_assignee(&config) {
            Ok((canonical, _)) if alias_is_valid => canonical.into_owned(),
            _ => config,
        };
        steps.push(StepInput {
            name,
            order,
            depends_on,
            config,
        });
    }
    // Indices below match the request only when every step parsed.
    if steps.len() == items.len() {
        check_step_graph(errors, &steps);
    }
    steps
}

const STEP_FIELDS: [&str; 4] = ["name", "order", "dependsOn", "config"];

/// A step's name is its id, so names must be unique, and every dependency must
/// name another step of the task without forming a cycle (or the chain never ends).
fn check_step_graph(errors: &mut FieldErrors, steps: &[StepInput]) {
    let mut names = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        if !names.insert(step.name.as_str()) {
            errors.add(
                format!("steps[{i}].name"),
                format!(
                    "'{}' is used by another step; names must be unique",
                    step.name
                ),
            );
        }
    }
    let mut graph_ok = names.len() == steps.len();
    for (i, step) in steps.iter().enumerate() {
        for dep in &step.depends_on {
            let problem = if *dep == step.name {
                "a step cannot depend on itself".to_owned()
            } else if !names.contains(dep.as_str()) {
                format!("'{dep}' is not the name of a step of this task")
            } else {
                continue;
            };
            errors.add(format!("steps[{i}].dependsOn"), problem);
            graph_ok = false;
        }
    }
    if !graph_ok {
        return;
    }
    // Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    let mut done: HashSet<&str> = HashSet::new();
    loop {
        let ready: Vec<&str> = steps
            .iter()
            .filter(|s| !done.contains(s.name.as_str()))
            .filter(|s| s.depends_on.iter().all(|d| done.contains(d.as_str())))
            .map(|s| s.name.as_str())
            .collect();
        if ready.is_empty() {
            break;
        }
        done.extend(ready);
    }
    if done.len() < steps.len() {
        let stuck: Vec<&str> = steps
            .iter()
            .map(|s| s.name.as_str())
            .filter(|n| !done.contains(n))
            .collect();
        errors.add(
            "steps",
            format!("dependsOn forms a cycle among: {}", stuck.join(", ")),
        );
    }
}

/// Fields a manager may change with PUT. Absent fields stay as they are;
/// `null` clears an optional field.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskPatch {
    pub title: Option<Title>,
    pub description: Option<Option<Description>>,
    pub priority: Option<Priority>,
    pub due_at: Option<Option<DateTime<Utc>>>,
    pub metadata: Option<Metadata>,
}

impl TaskPatch {
    pub fn parse(body: &Value) -> Result<Self, AppError> {
        let mut f = Fields::new(
            body,
            &["title", "description", "priority", "dueAt", "metadata"],
        )?;
        let present = |f: &Fields, k: &str| f.map.contains_key(k);
        let mut patch = TaskPatch::default();
        if present(&f, "title") {
            patch.title = f
                .required_string("title")
                .and_then(|t| f.errors.check("title", Title::parse(t)));
        }
        if present(&f, "description") {
            patch.description = Some(f.parsed("description", Description::parse));
        }
        if present(&f, "priority") {
            patch.priority = f.parsed("priority", str::parse);
            if patch.priority.is_none() {
                f.errors.add("priority", "must not be null");
            }
        }
        if present(&f, "dueAt") {
            patch.due_at = Some(f.timestamp("dueAt"));
        }
        if let Some(v) = f.map.get("metadata") {
            patch.metadata = f.errors.check("metadata", Metadata::parse(v.clone()));
        }
        if f.map.is_empty() {
            f.errors.add(
                "body",
                "give at least one of: title, description, priority, dueAt, metadata",
            );
        }
        f.finish()?;
        Ok(patch)
    }
}

/// `{"assignedTo": "user"}` (or the deprecated `{"assignee": "user"}`), or `{"auto": true}`
/// for the least-loaded online agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AssignInput {
    To(UserId),
    Auto,
}

impl AssignInput {
    pub fn parse(body: &Value) -> Result<Self, AppError> {
        parse_with_assignee(body, Self::parse_canonical)
    }

    fn parse_canonical(body: &Value) -> Result<Self, AppError> {
        let mut f = Fields::new(body, &[ASSIGNEE_FIELD, "auto"])?;
        let auto = match f.get("auto") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => {
                f.errors.add("auto", "must be true or false");
                false
            }
        };
        let assignee = f.parsed(ASSIGNEE_FIELD, UserId::parse);
        match (auto, &assignee) {
            (true, Some(_)) => f
                .errors
                .add(ASSIGNEE_FIELD, "give either assignedTo or auto, not both"),
            (false, None) if f.errors.is_empty() => f
                .errors
                .add(ASSIGNEE_FIELD, "is required (or give \"auto\": true)"),
            _ => {}
        }
        f.finish()?;
        Ok(match assignee {
            Some(user) => AssignInput::To(user),
            None => AssignInput::Auto,
        })
    }
}

/// How an assignee finishes a task: with a result, or with an error.
#[derive(Debug, Clone, PartialEq)]
pub enum CompleteInput {
    Succeeded(Option<Value>),
    Failed(String),
}

impl CompleteInput {
    pub fn parse(body: &Value) -> Result<Self, AppError> {
        let mut f = Fields::new(body, &["result", "error"])?;
        let result = f.get("result").cloned();
        let error = f.string("error");
        if let Some(e) = error {
            if e.trim().is_empty() || e.chars().count() > MAX_ERROR_CHARS {
                f.errors
                    .add("error", format!("must be 1–{MAX_ERROR_CHARS} characters"));
            }
        }
        if result.is_some() && error.is_some() {
            f.errors
                .add("error", "give either result or error, not both");
        }
        if let Some(r) = &result {
            let size = serde_json::to_vec(r).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_RESULT_BYTES {
                f.errors.add(
                    "result",
                    format!("must be at most {MAX_RESULT_BYTES} bytes as JSON (got {size})"),
                );
            } else if let Err(problem) = crate::domain::storable::check(r) {
                f.errors.add("result", problem);
            }
        }
        f.finish()?;
        Ok(match error {
            Some(e) => CompleteInput::Failed(e.to_owned()),
            None => CompleteInput::Succeeded(result),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttachmentInput {
    pub file_name: String,
    pub content_type: String,
}

impl AttachmentInput {
    pub fn parse(body: &Value) -> Result<Self, AppError> {
        let mut f = Fields::new(body, &["fileName", "contentType"])?;
        let file_name = f.required_string("fileName").and_then(|n| {
            let ok = !n.is_empty()
                && n.chars().count() <= MAX_FILE_NAME_CHARS
                && !n.contains(['/', '\\'])
                && !n.chars().any(char::is_control)
                && n != "."
                && n != "..";
            if ok {
                Some(n.to_owned())
            } else {
                f.errors.add("fileName", format!("must be a plain file name of 1–{MAX_FILE_NAME_CHARS} characters, without / or \\"));
                None
            }
        });
        let content_type = match f.string("contentType") {
            None => "application/octet-stream".to_owned(),
            Some(ct) if is_media_type(ct) => ct.to_owned(),
            Some(_) => {
                f.errors.add(
                    "contentType",
                    "must be a media type such as application/pdf",
                );
                String::new()
            }
        };
        f.finish()?;
        Ok(Self {
            file_name: file_name.expect("validated"),
            content_type,
        })
    }
}

fn is_media_type(value: &str) -> bool {
    let mut parts = value.splitn(2, '/');
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    matches!((parts.next(), parts.next()), (Some(a), Some(b)) if token(a) && token(b))
}

/// Parses the list query string (`status`, `priority`, `type`, `assignedTo` or its deprecated
/// alias `assignee`, `dueBefore`, `includeArchived`, `limit`, `cursor`).
pub fn parse_task_query(params: &HashMap<String, String>) -> Result<TaskQuery, AppError> {
    let allowed = [
        "status",
        "priority",
        "type",
        ASSIGNEE_FIELD,
        "dueBefore",
        "includeArchived",
        "limit",
        "cursor",
    ];
    let mut errors = FieldErrors::new();
    for key in params.keys() {
        if !allowed.contains(&key.as_str()) && key != DEPRECATED_ASSIGNEE_FIELD {
            errors.add(
                key.clone(),
                format!("unknown query parameter; allowed: {}", allowed.join(", ")),
            );
        }
    }
    let get = |k: &str| params.get(k).map(String::as_str);
    let mut query = TaskQuery {
        limit: DEFAULT_PAGE_SIZE,
        ..TaskQuery::default()
    };
    if let Some(s) = get("status") {
        query.status = errors.check("status", s.parse::<TaskStatus>());
    }
    if let Some(p) = get("priority") {
        query.priority = errors.check("priority", p.parse());
    }
    if let Some(t) = get("type") {
        query.task_type = errors.check("type", t.parse());
    }
    match (get(ASSIGNEE_FIELD), get(DEPRECATED_ASSIGNEE_FIELD)) {
        (Some(_), Some(_)) => errors.add(
            DEPRECATED_ASSIGNEE_FIELD,
            "give assignedTo only; assignee is its deprecated alias",
        ),
        (Some(a), None) => query.assignee = errors.check(ASSIGNEE_FIELD, UserId::parse(a)),
        (None, Some(a)) => {
            query.assignee = errors.check(DEPRECATED_ASSIGNEE_FIELD, UserId::parse(a))
        }
        (None, None) => {}
    }
    if let Some(d) = get("dueBefore") {
        query.due_before = errors.check("dueBefore", parse_timestamp(d));
    }
    if let Some(b) = get("includeArchived") {
        query.include_archived = errors
            .check(
                "includeArchived",
                match b {
                    "true" => Ok(true),
                    "false" => Ok(false),
                    _ => Err("must be true or false".to_owned()),
                },
            )
            .unwrap_or(false);
    }
    if let Some(l) = get("limit") {
        query.limit = errors
            .check(
                "limit",
                match l.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
                    _ => Err(format!("must be an integer from 1 to {MAX_PAGE_SIZE}")),
                },
            )
            .unwrap_or(DEFAULT_PAGE_SIZE);
    }
    if let Some(c) = get("cursor") {
        if c.is_empty() || c.len() > 2048 {
            errors.add("cursor", "is not a cursor returned by this API");
        } else {
            query.cursor = Some(c.to_owned());
        }
    }
    if query.status == Some(TaskStatus::Archived) {
        query.include_archived = true;
    }
    errors.into_result()?;
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields_of(err: AppError) -> Vec<String> {
        match err {
            AppError::Validation(f) => f.iter().map(|(k, _)| k.clone()).collect(),
            other => panic!("expected validation error, got {other:?}"),
        }
    }

    #[test]
    fn new_task_defaults() {
        let t = NewTaskInput::parse(&json!({"title": "Write report"})).unwrap();
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.task_type, TaskType::Simple);
        assert!(t.metadata.as_map().is_empty());
    }

    #[test]
    fn new_task_names_every_bad_field() {
        let err = NewTaskInput::parse(&json!({
            "title": "", "priority": "urgent", "dueAt": "tomorrow", "metadata": [1], "colour": "red"
        }))
        .unwrap_err();
        assert_eq!(
            fields_of(err),
            ["colour", "dueAt", "metadata", "priority", "title"]
        );
    }

    #[test]
    fn new_task_requires_a_title_and_an_object() {
        assert_eq!(
            fields_of(NewTaskInput::parse(&json!({})).unwrap_err()),
            ["title"]
        );
        assert_eq!(
            fields_of(NewTaskInput::parse(&json!("x")).unwrap_err()),
            ["body"]
        );
    }

    #[test]
    fn steps_only_on_multi_step_tasks() {
        let err =
            NewTaskInput::parse(&json!({"title": "t", "steps": [{"name": "a"}]})).unwrap_err();
        assert_eq!(fields_of(err), ["steps"]);
        let ok = NewTaskInput::parse(&json!({"title": "t", "type": "multi_step",
            "steps": [{"name": "a"}, {"name": "b", "dependsOn": ["a"]}]}))
        .unwrap();
        assert_eq!(ok.steps[1].depends_on, ["a"]);
        assert_eq!(ok.steps[1].order, 1);
    }

    #[test]
    fn steps_must_form_a_valid_graph() {
        let parse = |steps: Value| {
            NewTaskInput::parse(&json!({"title": "t", "type": "multi_step", "steps": steps}))
        };
        assert!(parse(json!([{"name": "a"}, {"name": "b", "dependsOn": ["a"]}])).is_ok());
        assert_eq!(
            fields_of(parse(json!([{"name": "a", "depends_on": ["b"]}])).unwrap_err()),
            ["steps[0].depends_on"]
        );
        assert_eq!(
            fields_of(parse(json!([{"name": "a"}, {"name": "a"}])).unwrap_err()),
            ["steps[1].name"]
        );
        assert_eq!(
            fields_of(
                parse(
                    json!([{"name": "a", "dependsOn": ["a"]}, {"name": "b", "dependsOn": ["x"]}])
                )
                .unwrap_err()
            ),
            ["steps[0].dependsOn", "steps[1].dependsOn"]
        );
        assert_eq!(
            fields_of(
                parse(json!([
                    {"name": "a", "dependsOn": ["c"]},
                    {"name": "b", "dependsOn": ["a"]},
                    {"name": "c", "dependsOn": ["b"]},
                    {"name": "d"}
                ]))
                .unwrap_err()
            ),
            ["steps"]
        );
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let p = TaskPatch::parse(&json!({"description": null})).unwrap();
        assert_eq!(p.description, Some(None));
        assert_eq!(p.due_at, None);
        assert!(TaskPatch::parse(&json!({})).is_err());
        assert!(TaskPatch::parse(&json!({"priority": null})).is_err());
    }

    #[test]
    fn complete_takes_result_or_error_not_both() {
        assert_eq!(
            CompleteInput::parse(&json!({"result": {"ok": 1}})).unwrap(),
            CompleteInput::Succeeded(Some(json!({"ok": 1})))
        );
        assert_eq!(
            CompleteInput::parse(&json!({"error": "disk full"})).unwrap(),
            CompleteInput::Failed("disk full".into())
        );
        assert!(CompleteInput::parse(&json!({"result": 1, "error": "x"})).is_err());
    }

    #[test]
    fn attachment_names_cannot_escape_their_folder() {
        assert!(AttachmentInput::parse(&json!({"fileName": "report.pdf"})).is_ok());
        assert!(AttachmentInput::parse(&json!({"fileName": "../x"})).is_err());
        assert!(AttachmentInput::parse(&json!({"fileName": "a", "contentType": "nope"})).is_err());
    }

    #[test]
    fn query_parsing() {
        let params: HashMap<String, String> = [("status", "pending"), ("limit", "10")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let q = parse_task_query(&params).unwrap();
        assert_eq!(q.status, Some(TaskStatus::Pending));
        assert_eq!(q.limit, 10);
        let bad: HashMap<String, String> = [("limit", "1000"), ("sort", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(
            fields_of(parse_task_query(&bad).unwrap_err()),
            ["limit", "sort"]
        );
    }
}
