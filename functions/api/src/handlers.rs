//! One function per route: parse the request, call the task service, shape the response.

use crate::request::{idempotency_key, if_match, json_body, query_params};
use crate::response::{accepted, json, json_with_etag, no_content};
use crate::routes::Route;
use crate::{openapi, App};
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
use shared::domain::limits::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use shared::domain::{Caller, StepStatus, Task, TaskStep};
use shared::service::input::parse_task_query;
use shared::service::{AssignInput, AttachmentInput, CompleteInput, QueueView, TaskPatch};
use shared::AppError;

type Reply = Result<Response<Body>, AppError>;

pub async fn dispatch(
    app: &App,
    route: Route,
    caller: Option<&Caller>,
    request: &Request,
) -> Reply {
    let Some(caller) = caller else {
        return match route {
            Route::OpenApi => Ok(json(200, openapi::document())),
            _ => Err(AppError::Unauthorized),
        };
    };
    let tasks = &app.services.tasks;
    match route {
        Route::OpenApi => Ok(json(200, openapi::document())),
        Route::ListTasks => {
            let query = parse_task_query(&query_params(request))?;
            let page = tasks.list(caller, &query).await?;
            Ok(json(
                200,
                &json!({"items": page.items, "nextCursor": page.next_cursor}),
            ))
        }
        Route::CreateTask => {
            let body = json_body(request, false)?;
            let key = idempotency_key(request)?;
            let created = tasks.create(caller, &body, key.as_deref()).await?;
            let etag = format!("\"{}\"", created.task["version"]);
            let mut response = json_with_etag(201, &created.task, &etag);
            if created.replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", "true".parse().expect("valid header"));
            }
            if let Some(id) = created.task["id"].as_str() {
                if let Ok(location) = format!("/api/tasks/{id}").parse() {
                    response.headers_mut().insert("location", location);
                }
            }
            Ok(response)
        }
        Route::GetTask(id) => task_reply(200, &tasks.get(caller, id).await?),
        Route::UpdateTask(id) => {
            let patch = TaskPatch::parse(&json_body(request, false)?)?;
            task_reply(
                200,
                &tasks.update(caller, id, &patch, if_match(request)?).await?,
            )
        }
        Route::DeleteTask(id) => {
            let params = query_params(request);
            match params.get("hard").map(String::as_str) {
                Some("true") => {
                    tasks.hard_delete(caller, id, if_match(request)?).await?;
                    Ok(no_content())
                }
                None | Some("false") => {
                    task_reply(200, &tasks.archive(caller, id, if_match(request)?).await?)
                }
                Some(_) => Err(invalid_field("hard", "must be true or false")),
            }
        }
        Route::AssignTask(id) => {
            let input = AssignInput::parse(&json_body(request, false)?)?;
            task_reply(
                200,
                &tasks.assign(caller, id, &input, if_match(request)?).await?,
            )
        }
        Route::StartTask(id) => {
            task_reply(200, &tasks.start(caller, id, if_match(request)?).await?)
        }
        Route::CompleteTask(id) => {
            let outcome = CompleteInput::parse(&json_body(request, true)?)?;
            task_reply(
                200,
                &tasks
                    .complete(caller, id, &outcome, if_match(request)?)
                    .await?,
            )
        }
        Route::CancelTask(id) => {
            task_reply(200, &tasks.cancel(caller, id, if_match(request)?).await?)
        }
        Route::TaskSteps(id) => {
            let from = match query_params(request).get("cursor") {
                None => 0,
                // 1-16 digits, as the document says: `usize::from_str` alone would
                // also take a sign and any number of leading zeros.
                Some(cursor)
                    if cursor.len() > 16 || !cursor.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    return Err(invalid_field(
                        "cursor",
                        "is not a cursor returned by this API for this query",
                    ))
                }
                Some(cursor) => cursor.parse::<usize>().map_err(|_| {
                    invalid_field(
                        "cursor",
                        "is not a cursor returned by this API for this query",
                    )
                })?,
            };
            let (task, steps) = tasks.steps(caller, id).await?;
            if from > steps.len() {
                return Err(invalid_field(
                    "cursor",
                    "is not a cursor returned by this API for this query",
                ));
            }
            Ok(json(200, &steps_body(&task, &steps, from)))
        }
        Route::RetryTask(id) => {
            task_reply(200, &tasks.retry(caller, id, if_match(request)?).await?)
        }
        Route::CompleteStep(id, step) => {
            let outcome = CompleteInput::parse(&json_body(request, true)?)?;
            let step = tasks.complete_step(caller, id, &step, &outcome).await?;
            Ok(json(
                200,
                &serde_json::to_value(step).map_err(AppError::internal)?,
            ))
        }
        Route::CreateBatch => {
            let view = app
                .services
                .batches
                .create(caller, &json_body(request, false)?)
                .await?;
            let location = format!("/api/batches/{}", view.batch.id);
            Ok(accepted(
                &serde_json::to_value(view).map_err(AppError::internal)?,
                &location,
            ))
        }
        Route::ListBatches => {
            let query = shared::service::batches::BatchQuery::parse(&query_params(request))?;
            let page = app.services.batches.list(caller, &query).await?;
            Ok(json(
                200,
                &json!({"items": page.items, "nextCursor": page.next_cursor}),
            ))
        }
        Route::BatchUploadUrl => {
            let upload = app
                .services
                .batches
                .upload_url(caller, &json_body(request, false)?)
                .await?;
            Ok(json(201, &upload))
        }
        Route::GetBatch(id) => {
            let view = app.services.batches.get(caller, id).await?;
            Ok(json(
                200,
                &serde_json::to_value(view).map_err(AppError::internal)?,
            ))
        }
        Route::BatchFailures(id) => {
            let params = query_params(request);
            let limit = match params.get("limit") {
                None => 100,
                Some(l) => match l.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => return Err(invalid_field("limit", "must be an integer from 1 to 1000")),
                },
            };
            let page = app
                .services
                .batches
                .failures(caller, id, params.get("cursor").map(String::as_str), limit)
                .await?;
            Ok(json(
                200,
                &json!({"items": page.items, "nextCursor": page.next_cursor}),
            ))
        }
        Route::RetryFailedItems(id) => {
            let view = app.services.batches.retry_failed(caller, id).await?;
            Ok(accepted(
                &serde_json::to_value(view).map_err(AppError::internal)?,
                &format!("/api/batches/{id}"),
            ))
        }
        Route::ListAgents => {
            let params = query_params(request);
            let limit = match params.get("limit") {
                None => DEFAULT_PAGE_SIZE,
                Some(l) => match l.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
                    _ => {
                        return Err(invalid_field(
                            "limit",
                            &format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                        ))
                    }
                },
            };
            let page = app
                .services
                .agents
                .list(caller, params.get("cursor").map(String::as_str), limit)
                .await?;
            Ok(json(
                200,
                &json!({"items": page.items, "nextCursor": page.next_cursor}),
            ))
        }
        Route::PutAgent(id) => {
            let agent = app
                .services
                .agents
                .heartbeat(caller, &id, &json_body(request, false)?)
                .await?;
            Ok(json(
                200,
                &serde_json::to_value(agent).map_err(AppError::internal)?,
            ))
        }
        Route::Queues => {
            let body = match app.services.queues.view(caller).await? {
                QueueView::System(tiers) => {
                    json!({"scope": "system", "tiers": tiers, "generatedAt": chrono::Utc::now()})
                }
                QueueView::Agency(agency, tiers) => json!({
                    "scope": "agency",
                    "agencyId": agency,
                    "tiers": tiers,
                    "generatedAt": chrono::Utc::now(),
                }),
            };
            Ok(json(200, &body))
        }
        Route::AddAttachment(id) => {
            let input = AttachmentInput::parse(&json_body(request, false)?)?;
            let added = tasks.add_attachment(caller, id, &input).await?;
            let body = json!({
                "attachment": added.attachment,
                "upload": {
                    "url": added.upload_url,
                    "method": "PUT",
                    "headers": {"Content-Type": added.attachment.content_type},
                    "expiresAt": added.expires_at,
                },
                "taskVersion": added.task.version,
            });
            Ok(json_with_etag(201, &body, &added.task.etag()))
        }
        Route::DownloadAttachment(id, attachment_id) => {
            let download = tasks
                .attachment_download(caller, id, &attachment_id)
                .await?;
            let body = json!({
                "attachment": download.attachment,
                "download": {
                    "url": download.url,
                    "method": "GET",
                    "expiresAt": download.expires_at,
                },
            });
            Ok(json(200, &body))
        }
        Route::ListSchedules
        | Route::CreateSchedule
        | Route::GetSchedule(_)
        | Route::UpdateSchedule(_)
        | Route::DeleteSchedule(_)
        | Route::PauseSchedule(_)
        | Route::ResumeSchedule(_) => crate::schedules::dispatch(app, route, caller, request).await,
    }
}

