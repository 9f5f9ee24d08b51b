//! Task API Lambda: cold-start setup, then every request goes to `api::handle`.

use lambda_http::{run, service_fn, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = api::App::from_env().await?;
    let app = &app;
    run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(api::handle(app, request).await)
    }))
    .await
}
