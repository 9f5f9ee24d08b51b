//! Task API Lambda: cold-start setup, then every request goes to `api::handle`.

use lambda_http::{run, service_fn, Error, Request};

// One thread: an environment serves one invocation at a time, and its CPU share at this
// MemorySize is a fraction of a core, so worker threads only add wake-ups (BENCHMARKS "CPU").
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    shared::telemetry::init();
    let app = api::App::from_env().await?;
    let app = &app;
    run(service_fn(move |request: Request| async move {
        Ok::<_, Error>(api::handle(app, request).await)
    }))
    .await
}
