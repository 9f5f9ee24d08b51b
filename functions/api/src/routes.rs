//! The route table. `ROUTES` is also what the OpenAPI test compares against.

use lambda_http::http::Method;
use lambda_http::{Request, RequestExt};
use shared::domain::{ScheduleId, TaskId};
use shared::AppError;

/// Every (method, path template) the API serves, in OpenAPI path syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/openapi.json"),
    ("GET", "/api/tasks"),
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks/{id}"),
    ("PUT", "/api/tasks/{id}"),
    ("DELETE", "/api/tasks/{id}"),
    ("POST", "/api/tasks/{id}/assign"),
    ("POST", "/api/tasks/{id}/start"),
    ("POST", "/api/tasks/{id}/complete"),
    ("POST", "/api/tasks/{id}/cancel"),
    ("GET", "/api/tasks/{id}/steps"),
    ("POST", "/api/tasks/{id}/attachments"),
    ("GET", "/api/tasks/{id}/attachments/{attachmentId}"),
    ("POST", "/api/tasks/{id}/retry"),
    ("POST", "/api/tasks/{id}/steps/{stepId}/complete"),
    ("GET", "/api/batches"),
    ("POST", "/api/batches"),
    ("POST", "/api/batches/uploads"),
    ("GET", "/api/batches/{id}"),
    ("GET", "/api/batches/{id}/failures"),
    ("POST", "/api/batches/{id}/retry-failed"),
    ("GET", "/api/agents"),
    ("PUT", "/api/agents/{id}"),
    ("GET", "/api/queues"),
    ("GET", "/api/schedules"),
    ("POST", "/api/schedules"),
    ("GET", "/api/schedules/{id}"),
    ("PUT", "/api/schedules/{id}"),
    ("DELETE", "/api/schedules/{id}"),
    ("POST", "/api/schedules/{id}/pause"),
    ("POST", "/api/schedules/{id}/resume"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    OpenApi,
    ListTasks,
    CreateTask,
    GetTask(TaskId),
    UpdateTask(TaskId),
    DeleteTask(TaskId),
    AssignTask(TaskId),
    StartTask(TaskId),
    CompleteTask(TaskId),
    CancelTask(TaskId),
    TaskSteps(TaskId),
    AddAttachment(TaskId),
    /// The raw attachment id; the task service looks it up among the task's attachments.
    DownloadAttachment(TaskId, String),
    RetryTask(TaskId),
    CompleteStep(TaskId, String),
    CreateBatch,
    ListBatches,
    BatchUploadUrl,
    GetBatch(TaskId),
    BatchFailures(TaskId),
    RetryFailedItems(TaskId),
    ListAgents,
    /// The raw agent id; validated by the agent service.
    PutAgent(String),
    Queues,
    ListSchedules,
    CreateSchedule,
    GetSchedule(ScheduleId),
    UpdateSchedule(ScheduleId),
    DeleteSchedule(ScheduleId),
    PauseSchedule(ScheduleId),
    ResumeSchedule(ScheduleId),
}

impl Route {
    pub fn resolve(request: &Request) -> Result<Route, AppError> {
        Self::match_path(request.method(), &request_path(request))
    }

