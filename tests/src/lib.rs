//! Shared helpers for the end-to-end tests: one local stack per test binary
//! (moto on a free port, template.yaml provisioned, the API on a free port),
//! and a small HTTP client that signs requests as a given caller.
//!
//! `TASKFLOW_TEST_BACKEND=localstack` (what `make test-localstack` sets) runs the same tests
//! on the hybrid backend: DynamoDB on moto; SQS, Step Functions and S3 on LocalStack, started
//! from `LOCALSTACK_VENV` (default `.venv-localstack`), or the one at `LOCALSTACK_ENDPOINT`.

pub mod ledger;
pub mod limits;
pub mod requests;

pub use ledger::Ledger;
use local_stack::emulator::Endpoints;
use local_stack::{jwt, Backend, LocalStack, LocalStackSource, StackOptions};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

pub const TEST_SECRET: &[u8] = b"integration-test-secret";

/// The local API Gateway's wait for the API function in these tests. On AWS it is 29 s; here
/// moto serves DynamoDB one request at a time, and on a 2-core machine that is also compiling,
/// a burst of tests (the priority test's 500 creates) can queue one call past 29 s. The 504
/// itself is tested on the gateway (`infra/local/tests/gateway_responses.rs`).
pub const TEST_API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

pub struct TestStack {
    pub api_url: String,
    /// moto's endpoint: every service, or DynamoDB only on the hybrid backend. Build SDK
    /// clients with [`TestStack::clients`] or [`TestStack::sdk_config`], which know the
    /// endpoint of each service.
    pub emulator_endpoint: String,
    /// The endpoint of each service.
    pub endpoints: Endpoints,
    /// How another host attaches to the same emulators (see [`isolated_stack`]).
    pub attach: Backend,
    /// Ref values of every resource (queue URLs, table name, …).
    pub refs: std::collections::HashMap<String, String>,
    /// The worker's configuration, as template.yaml sets it.
    pub config: shared::config::Config,
    /// How each function runs (empty when they run in-process).
    pub functions: Vec<local_stack::runtime::FunctionConfig>,
    /// What the table's stream mapping has read and delivered (state-change events).
    pub stream_stats: std::sync::Arc<local_stack::stream_poller::StreamStats>,
}

impl TestStack {
    /// SDK clients pointed at the test emulators, each service at its endpoint.
    pub async fn clients(&self) -> shared::aws::AwsClients {
        shared::aws::AwsClients::new(&self.sdk_config().await)
    }

    /// The SDK configuration the hosted functions use: each service at its endpoint.
    pub async fn sdk_config(&self) -> local_stack::emulator::SdkConfig {
        local_stack::emulator::sdk_config_for(&self.endpoints).await
    }

    /// True on the hybrid backend (`TASKFLOW_TEST_BACKEND=localstack`).
    pub fn on_localstack(&self) -> bool {
        matches!(self.attach, Backend::ExistingHybrid { .. })
    }
}

/// The backend `TASKFLOW_TEST_BACKEND` asks for: `moto` (the default) or `localstack`.
pub fn backend_from_env() -> Backend {
    let choice = std::env::var("TASKFLOW_TEST_BACKEND").unwrap_or_default();
    match choice.trim() {
        "" | "moto" => Backend::Moto {
            venv: venv_dir(),
            port: 0,
        },
        "localstack" => Backend::Hybrid {
            moto_venv: venv_dir(),
            localstack: match std::env::var("LOCALSTACK_ENDPOINT") {
                Ok(endpoint) if !endpoint.is_empty() => LocalStackSource::Existing { endpoint },
                _ => LocalStackSource::Start {
                    venv: localstack_venv_dir(),
                },
            },
        },
        other => panic!("TASKFLOW_TEST_BACKEND={other:?}: expected `moto` or `localstack`"),
    }
}

