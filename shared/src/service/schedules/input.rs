//! `POST`/`PUT /api/schedules` bodies: every bad field named at once, the task template
//! checked as `POST /api/tasks` would check it, its problems named under `template.`.

use super::super::TaskService;
use crate::domain::schedule::{parse_time_zone, Expression, OverlapPolicy};
use crate::error::{AppError, FieldErrors};
use crate::service::input::parse_timestamp;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// The longest schedule name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The metadata keys a firing adds to its task, linking it to its schedule.
pub const SCHEDULE_ID_KEY: &str = "scheduleId";
pub const SCHEDULED_AT_KEY: &str = "scheduledAt";

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleInput {
    pub name: String,
    pub expression: String,
    pub time_zone: String,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub overlap_policy: OverlapPolicy,
    pub template: Value,
}

const FIELDS: &[&str] = &[
    "name",
    "expression",
    "timeZone",
    "startAt",
    "endAt",
    "overlapPolicy",
    "template",
];

impl ScheduleInput {
    pub fn parse(body: &Value, tasks: &TaskService) -> Result<Self, AppError> {
        let mut errors = FieldErrors::new();
        let Value::Object(map) = body else {
            errors.add("body", "must be a JSON object");
            return Err(AppError::Validation(errors));
        };
        for key in map.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
            errors.add(
                key.clone(),
                format!("is not a field; allowed: {}", FIELDS.join(", ")),
            );
        }
        let text = |errors: &mut FieldErrors, field: &str| match map.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                errors.add(field, "must be a string");
                None
            }
        };
        let name = match text(&mut errors, "name") {
            Some(n) if !n.trim().is_empty() && n.chars().count() <= MAX_NAME_CHARS => Some(n),
            Some(_) => {
                errors.add("name", format!("must be 1–{MAX_NAME_CHARS} characters"));
                None
            }
            None if !map.contains_key("name") || map["name"].is_null() => {
                errors.add("name", "is required");
                None
            }
            None => None,
        };
        let expression = match text(&mut errors, "expression") {
            Some(raw) => match Expression::parse(&raw) {
                Ok(_) => Some(raw.trim().to_owned()),
                Err(problem) => {
                    errors.add("expression", problem.0);
                    None
                }
            },
            None => {
                if map.get("expression").is_none_or(Value::is_null) {
                    errors.add("expression", "is required, e.g. cron(0 6 ? * MON-FRI *)");
                }
                None
            }
        };
        let time_zone = text(&mut errors, "timeZone").unwrap_or_else(|| "UTC".into());
        if let Err(problem) = parse_time_zone(&time_zone) {
            errors.add("timeZone", problem);
        }
        let mut stamp = |field: &str| {
            let raw = text(&mut errors, field)?;
            errors.check(field, parse_timestamp(&raw))
        };
        let start_at = stamp("startAt");
        let end_at = stamp("endAt");
        if let (Some(start), Some(end)) = (start_at, end_at) {
            if end <= start {
                errors.add("endAt", "must be after startAt");
            }
        }
        let overlap_policy = match text(&mut errors, "overlapPolicy") {
            Some(raw) => errors
                .check("overlapPolicy", raw.parse())
                .unwrap_or_default(),
            None => OverlapPolicy::default(),
        };
        let template = match map.get("template") {
            Some(Value::Object(template)) => check_template(template, tasks, &mut errors),
            Some(_) => {
                errors.add("template", "must be a POST /api/tasks body (a JSON object)");
                None
            }
            None => {
                errors.add("template", "is required: the task each firing creates");
                None
            }
        };
        errors.into_result()?;
        match (name, expression, template) {
            (Some(name), Some(expression), Some(template)) => Ok(Self {
                name,
                expression,
                time_zone,
                start_at,
                end_at,
                overlap_policy,
                template,
            }),
            _ => Err(AppError::internal(
                "schedule input: a missing field without an error",
            )),
        }
    }
}

/// Checks the template as a task body with the link a firing adds (so a template whose
/// metadata leaves no room for it is refused now, not at 06:00 on a Monday).
fn check_template(
    template: &Map<String, Value>,
    tasks: &TaskService,
    errors: &mut FieldErrors,
) -> Option<Value> {
    let mut ok = true;
    if let Some(Value::Object(metadata)) = template.get("metadata") {
        for key in [SCHEDULE_ID_KEY, SCHEDULED_AT_KEY] {
            if metadata.contains_key(key) {
                errors.add(format!("template.metadata.{key}"), "is set by each firing");
                ok = false;
            }
        }
    }
    // A metadata that is not an object is refused as the template has it.
    let sample = match template.get("metadata") {
        None | Some(Value::Null) | Some(Value::Object(_)) => with_link(
            template,
            "01J00000000000000000000000",
            "2199-12-31T23:59:00Z",
        ),
        Some(_) => Value::Object(template.clone()),
    };
    if let Err(err) = tasks.check_new(&sample) {
        match err {
            AppError::Validation(problems) => {
                for (field, problem) in problems.iter() {
                    errors.add(format!("template.{field}"), problem.clone());
                }
            }
            other => errors.add("template", other.to_string()),
        }
        ok = false;
    }
    ok.then(|| Value::Object(template.clone()))
}

/// The task body of one firing: the template with the schedule's id and the firing's time in
/// its metadata.
pub fn with_link(template: &Map<String, Value>, schedule_id: &str, scheduled_at: &str) -> Value {
    let mut body = template.clone();
    let mut metadata = match body.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    metadata.insert(SCHEDULE_ID_KEY.into(), Value::String(schedule_id.into()));
    metadata.insert(SCHEDULED_AT_KEY.into(), Value::String(scheduled_at.into()));
    body.insert("metadata".into(), Value::Object(metadata));
    Value::Object(body)
}