    pub fn match_path(method: &Method, path: &str) -> Result<Route, AppError> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let no_route = || AppError::NoRoute {
            method: method.to_string(),
            path: path.to_owned(),
        };
        let wrong_method = || AppError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_owned(),
        };
        // An id that cannot exist is simply an unknown task.
        let task_id =
            |raw: &str| TaskId::parse(raw).map_err(|_| AppError::NotFound { what: "task" });
        let batch_id =
            |raw: &str| TaskId::parse(raw).map_err(|_| AppError::NotFound { what: "batch" });
        let schedule_id =
            |raw: &str| ScheduleId::parse(raw).map_err(|_| AppError::NotFound { what: "schedule" });
        let m = method.as_str();
        match segments.as_slice() {
            ["api", "openapi.json"] => match m {
                "GET" => Ok(Route::OpenApi),
                _ => Err(wrong_method()),
            },
            ["api", "tasks"] => match m {
                "GET" => Ok(Route::ListTasks),
                "POST" => Ok(Route::CreateTask),
                _ => Err(wrong_method()),
            },
            ["api", "tasks", id] => match m {
                "GET" => Ok(Route::GetTask(task_id(id)?)),
                "PUT" => Ok(Route::UpdateTask(task_id(id)?)),
                "DELETE" => Ok(Route::DeleteTask(task_id(id)?)),
                _ => Err(wrong_method()),
            },
            ["api", "tasks", id, action] => {
                let route: fn(TaskId) -> Route = match (*action, m) {
                    ("assign", "POST") => Route::AssignTask,
                    ("start", "POST") => Route::StartTask,
                    ("complete", "POST") => Route::CompleteTask,
                    ("cancel", "POST") => Route::CancelTask,
                    ("steps", "GET") => Route::TaskSteps,
                    ("attachments", "POST") => Route::AddAttachment,
                    ("retry", "POST") => Route::RetryTask,
                    (
                        "assign" | "start" | "complete" | "cancel" | "steps" | "attachments"
                        | "retry",
                        _,
                    ) => return Err(wrong_method()),
                    _ => return Err(no_route()),
                };
                Ok(route(task_id(id)?))
            }
            ["api", "tasks", id, "attachments", attachment] => match m {
                "GET" => Ok(Route::DownloadAttachment(
                    task_id(id)?,
                    decode_segment(attachment)?,
                )),
                _ => Err(wrong_method()),
            },
            ["api", "tasks", id, "steps", step, "complete"] => match m {
                "POST" => Ok(Route::CompleteStep(task_id(id)?, decode_segment(step)?)),
                _ => Err(wrong_method()),
            },
            ["api", "batches"] => match m {
                "POST" => Ok(Route::CreateBatch),
                "GET" => Ok(Route::ListBatches),
                _ => Err(wrong_method()),
            },
            ["api", "batches", "uploads"] => match m {
                "POST" => Ok(Route::BatchUploadUrl),
                _ => Err(wrong_method()),
            },
            ["api", "batches", id] => match m {
                "GET" => Ok(Route::GetBatch(batch_id(id)?)),
                _ => Err(wrong_method()),
            },
            ["api", "batches", id, "failures"] => match m {
                "GET" => Ok(Route::BatchFailures(batch_id(id)?)),
                _ => Err(wrong_method()),
            },
            ["api", "batches", id, "retry-failed"] => match m {
                "POST" => Ok(Route::RetryFailedItems(batch_id(id)?)),
                _ => Err(wrong_method()),
            },
            ["api", "agents"] => match m {
                "GET" => Ok(Route::ListAgents),
                _ => Err(wrong_method()),
            },
            ["api", "agents", id] => match m {
                "PUT" => Ok(Route::PutAgent(decode_segment(id)?)),
                _ => Err(wrong_method()),
            },
            ["api", "queues"] => match m {
                "GET" => Ok(Route::Queues),
                _ => Err(wrong_method()),
            },
            ["api", "schedules"] => match m {
                "GET" => Ok(Route::ListSchedules),
                "POST" => Ok(Route::CreateSchedule),
                _ => Err(wrong_method()),
            },
            ["api", "schedules", id] => match m {
                "GET" => Ok(Route::GetSchedule(schedule_id(id)?)),
                "PUT" => Ok(Route::UpdateSchedule(schedule_id(id)?)),
                "DELETE" => Ok(Route::DeleteSchedule(schedule_id(id)?)),
                _ => Err(wrong_method()),
            },
            ["api", "schedules", id, action @ ("pause" | "resume")] => match m {
                "POST" if *action == "pause" => Ok(Route::PauseSchedule(schedule_id(id)?)),
                "POST" => Ok(Route::ResumeSchedule(schedule_id(id)?)),
                _ => Err(wrong_method()),
            },
            _ => Err(no_route()),
        }
    }
}

