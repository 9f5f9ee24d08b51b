//! The Lambda Runtime API for one execution environment, as `lambda_runtime` 1.5 speaks it:
//! `GET /2018-06-01/runtime/invocation/next` waits for the next invocation and hands it out
//! with the headers the client requires; `POST …/invocation/{id}/response` and
//! `…/invocation/{id}/error` answer it; `POST …/init/error` reports a failed start.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// One invocation waiting to be handed to the environment.
pub struct Pending {
    pub request_id: String,
    pub payload: Bytes,
    /// The invocation's deadline, for `Lambda-Runtime-Deadline-Ms`.
    pub timeout: Duration,
    pub answer: oneshot::Sender<Answer>,
}

/// What the function posted back.
#[derive(Debug)]
pub enum Answer {
    Response(Bytes),
    /// The error body `lambda_runtime` posts (`errorType`, `errorMessage`).
    Error(Bytes),
    /// `/runtime/init/error`: the function could not start.
    InitError(Bytes),
}

struct State {
    function_arn: String,
    next: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    /// Handed out, not answered yet.
    in_flight: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// Where a start failure goes when no invocation is in flight.
    init_error: Mutex<Option<oneshot::Sender<Answer>>>,
}

/// A Runtime API server on a free loopback port; it serves until dropped.
pub struct RuntimeApi {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Serves invocations from `next`; a start failure is sent to `init_error`.
    pub async fn start(
        function_arn: String,
        next: mpsc::Receiver<Pending>,
        init_error: oneshot::Sender<Answer>,
    ) -> std::io::Result<RuntimeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            function_arn,
            next: tokio::sync::Mutex::new(next),
            in_flight: Mutex::default(),
            init_error: Mutex::new(Some(init_error)),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(RuntimeApi { addr, task })
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("static response parts")
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let accepted = || reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#);
    let route = path
        .strip_prefix("/2018-06-01/runtime/")
        .unwrap_or_default();
    match (method, route) {
        (Method::GET, "invocation/next") => {
            let Some(pending) = state.next.lock().await.recv().await else {
                // The environment is being shut down; the process is about to be killed.
                std::future::pending::<()>().await;
                unreachable!()
            };
            let deadline_ms = (SystemTime::now() + pending.timeout)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default();
            state
                .in_flight
                .lock()
                .expect("not poisoned")
                .insert(pending.request_id.clone(), pending.answer);
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .header("Lambda-Runtime-Aws-Request-Id", &pending.request_id)
                .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
                .header("Lambda-Runtime-Invoked-Function-Arn", &state.function_arn)
                .header(
                    "Lambda-Runtime-Trace-Id",
                    "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0",
                )
                .body(Full::new(pending.payload))
                .expect("valid response parts")
        }
        (Method::POST, "init/error") => {
            if let Some(sender) = state.init_error.lock().expect("not poisoned").take() {
                let _ = sender.send(Answer::InitError(body));
            }
            accepted()
        }
        (Method::POST, route) => {
            let answered = |suffix: &str| {
                route
                    .strip_prefix("invocation/")
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .map(str::to_owned)
            };
            let (id, answer) = match (answered("/response"), answered("/error")) {
                (Some(id), _) => (id, Answer::Response(body)),
                (_, Some(id)) => (id, Answer::Error(body)),
                _ => return reply(StatusCode::NOT_FOUND, r#"{"errorMessage":"unknown route"}"#),
            };
            match state.in_flight.lock().expect("not poisoned").remove(&id) {
                Some(sender) => {
                    let _ = sender.send(answer);
                    accepted()
                }
                None => reply(
                    StatusCode::BAD_REQUEST,
                    r#"{"errorMessage":"no invocation in flight with this id"}"#,
                ),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, r#"{"errorMessage":"unknown route"}"#),
    }
}
