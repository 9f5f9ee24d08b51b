//! The task REST API behind an API Gateway REST proxy integration. `handle`
//! is the whole Lambda: the same function runs on AWS and in the local host.

pub mod console;
mod handlers;
mod identity;
pub mod openapi;
mod request;
mod response;
pub mod routes;
mod schedules;

use console::ConsoleSettings;
use lambda_http::{Body, Request, Response};
use shared::aws::AwsClients;
use shared::config::Config;
use shared::service::schedules::ScheduleSettings;
use shared::service::{RequestQuota, ScheduleService};
use shared::services::Services;
use shared::store::DynamoRequestBuckets;
use shared::AppError;
use std::sync::Arc;

/// Everything a request needs, built once per cold start.
#[derive(Clone)]
pub struct App {
    services: Services,
    /// The per-agency request rate; `None` admits everything (tests that do not need it).
    request_quota: Option<RequestQuota>,
    console: ConsoleSettings,
    /// `None` answers the schedule routes with a 503 (a wiring without them).
    schedules: Option<ScheduleService>,
}

impl App {
    pub fn new(config: &Config, clients: &AwsClients) -> Self {
        Self::with_schedule_settings(config, clients, ScheduleSettings::default())
    }

    /// As [`Self::new`], with where schedules fire and their quota.
    pub fn with_schedule_settings(
        config: &Config,
        clients: &AwsClients,
        settings: ScheduleSettings,
    ) -> Self {
        let buckets = DynamoRequestBuckets::new(clients.dynamodb.clone(), &config.table_name);
        let services = Services::new(config, clients);
        let schedules =
            shared::services::schedule_service(config, clients, settings, services.tasks.clone());
        Self::with_services(services)
            .with_request_quota(RequestQuota::new(Arc::new(buckets), config.quotas))
            .with_schedules(schedules)
    }

    /// Serves the schedule routes with this service.
    pub fn with_schedules(mut self, schedules: ScheduleService) -> Self {
        self.schedules = Some(schedules);
        self
    }

    /// An app over any wiring (tests use in-memory ports), without a request rate quota.
    pub fn with_services(services: Services) -> Self {
        Self {
            services,
            request_quota: None,
            console: ConsoleSettings::default(),
            schedules: None,
        }
    }

    /// Refuses an agency's requests past this rate with a 429.
    pub fn with_request_quota(mut self, quota: RequestQuota) -> Self {
        self.request_quota = Some(quota);
        self
    }

    /// What the web console's pages allow and announce (see [`console`]).
    pub fn with_console(mut self, console: ConsoleSettings) -> Self {
        self.console = console;
        self
    }

    /// Configuration and SDK clients from the standard Lambda environment.
    pub async fn from_env() -> Result<Self, AppError> {
        let config = Config::from_env()?;
        let settings = ScheduleSettings::from_env()?;
        Ok(
            Self::with_schedule_settings(&config, &AwsClients::from_env().await, settings)
                .with_console(ConsoleSettings::from_env()),
        )
    }
}

/// Routes one API Gateway request. Never fails: errors become JSON responses.
pub async fn handle(app: &App, request: Request) -> Response<Body> {
    // The console's files are public pages, served before identity and the API's routes.
    let path = routes::request_path(&request);
    if console::is_console_path(&path) {
        return console::serve(&app.console, &request, &path);
    }
    let request_id = request::request_id(&request);
    match route_and_run(app, &request).await {
        Ok(response) => response,
        Err(err) => response::error(&err, &request_id),
    }
}

async fn route_and_run(app: &App, request: &Request) -> Result<Response<Body>, AppError> {
    // Identity comes first, as with the API Gateway authorizer: without one,
    // nothing about the API (not even which ids exist) is revealed.
    let caller = if routes::is_public_path(request) {
        None
    } else {
        Some(identity::caller(request)?)
    };
    let route = routes::Route::resolve(request)?;
    // Every authenticated request to a route counts against its agency's rate, except the
    // static OpenAPI document (no store behind it); unknown routes cost nothing to refuse.
    if let (Some(quota), Some(caller)) = (&app.request_quota, &caller) {
        if route != routes::Route::OpenApi {
            quota.admit(&caller.agency).await?;
        }
    }
    handlers::dispatch(app, route, caller.as_ref(), request).await
}
