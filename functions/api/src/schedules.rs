//! The `/api/schedules` routes: parse, call the schedule service, reply with the schedule's
//! version as its ETag.

use crate::request::{if_match, json_body};
use crate::response::{json, json_with_etag, no_content};
use crate::routes::Route;
use crate::App;
use lambda_http::{Body, Request, Response};
use serde_json::json;
use shared::domain::schedule::ScheduleState;
use shared::domain::Caller;
use shared::service::schedules::ScheduleView;
use shared::AppError;

pub async fn dispatch(
    app: &App,
    route: Route,
    caller: &Caller,
    request: &Request,
) -> Result<Response<Body>, AppError> {
    let schedules = app.schedules.as_ref().ok_or_else(|| {
        AppError::Unavailable("schedules are not configured on this deployment".into())
    })?;
    match route {
        Route::ListSchedules => {
            let items = schedules.list(caller).await?;
            Ok(json(200, &json!({ "items": items })))
        }
        Route::CreateSchedule => {
            let view = schedules
                .create(caller, &json_body(request, false)?)
                .await?;
            let mut response = reply(201, &view);
            if let Ok(location) = format!("/api/schedules/{}", view.schedule.id).parse() {
                response.headers_mut().insert("location", location);
            }
            Ok(response)
        }
        Route::GetSchedule(id) => Ok(reply(200, &schedules.get(caller, id).await?)),
        Route::UpdateSchedule(id) => {
            let body = json_body(request, false)?;
            let view = schedules
                .update(caller, id, &body, if_match(request)?)
                .await?;
            Ok(reply(200, &view))
        }
        Route::DeleteSchedule(id) => {
            schedules.delete(caller, id, if_match(request)?).await?;
            Ok(no_content())
        }
        Route::PauseSchedule(id) | Route::ResumeSchedule(id) => {
            let state = if matches!(route, Route::PauseSchedule(_)) {
                ScheduleState::Paused
            } else {
                ScheduleState::Enabled
            };
            let view = schedules
                .set_state(caller, id, state, if_match(request)?)
                .await?;
            Ok(reply(200, &view))
        }
        _ => Err(AppError::internal("not a schedule route")),
    }
}

fn reply(status: u16, view: &ScheduleView) -> Response<Body> {
    json_with_etag(
        status,
        &view.to_json(),
        &format!("\"{}\"", view.schedule.version),
    )
}
