//! Shared helpers for the end-to-end tests: one local stack per test binary
//! (moto on a free port, template.yaml provisioned, the API on a free port),
//! and a small HTTP client that signs requests as a given caller.

use local_stack::{jwt, Backend, LocalStack, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

const TEST_SECRET: &[u8] = b"integration-test-secret";

pub struct TestStack {
    pub api_url: String,
    pub emulator_endpoint: String,
}

/// Starts the stack once for the whole test binary. It lives on its own
/// runtime thread so it outlives each test's runtime; moto dies with the process.
pub fn stack() -> &'static TestStack {
    static STACK: OnceLock<TestStack> = OnceLock::new();
    STACK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("local-stack".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("test runtime");
                runtime.block_on(async move {
                    let options = StackOptions {
                        repo_root: StackOptions::repo_root(),
                        stack_name: "taskflow-test".into(),
                        backend: Backend::Moto {
                            venv: venv_dir(),
                            port: 0,
                        },
                        api_port: 0,
                        jwt_secret: TEST_SECRET.to_vec(),
                        parameter_overrides: test_parameters(),
                    };
                    match LocalStack::start(options).await {
                        Ok(stack) => {
                            let info = TestStack {
                                api_url: stack.api_url(),
                                emulator_endpoint: stack.emulator.endpoint.clone(),
                            };
                            tx.send(Ok(info)).ok();
                            // Serve until the test process exits.
                            std::future::pending::<()>().await;
                            drop(stack);
                        }
                        Err(err) => {
                            tx.send(Err(format!("{err:#}"))).ok();
                        }
                    }
                });
            })
            .expect("spawn stack thread");
        match rx.recv().expect("stack thread reports") {
            Ok(info) => info,
            Err(err) => panic!("local stack failed to start: {err}"),
        }
    })
}

fn venv_dir() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| StackOptions::repo_root().join(".venv"))
}

/// A unique agency per test, so tests never see each other's data.
pub fn unique_agency(prefix: &str) -> String {
    format!("{prefix}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Calls the API as one identity.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn etag(&self) -> String {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The `error.code` of an error reply.
    pub fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl Client {
    pub fn as_user(agency: &str, user: &str, role: &str) -> Client {
        let token = jwt::sign(TEST_SECRET, user, agency, role, 3600);
        Client::with_token(Some(token))
    }

    pub fn with_token(token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: stack().api_url.clone(),
            token,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Self::read(request.send().await.expect("API reachable")).await
    }

    /// Sends raw bytes with an explicit content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Self::read(request.send().await.expect("API reachable")).await
    }

    async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(body), &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, Some(body), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// Creates a task and returns its id, asserting success.
    pub async fn create_task(&self, body: &Value) -> String {
        let reply = self.post("/api/tasks", body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "create failed: {}",
            reply.body
        );
        reply.body["id"].as_str().expect("id").to_owned()
    }
}

/// Short leases and visibility timeouts so takeover and retry tests run in seconds.
fn test_parameters() -> Vec<(String, String)> {
    [
        ("LeaseSeconds", "4"),
        ("QueueVisibilitySeconds", "5"),
        ("WorkerTimeoutSeconds", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