/// Names in paths arrive percent-encoded: a step named `a/b` is `a%2Fb`.
fn decode_segment(raw: &str) -> Result<String, AppError> {
    match percent_encoding::percent_decode_str(raw).decode_utf8() {
        Ok(decoded) => Ok(decoded.into_owned()),
        Err(_) => {
            let mut errors = shared::FieldErrors::new();
            errors.add("path", format!("'{raw}' is not UTF-8 once percent-decoded"));
            Err(AppError::Validation(errors))
        }
    }
}

/// The methods `ROUTES` serves on a concrete path, for the `Allow` header of a 405.
/// A literal segment beats a placeholder, as in routing: `/api/batches/uploads` is not
/// `/api/batches/{id}`.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let matching: Vec<(&'static str, usize)> = ROUTES
        .iter()
        .filter_map(|(method, template)| {
            let parts: Vec<&str> = template.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| part.starts_with('{') || part == segment);
            let literals = parts.iter().filter(|part| !part.starts_with('{')).count();
            fits.then_some((*method, literals))
        })
        .collect();
    let most_literal = matching.iter().map(|(_, literals)| *literals).max();
    matching
        .into_iter()
        .filter(|(_, literals)| Some(*literals) == most_literal)
        .map(|(method, _)| method)
        .collect()
}

/// Paths served without an identity (template.yaml gives them `Authorizer: NONE`).
pub fn is_public_path(request: &Request) -> bool {
    request.method() == Method::GET
        && request_path(request).trim_end_matches('/') == "/api/openapi.json"
}

/// The path without the API Gateway stage prefix.
pub fn request_path(request: &Request) -> String {
    let raw = request.raw_http_path();
    if raw.is_empty() {
        request.uri().path().to_owned()
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_route_resolves() {
        let id = TaskId::generate().to_string();
        for (method, template) in ROUTES {
            let path = template.replace("{id}", &id);
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(Route::match_path(&method, &path).is_ok(), "{method} {path}");
        }
    }

    #[test]
    fn names_in_paths_are_percent_decoded() {
        let id = TaskId::generate();
        assert_eq!(
            Route::match_path(
                &Method::POST,
                &format!("/api/tasks/{id}/steps/load%2Fclean%20up/complete")
            )
            .unwrap(),
            Route::CompleteStep(id, "load/clean up".into())
        );
        assert_eq!(
            Route::match_path(&Method::PUT, "/api/agents/bot%2D1").unwrap(),
            Route::PutAgent("bot-1".into())
        );
        let bad = Route::match_path(&Method::PUT, "/api/agents/%FF").unwrap_err();
        assert_eq!(bad.status_code(), 400);
    }

    #[test]
    fn unknown_paths_methods_and_ids() {
        assert_eq!(
            Route::match_path(&Method::GET, "/api/nope")
                .unwrap_err()
                .status_code(),
            404
        );
        assert_eq!(
            Route::match_path(&Method::PATCH, "/api/tasks")
                .unwrap_err()
                .status_code(),
            405
        );
        assert_eq!(allowed_methods("/api/tasks/"), ["GET", "POST"]);
        assert_eq!(
            allowed_methods("/api/tasks/01JD0000000000000000000000"),
            ["GET", "PUT", "DELETE"]
        );
        assert_eq!(
            allowed_methods("/api/tasks/01JD0000000000000000000000/start"),
            ["POST"]
        );
        assert_eq!(allowed_methods("/api/batches/uploads"), ["POST"]);
        assert_eq!(
            allowed_methods("/api/batches/01JD0000000000000000000000"),
            ["GET"]
        );
        assert_eq!(
            Route::match_path(&Method::GET, "/api/tasks/not-an-id")
                .unwrap_err()
                .status_code(),
            404
        );
    }
}
