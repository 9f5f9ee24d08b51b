//! A reverse proxy in front of the emulator that counts every AWS request by
//! service and operation: the harness's equivalent of an SDK interceptor,
//! and it sees every function's calls without touching their code.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

pub type Counts = BTreeMap<String, u64>;

#[derive(Clone)]
pub struct CountingProxy {
    pub endpoint: String,
    counts: Arc<Mutex<Counts>>,
}

impl CountingProxy {
    pub async fn start(target: &str) -> anyhow::Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(Mutex::new(Counts::new()));
        let target = target.trim_end_matches('/').to_owned();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let seen = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (client, target, seen) = (client.clone(), target.clone(), seen.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                            let (client, target, seen) =
                                (client.clone(), target.clone(), seen.clone());
                            async move {
                                let (mut parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                *seen
                                    .lock()
                                    .expect("not poisoned")
                                    .entry(operation(&parts))
                                    .or_insert(0) += 1;
                                let path = parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.as_str())
                                    .unwrap_or("/");
                                parts.uri = format!("{target}{path}").parse().expect("valid uri");
                                let response = client
                                    .request(hyper::Request::from_parts(parts, Full::new(body)))
                                    .await;
                                let response = match response {
                                    Ok(r) => {
                                        let (parts, body) = r.into_parts();
                                        let bytes = body
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes())
                                            .unwrap_or_default();
                                        hyper::Response::from_parts(parts, Full::new(bytes))
                                    }
                                    Err(_) => hyper::Response::builder()
                                        .status(502)
                                        .body(Full::new(Bytes::new()))
                                        .expect("static"),
                                };
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
        Ok(CountingProxy { endpoint, counts })
    }

    /// Counts since the last call.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().expect("not poisoned"))
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
