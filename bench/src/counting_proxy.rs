//! A reverse proxy in front of the emulator that counts every AWS request by
//! service and operation: the harness's equivalent of an SDK interceptor,
//! and it sees every function's calls without touching their code. While metering is on it
//! also bills what AWS bills for them ([`crate::metering`]).

use crate::metering::{bad_gateway, Meter, Metered, Metering, Upstream};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

pub type Counts = BTreeMap<String, u64>;

#[derive(Clone)]
pub struct CountingProxy {
    pub endpoint: String,
    counts: Arc<Mutex<Counts>>,
    meter: Arc<Meter>,
    window_started: Arc<Mutex<Instant>>,
    trace: Trace,
}

/// Requests recorded while tracing is on (`None` while it is off).
type Trace = Arc<Mutex<Option<Vec<Traced>>>>;

/// One request seen while tracing: when it reached the proxy, how long the emulator took to
/// answer it, and its body (to find the task ids it names).
#[derive(Debug, Clone)]
pub struct Traced {
    pub at: SystemTime,
    pub took: Duration,
    pub operation: String,
    pub body: hyper::body::Bytes,
}

/// What the proxy saw between two [`CountingProxy::take_window`] calls.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub counts: Counts,
    /// Empty unless metering was on.
    pub metered: Metered,
    pub elapsed: Duration,
}

impl CountingProxy {
    pub async fn start(target: &str) -> anyhow::Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(Mutex::new(Counts::new()));
        let meter = Arc::new(Meter::new(Upstream::new(target)));
        let trace: Trace = Arc::default();
        let (seen, metering, tracing) = (counts.clone(), meter.clone(), trace.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, metering, tracing) = (seen.clone(), metering.clone(), tracing.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (seen, metering, tracing) =
                                (seen.clone(), metering.clone(), tracing.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let op = operation(&parts);
                                *seen
                                    .lock()
                                    .expect("not poisoned")
                                    .entry(op.clone())
                                    .or_insert(0) += 1;
                                let traced = tracing.lock().expect("not poisoned").is_some();
                                let (at, started) = (SystemTime::now(), Instant::now());
                                let kept = traced.then(|| body.clone());
                                let response = match metering.exchange(&op, parts, body).await {
                                    Some(answer) => answer.into_response(),
                                    None => bad_gateway(),
                                };
                                if let Some(body) = kept {
                                    let took = started.elapsed();
                                    if let Some(trace) =
                                        tracing.lock().expect("not poisoned").as_mut()
                                    {
                                        trace.push(Traced {
                                            at,
                                            took,
                                            operation: op,
                                            body,
                                        });
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Ok(CountingProxy {
            endpoint,
            counts,
            meter,
            window_started: Arc::new(Mutex::new(Instant::now())),
            trace,
        })
    }

    /// Counts since the last call.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().expect("not poisoned"))
    }

    /// Bills SQS requests as the ESM makes them and times invocations (`Timing`), and also
    /// DynamoDB capacity units at the price of extra emulator requests of its own (`Full`):
    /// see [`crate::metering`]. On only while cost is measured.
    pub fn set_metering(&self, level: Metering) {
        self.meter.set_level(level);
    }

    /// Starts recording every request ([`Traced`]), dropping any earlier record.
    pub fn start_trace(&self) {
        *self.trace.lock().expect("not poisoned") = Some(Vec::new());
    }

    /// The requests recorded since [`CountingProxy::start_trace`]; tracing stops.
    pub fn take_trace(&self) -> Vec<Traced> {
        self.trace
            .lock()
            .expect("not poisoned")
            .take()
            .unwrap_or_default()
    }

    /// Counts and metered figures since the last call (or since the proxy started).
    pub fn take_window(&self) -> Window {
        let now = Instant::now();
        let started =
            std::mem::replace(&mut *self.window_started.lock().expect("not poisoned"), now);
        Window {
            counts: self.take(),
            metered: self.meter.take(),
            elapsed: now - started,
        }
    }
}

/// "dynamodb:PutItem", "sqs:SendMessage", "states:StartExecution", "s3:PutObject", …
fn operation(parts: &http::request::Parts) -> String {
    if let Some(target) = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
    {
        let (prefix, op) = target.split_once('.').unwrap_or(("", target));
        let service = match prefix {
            p if p.starts_with("DynamoDB") => "dynamodb",
            p if p.starts_with("AmazonSQS") => "sqs",
            p if p.starts_with("AWSStepFunctions") => "states",
            other => other,
        };
        return format!("{service}:{op}");
    }
    if parts.uri.path().starts_with("/moto-api") {
        return "emulator:control".into();
    }
    let s3_op = match (parts.method.as_str(), parts.uri.query().unwrap_or("")) {
        ("PUT", q) if q.contains("notification") => "PutBucketNotificationConfiguration",
        ("PUT", _) => "PutObject",
        ("GET", q) if q.contains("list-type") => "ListObjectsV2",
        ("GET", _) => "GetObject",
        ("HEAD", _) => "HeadObject",
        ("DELETE", _) => "DeleteObject",
        ("POST", _) => "Post",
        (m, _) => m,
    };
    format!("s3:{s3_op}")
}