/// Prints why a test does not run on the hybrid backend and returns true there, for
/// `if skip_on_localstack("…") { return; }`.
pub fn skip_on_localstack(reason: &str) -> bool {
    if stack().on_localstack() {
        println!("SKIPPED on LocalStack: {reason}");
        eprintln!("SKIPPED on LocalStack: {reason}");
        true
    } else {
        false
    }
}

/// Starts the stack once for the whole test binary. It lives on its own
/// runtime thread so it outlives each test's runtime; moto dies with the process.
pub fn stack() -> &'static TestStack {
    static STACK: OnceLock<TestStack> = OnceLock::new();
    STACK.get_or_init(|| {
        // RUST_LOG=warn (or finer) shows the hosted functions' logs in test output.
        if std::env::var_os("RUST_LOG").is_some() {
            shared::telemetry::init();
        }
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
                        backend: backend_from_env(),
                        api_port: 0,
                        jwt_secret: TEST_SECRET.to_vec(),
                        parameter_overrides: test_parameters(),
                        functions: local_stack::FunctionHost::from_env(&StackOptions::repo_root()),
                        api_timeout: TEST_API_TIMEOUT,
                    };
                    match LocalStack::start(options).await {
                        Ok(stack) => {
                            let worker = stack
                                .resources
                                .function("WorkerFunction")
                                .expect("worker in template");
                            let config = shared::config::Config::from_lookup(|k| {
                                worker.environment.get(k).cloned()
                            })
                            .expect("worker config");
                            let info = TestStack {
                                api_url: stack.api_url(),
                                emulator_endpoint: stack.emulator.endpoint.clone(),
                                endpoints: stack.endpoints.clone(),
                                attach: stack.attach_backend(),
                                refs: stack.resources.refs.clone(),
                                config,
                                functions: stack.function_configs(),
                                stream_stats: stack.stream_stats(),
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

pub fn venv_dir() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| StackOptions::repo_root().join(".venv"))
}

pub fn localstack_venv_dir() -> PathBuf {
    std::env::var_os("LOCALSTACK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| StackOptions::repo_root().join(".venv-localstack"))
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

    /// The same identity against another API host.
    pub fn at(&self, base: &str) -> Client {
        Client {
            http: self.http.clone(),
            base: base.to_owned(),
            token: self.token.clone(),
        }
    }

    pub fn with_token(token: Option<String>) -> Client {
        // reqwest needs rustls's process provider (`shared::tls`); the tests' own reqwest
        // clients are all built after this one.
        shared::tls::install_crypto_provider();
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

    /// Creates a task as a careful client would under load: with an
    /// Idempotency-Key, retrying 5xx answers, so a retry never duplicates.
    pub async fn create_task_retrying(&self, body: &Value) -> String {
        let key = ulid::Ulid::new().to_string();
        for attempt in 0..10u32 {
            let reply = self
                .send(
                    Method::POST,
                    "/api/tasks",
                    Some(body),
                    &[("idempotency-key", &key)],
                )
                .await;
            if reply.status == StatusCode::CREATED {
                return reply.body["id"].as_str().expect("id").to_owned();
            }
            assert!(
                reply.status.is_server_error(),
                "create failed: {}",
                reply.body
            );
            // Exponential backoff, as the Retry-After of a 503 invites.
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(4))).await;
        }
        panic!("create kept failing with server errors");
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

/// The allowlist that lets the http executor reach this machine (tests and `make dev`).
pub const LOOPBACK_ALLOWED: &str = local_stack::LOOPBACK_ALLOWED;

/// Short leases and visibility timeouts so takeover and retry tests run in seconds.
/// The worker's Timeout leaves 10 s beyond the lease for the claim and the writes around a
/// run, as the production values do (120 s and 150 s): the worker runs under the local Lambda
/// runtime, which ends an invocation at its Timeout. Visibility stays above the worker timeout
/// plus the longest batching window (10 s), as Lambda requires, or batching would redeliver
/// messages it is still collecting.
pub fn test_parameters() -> Vec<(String, String)> {
    [
        ("LeaseSeconds", "10"),
        ("QueueVisibilitySeconds", "32"),
        ("WorkerTimeoutSeconds", "20"),
        // The tests' receivers listen on 127.0.0.1, which the http executor refuses by default.
        ("HttpExecutorAllowedHosts", LOOPBACK_ALLOWED),
        // Generous quotas: the emulator serves far fewer requests than this, and tests create
        // many batch items. tests/integration/quotas.rs tries small ones on a stack of its own.
        ("QuotaRequestsPerSecond", "400"),
        ("QuotaRequestBurst", "10000"),
        ("QuotaBatchItemsPerDay", "100000000"),
        ("QuotaOpenTasks", "100000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// How much longer than on an idle machine waits may take here, measured when a deadline is
/// set: 1 + the one-minute load average per core, from 1 to 4 (so a 2-core machine also busy
/// compiling waits about twice as long). `TASKFLOW_TEST_TIME_FACTOR` sets it instead.
pub fn time_factor() -> f64 {
    let set = std::env::var("TASKFLOW_TEST_TIME_FACTOR")
        .ok()
        .and_then(|v| v.parse::<f64>().ok());
    let factor = set.unwrap_or_else(|| {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        1.0 + load / cores
    });
    factor.clamp(1.0, 4.0)
}

/// A deadline sized for an idle machine, scaled by [`time_factor`].
pub fn scaled(idle: std::time::Duration) -> std::time::Duration {
    idle.mul_f64(time_factor())
}

/// Polls `check` until it returns Some, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Waits until a task reaches one of `statuses` and returns it.
pub async fn wait_for_status(client: &Client, id: &str, statuses: &[&str]) -> Value {
    eventually(
        &format!("task {id} to reach {statuses:?}"),
        scaled(std::time::Duration::from_secs(60)),
        || async {
            let reply = client.get(&format!("/api/tasks/{id}")).await;
            let status = reply.body["status"].as_str().unwrap_or_default().to_owned();
            statuses.contains(&status.as_str()).then_some(reply.body)
        },
    )
    .await
}

/// A second host with its own table and queues (`stack_name`) on the shared
/// emulator, for tests that must not see, or be seen by, other tests' work.
pub async fn isolated_stack(stack_name: &str) -> local_stack::LocalStack {
    local_stack::LocalStack::start(isolated_options(stack_name))
        .await
        .expect("isolated stack")
}

pub fn isolated_options(stack_name: &str) -> StackOptions {
    StackOptions {
        repo_root: StackOptions::repo_root(),
        stack_name: stack_name.to_owned(),
        backend: stack().attach.clone(),
        api_port: 0,
        jwt_secret: TEST_SECRET.to_vec(),
        parameter_overrides: test_parameters(),
        functions: local_stack::FunctionHost::from_env(&StackOptions::repo_root()),
        api_timeout: TEST_API_TIMEOUT,
    }
}

/// The worker's configuration in a started stack, as template.yaml sets it.
pub fn worker_config(stack: &local_stack::LocalStack) -> shared::config::Config {
    let worker = stack
        .resources
        .function("WorkerFunction")
        .expect("worker in template");
    shared::config::Config::from_lookup(|k| worker.environment.get(k).cloned())
        .expect("worker config")
}

/// An HTTP endpoint for batch items: answers 422 to any item whose JSON
/// contains `"bad":true`, 200 otherwise. `accept_all()` heals it.
pub struct PickyEndpoint {
    pub url: String,
    pub ledger: Ledger,
    healed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl PickyEndpoint {
    pub async fn start() -> PickyEndpoint {
        use std::sync::atomic::Ordering;
        let healed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let heal = healed.clone();
        let ledger = Ledger::answering(move |run, _| {
            let bad = run.input.get("bad") == Some(&Value::Bool(true));
            if bad && !heal.load(Ordering::SeqCst) {
                422
            } else {
                200
            }
        });
        PickyEndpoint {
            url: ledger.url.clone(),
            ledger,
            healed,
        }
    }

    /// From now on every item succeeds.
    pub fn accept_all(&self) {
        self.healed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until a batch has finished (completed or failed) and returns its view.
pub async fn wait_for_batch(client: &Client, id: &str) -> Value {
    eventually(
        &format!("batch {id} to finish"),
        scaled(std::time::Duration::from_secs(120)),
        || async {
            let reply = client.get(&format!("/api/batches/{id}")).await;
            let status = reply.body["status"].as_str().unwrap_or_default().to_owned();
            ["completed", "failed"]
                .contains(&status.as_str())
                .then_some(reply.body)
        },
    )
    .await
}

/// TCP proxies in front of every emulator a backend uses (moto, and LocalStack on the hybrid
/// backend) that can be switched off together, to make AWS briefly unreachable: while down
/// they drop live connections and refuse new ones.
pub struct Outage {
    /// The same emulators as the backend given, reached through the proxies.
    pub backend: Backend,
    down: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Outage {
    pub fn in_front_of(backend: &Backend) -> Outage {
        let (down, _) = tokio::sync::watch::channel(false);
        let down = std::sync::Arc::new(down);
        let backend = match backend {
            Backend::Existing { endpoint } => Backend::Existing {
                endpoint: proxy(endpoint, &down),
            },
            Backend::ExistingHybrid { moto, localstack } => Backend::ExistingHybrid {
                moto: proxy(moto, &down),
                localstack: proxy(localstack, &down),
            },
            other => {
                panic!("an outage needs running emulators to stand in front of, not {other:?}")
            }
        };
        Outage { backend, down }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

/// Forwards a free local port to `target` until the process ends; returns its endpoint.
fn proxy(target: &str, down: &std::sync::Arc<tokio::sync::watch::Sender<bool>>) -> String {
    let target = target.trim_start_matches("http://").to_owned();
    let switch = down.clone();
    let addr = serve_loopback(move |mut inbound| {
        let (target, switch) = (target.clone(), switch.clone());
        async move {
            if *switch.borrow() {
                return; // dropped: the connection is refused
            }
            let mut state = switch.subscribe();
            let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = state.wait_for(|down| *down) => {}
            }
        }
    });
    format!("http://{addr}")
}

/// Listens on a free loopback port and handles each connection with `handle`, on a runtime of
/// its own so the server outlives the calling test's runtime. Returns the address.
pub fn serve_loopback<F, Fut>(handle: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(handle(stream));
                }
            }
        });
    });
    addr
}

/// Waits for the message on the dead-letter queue `dlq` whose body `matches`, and returns it
/// with its attributes. It receives with a one-second visibility, which pages through a queue
/// of more than ten messages without hiding anyone's for long.
pub async fn dead_letter(
    dlq: &str,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> aws_sdk_sqs::types::Message {
    let clients = stack().clients().await;
    eventually(what, scaled(std::time::Duration::from_secs(60)), || async {
        let out = clients
            .sqs
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .visibility_timeout(1)
            .send()
            .await
            .ok()?;
        out.messages
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.body.as_deref().is_some_and(&matches))
    })
    .await
}

/// Waits until a queue holds no message, waiting or in flight: every delivery has been consumed.
pub async fn wait_until_drained(queue_url: &str) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let clients = stack().clients().await;
    eventually(
        &format!("{queue_url} to drain"),
        scaled(std::time::Duration::from_secs(30)),
        || async {
            let attrs = clients
                .sqs
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await
                .ok()?
                .attributes
                .unwrap_or_default();
            let count = |name| {
                attrs
                    .get(&name)
                    .and_then(|v: &String| v.parse::<u64>().ok())
                    .unwrap_or(1)
            };
            (count(QueueAttributeName::ApproximateNumberOfMessages) == 0
                && count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0)
                .then_some(())
        },
    )
    .await;
}