fn task_reply(status: u16, task: &Task) -> Reply {
    let body = serde_json::to_value(task).map_err(AppError::internal)?;
    Ok(json_with_etag(status, &body, &task.etag()))
}

fn invalid_field(field: &str, problem: &str) -> AppError {
    let mut errors = shared::FieldErrors::new();
    errors.add(field, problem);
    AppError::Validation(errors)
}

/// Progress over all of a task's steps, and the steps themselves from index `from` on, as
/// many as fit in a page's byte budget: 100 steps with results at their limit would pass
/// Lambda's 6 MB response. `nextCursor` is the index of the first step left out.
fn steps_body(task: &Task, steps: &[TaskStep], from: usize) -> Value {
    let count = |status: StepStatus| steps.iter().filter(|s| s.status == status).count();
    let total = steps.len();
    let rest = &steps[from.min(total)..];
    let page = &rest[..shared::domain::limits::items_within_budget(rest)];
    let next_cursor = (from + page.len() < total).then(|| (from + page.len()).to_string());
    let done =
        count(StepStatus::Completed) + count(StepStatus::Failed) + count(StepStatus::Skipped);
    let percent = if total == 0 {
        0.0
    } else {
        (done as f64 * 1000.0 / total as f64).round() / 10.0
    };
    json!({
        "taskId": task.id,
        "status": task.status,
        "progress": {
            "total": total,
            "pending": count(StepStatus::Pending),
            "running": count(StepStatus::Running),
            "waiting": count(StepStatus::Waiting),
            "completed": count(StepStatus::Completed),
            "failed": count(StepStatus::Failed),
            "skipped": count(StepStatus::Skipped),
            "percent": percent,
        },
        "steps": page,
        "nextCursor": next_cursor,
    })
}
