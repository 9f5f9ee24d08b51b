use super::egress::{
    EgressPolicy, GuardedResolver, NameNotResolved, Refusal, RuntimeApiRefusal, SystemResolver,
};
use super::{number, only_fields, ExecError, Executor, Job, Outcome, WorkUnit};
use async_trait::async_trait;
use reqwest::dns::{Name, Resolve, Resolving};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_TIMEOUT_SECONDS: f64 = 10.0;
const MAX_TIMEOUT_SECONDS: f64 = 60.0;
/// Larger responses would not fit on the task item.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// POSTs `{"taskId", "attempt", "input"}` to `config.url`, plus what part of the task runs:
/// `dispatchId` for a whole task, `step` for a chain step, `itemIndex` for a batch item.
/// 2xx: the response body is the result. 5xx, timeouts and connection errors are retried;
/// 4xx, redirects and destinations the egress policy refuses are not.
pub struct Http {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
    /// What the client resolves names with (the guard), for the Runtime API check.
    resolver: Arc<dyn Resolve>,
}

/// Lets reqwest take a shared resolver (it wants a sized type).
struct SharedResolver(Arc<dyn Resolve>);

impl Resolve for SharedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        self.0.resolve(name)
    }
}

impl Http {
    /// Resolves with the system's resolver, through the policy's guard.
    pub fn new(policy: EgressPolicy) -> Self {
        let policy = Arc::new(policy);
        let guard = Arc::new(GuardedResolver {
            inner: Arc::new(SystemResolver),
            policy: policy.clone(),
        });
        Self::with_parts(policy, guard, base_client())
    }

    /// `resolver` is the whole chain the client resolves with (tests wrap the guard to watch
    /// what it lets through); `builder` comes from [`base_client`].
    fn with_parts(
        policy: Arc<EgressPolicy>,
        resolver: Arc<dyn Resolve>,
        builder: reqwest::ClientBuilder,
    ) -> Self {
        let client = builder
            .dns_resolver(Arc::new(SharedResolver(resolver.clone())))
            .build()
            .unwrap_or_default();
        Self {
            client,
            policy,
            resolver,
        }
    }

    /// Refuses IP-literal URLs the policy refuses (reqwest connects to those without
    /// resolving) and the Lambda Runtime API, whatever the allowlist says.
    async fn check_target(&self, url: &reqwest::Url) -> Result<(), ExecError> {
        let port = url.port_or_known_default().unwrap_or(0);
        let refused =
            |e: &dyn std::fmt::Display| ExecError::Permanent(format!("POST {url} refused: {e}"));
        let host = url.host_str().unwrap_or_default();
        // An IPv6 literal's host is written in brackets.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if let Some(ip) = literal {
            if self.policy.is_runtime_api(ip, port) {
                return Err(refused(&RuntimeApiRefusal(format!("{ip}:{port}"))));
            }
            return self.policy.admit(host, ip).map_err(|e| refused(&e));
        }
        // A name on the Runtime API's port: where it points now. (The connection itself only
        // goes where the guard allows, so this matters only where loopback is allowed.)
        if self.policy.runtime_api_port() == Some(port) {
            if let Ok(name) = host.parse::<Name>() {
                if let Ok(addrs) = self.resolver.resolve(name).await {
                    if let Some(addr) = addrs
                        .into_iter()
                        .find(|a| self.policy.is_runtime_api(a.ip(), port))
                    {
                        return Err(refused(&RuntimeApiRefusal(format!(
                            "{host} ({})",
                            addr.ip()
                        ))));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The client settings every `Http` uses. TLS is rustls with the process's provider, aws-lc-rs
/// (`crate::tls`), and the webpki root certificates.
fn base_client() -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        // Redirects are not followed: each hop could point anywhere, and a 3xx names where.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve names itself, past the guard.
        .no_proxy()
}

/// The errors behind a failed send, outermost first. An `io::Error` that wraps another error
/// (as TLS failures do) is followed into it.
fn causes(error: &reqwest::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = std::error::Error::source(error);
    while let Some(e) = next {
        chain.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    chain
}

/// The refusal behind a failed send, if the guard refused its destination.
fn refusal_in(error: &reqwest::Error) -> Option<&Refusal> {
    causes(error)
        .into_iter()
        .find_map(|e| e.downcast_ref::<Refusal>())
}

/// Where a request that got no response failed: reqwest says only "error sending request".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The host name did not resolve.
    Dns,
    /// No TCP connection to the address.
    Connect,
    /// Connected, but the TLS handshake failed (an https URL).
    Tls,
    /// Connected (and secured), but sending the request or reading the response head failed.
    Exchange,
}

impl Stage {
    fn of(error: &reqwest::Error, https: bool) -> Stage {
        let chain = causes(error);
        if chain.iter().any(|e| e.is::<NameNotResolved>()) {
            return Stage::Dns;
        }
        if chain.iter().any(|e| e.is::<rustls::Error>()) {
            return Stage::Tls;
        }
        if !error.is_connect() {
            return Stage::Exchange;
        }
        // The connector's steps are resolve, TCP connect, then (https) the handshake. The
        // socket's own failures carry the operating system's error; a handshake cut short (the
        // peer closed, or spoke something else) does not.
        let os_error = chain.iter().any(|e| {
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error().is_some())
        });
        if https && !os_error {
            Stage::Tls
        } else {
            Stage::Connect
        }
    }

    fn describe(self, url: &reqwest::Url) -> String {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(0);
        match self {
            Stage::Dns => format!("DNS resolution of {host} failed"),
            Stage::Connect => format!("the TCP connection to {host}:{port} failed"),
            Stage::Tls => format!("the TLS handshake with {host}:{port} failed"),
            Stage::Exchange => {
                format!("the connection to {host}:{port} was made, but the request or its response failed")
            }
        }
    }
}

/// The innermost error's own words (the outer ones only say where it was wrapped).
fn root_cause(error: &reqwest::Error) -> String {
    causes(error)
        .last()
        .map_or_else(|| error.to_string(), |e| e.to_string())
}

/// A send that got no response: retryable, naming the stage that failed and its cause.
fn send_failure(url: &reqwest::Url, error: &reqwest::Error) -> ExecError {
    let cause = root_cause(error);
    if error.is_timeout() {
        // The connect timeout covers the TCP connection and the TLS handshake together.
        let waited = if error.is_connect() {
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())
        } else {
            "no response within timeoutSeconds".to_owned()
        };
        return ExecError::Retryable(format!("POST {url} timed out: {waited}: {cause}"));
    }
    let stage = Stage::of(error, url.scheme() == "https").describe(url);
    ExecError::Retryable(format!("POST {url} failed: {stage}: {cause}"))
}

fn settings(config: &Value) -> Result<(reqwest::Url, Duration), String> {
    only_fields(config, &["url", "timeoutSeconds"])?;
    let raw = config
        .get("url")
        .and_then(Value::as_str)
        .ok_or("url is required (an http or https URL)")?;
    let url = reqwest::Url::parse(raw).map_err(|_| format!("url '{raw}' is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("url must be http or https, not '{}'", url.scheme()));
    }
    let timeout = number(config, "timeoutSeconds")?.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(0.1..=MAX_TIMEOUT_SECONDS).contains(&timeout) {
        return Err(format!(
            "timeoutSeconds must be from 0.1 to {MAX_TIMEOUT_SECONDS}"
        ));
    }
    Ok((url, Duration::from_secs_f64(timeout)))
}

/// The request body: the run's identity and its input.
fn payload(job: &Job<'_>) -> Value {
    let mut payload = json!({"taskId": job.task_id, "attempt": job.attempt, "input": job.input});
    let (field, unit) = match job.unit {
        WorkUnit::Task { dispatch_id } => ("dispatchId", json!(dispatch_id)),
        WorkUnit::Step { name } => ("step", json!(name)),
        WorkUnit::Item { index } => ("itemIndex", json!(index)),
    };
    payload[field] = unit;
    payload
}

#[async_trait]
impl Executor for Http {
    fn validate(&self, config: &Value) -> Result<(), String> {
        settings(config).map(|_| ())
    }

    /// Only an explicit timeoutSeconds: the 10 s default fits any lease a deployment uses
    /// (test stacks run with 10 s leases and rely on quick receivers).
    fn max_run(&self, config: &Value) -> Option<(&'static str, Duration)> {
        config.get("timeoutSeconds").filter(|v| !v.is_null())?;
        let (_, timeout) = settings(config).ok()?;
        Some(("timeoutSeconds", timeout))
    }

    async fn run(&self, job: &Job<'_>) -> Result<Outcome, ExecError> {
        let (url, timeout) = settings(job.config).map_err(ExecError::Permanent)?;
        self.check_target(&url).await?;
        let payload = payload(job);
        let response = self
            .client
            .post(url.clone())
            .timeout(timeout)
            .json(&payload)
            .send()
            .await
            .map_err(|e| {
                if let Some(refusal) = refusal_in(&e) {
                    return ExecError::Permanent(format!("POST {url} refused: {refusal}"));
                }
                send_failure(&url, &e)
            })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nowhere");
            return Err(ExecError::Permanent(format!(
                "POST {url} returned {status}, a redirect to {location}; the http executor does \
                 not follow redirects (a hop could lead to an address it refuses): use the final URL"
            )));
        }
        if status.is_server_error() {
            return Err(ExecError::Retryable(format!(
                "POST {url} returned {status}"
            )));
        }
        let body = read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| {
                ExecError::Retryable(format!(
                    "POST {url}: the response ({status}) broke off before its end: {}",
                    root_cause(&e)
                ))
            })?;
        if !status.is_success() {
            let excerpt: String = String::from_utf8_lossy(body.bytes())
                .chars()
                .take(200)
                .collect();
            return Err(ExecError::Permanent(format!(
                "POST {url} returned {status}: {excerpt}"
            )));
        }
        let Capped::Whole(body) = body else {
            return Err(ExecError::Permanent(format!(
                "POST {url} returned more than {MAX_RESPONSE_BYTES} bytes (64 KiB); \
                 results are limited to {MAX_RESPONSE_BYTES} bytes"
            )));
        };
        let result = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok(Outcome::Done(result))
    }
}

/// A response body read up to a limit.
enum Capped {
    Whole(Vec<u8>),
    /// The body is longer than the limit: these are its first bytes, and the rest was never read.
    Cut(Vec<u8>),
}

impl Capped {
    fn bytes(&self) -> &[u8] {
        match self {
            Capped::Whole(bytes) | Capped::Cut(bytes) => bytes,
        }
    }
}

/// Reads at most `limit` bytes of the body. A receiver may answer with any length, or without
/// end, so the body is never read whole first: reading stops, and the connection is dropped, at
/// the first chunk that passes the limit.
async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Capped, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            let room = limit - body.len();
            body.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Cut(body));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

    #[test]
    fn the_payload_names_the_unit_of_work() {
        let task_id = TaskId::generate();
        let input = json!({"n": 1});
        let job = |unit| Job {
            task_id,
            unit,
            config: &Value::Null,
            input: &input,
            attempt: 2,
        };
        let body = payload(&job(WorkUnit::Task { dispatch_id: "d-1" }));
        assert_eq!(
            body,
            json!({"taskId": task_id, "attempt": 2, "input": {"n": 1}, "dispatchId": "d-1"})
        );
        assert_eq!(
            payload(&job(WorkUnit::Step { name: "sign" }))["step"],
            "sign"
        );
        assert_eq!(payload(&job(WorkUnit::Item { index: 7 }))["itemIndex"], 7);
    }

    /// What the loopback receiver answers.
    pub(super) enum Answer {
        /// This status and body, with its Content-Length.
        Fixed(u16, Vec<u8>),
        /// This status and a chunked body that never ends.
        Endless(u16),
        /// 302 to this location.
        Redirect(&'static str),
        /// These bytes, then the connection closes.
        Cut(&'static [u8]),
    }

    /// A one-request receiver on 127.0.0.1. The handle yields how many body bytes it wrote
    /// before the client went away.
    pub(super) async fn receiver(answer: Answer) -> (String, tokio::task::JoinHandle<u64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            answer_one(socket, answer).await
        });
        (url, server)
    }

    /// The test CA (`testdata/README.md`), and the certificate it signed for 127.0.0.1.
    const TEST_CA: &[u8] = include_bytes!("testdata/test-ca.pem");
    const TEST_CERT: &[u8] = include_bytes!("testdata/localhost.pem");
    const TEST_KEY: &[u8] = include_bytes!("testdata/localhost.key.pem");

    /// [`receiver`] behind TLS (rustls with aws-lc-rs), presenting [`TEST_CERT`]. The handle
    /// yields 0 when the handshake fails.
    async fn tls_receiver(answer: Answer) -> (String, tokio::task::JoinHandle<u64>) {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(TEST_CERT).unwrap()],
                PrivateKeyDer::from_pem_slice(TEST_KEY).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            match acceptor.accept(socket).await {
                Ok(stream) => answer_one(stream, answer).await,
                Err(_) => 0,
            }
        });
        (url, server)
    }

    /// Reads one request from `socket` and answers it; how many body bytes were written.
    async fn answer_one<S>(mut socket: S, answer: Answer) -> u64
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Read the whole request first, so closing never resets it unread.
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            request.extend_from_slice(&buf[..n]);
            if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while request.len() < head_end + length {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&buf[..n]);
        }
        let written = match answer {
            Answer::Fixed(status, body) => {
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                let _ = socket.write_all(&body).await;
                body.len() as u64
            }
            Answer::Cut(bytes) => {
                let _ = socket.write_all(bytes).await;
                0
            }
            Answer::Redirect(location) => {
                let head = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                0
            }
            Answer::Endless(status) => {
                let head = format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n");
                socket.write_all(head.as_bytes()).await.unwrap();
                let chunk = [
                    format!("{:x}\r\n", 16 * 1024).into_bytes(),
                    vec![b'x'; 16 * 1024],
                    b"\r\n".to_vec(),
                ]
                .concat();
                let mut written = 0u64;
                // Writing fails once the client has dropped the connection.
                while socket.write_all(&chunk).await.is_ok() {
                    written += 16 * 1024;
                }
                written
            }
        };
        // A TLS stream may still hold the last records.
        let _ = socket.flush().await;
        written
    }

    async fn post(url: &str) -> Result<Outcome, ExecError> {
        let loopback = EgressPolicy::parse("127.0.0.0/8").unwrap();
        post_with(&Http::new(loopback), url).await
    }

    pub(super) async fn post_with(http: &Http, url: &str) -> Result<Outcome, ExecError> {
        let config = json!({"url": url, "timeoutSeconds": 30});
        let input = json!({});
        let job = Job {
            task_id: TaskId::generate(),
            unit: WorkUnit::Task { dispatch_id: "d-1" },
            config: &config,
            input: &input,
            attempt: 1,
        };
        http.run(&job).await
    }

    #[tokio::test]
    async fn an_endless_body_fails_the_run_at_the_limit_without_being_read() {
        let (url, server) = receiver(Answer::Endless(200)).await;
        // Read whole, this body would only end at the 30 s request timeout, as a retryable error.
        let outcome = post(&url).await;
        let Err(ExecError::Permanent(error)) = outcome else {
            panic!("expected a permanent error, got {outcome:?}");
        };
        assert!(
            error.contains("more than 65536 bytes") && error.contains("64 KiB"),
            "the error names the limit: {error}"
        );
        // The client dropped the connection: the receiver stopped with what the socket buffers
        // took, nowhere near what 30 s of loopback would carry.
        let written = server.await.unwrap();
        assert!(written < 64 * 1024 * 1024, "{written} bytes were sent");
    }

    #[tokio::test]
    async fn a_body_at_the_limit_is_the_result_and_one_byte_more_is_refused() {
        let (url, _server) = receiver(Answer::Fixed(200, vec![b'a'; MAX_RESPONSE_BYTES])).await;
        let Ok(Outcome::Done(Value::String(result))) = post(&url).await else {
            panic!("a 64 KiB body is a result");
        };
        assert_eq!(result.len(), MAX_RESPONSE_BYTES);

        let (url, _server) = receiver(Answer::Fixed(200, vec![b'a'; MAX_RESPONSE_BYTES + 1])).await;
        let outcome = post(&url).await;
        assert!(
            matches!(&outcome, Err(ExecError::Permanent(e)) if e.contains("limited to 65536 bytes")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_refusal_with_an_endless_body_gives_an_excerpt() {
        let (url, _server) = receiver(Answer::Endless(422)).await;
        let outcome = post(&url).await;
        let Err(ExecError::Permanent(error)) = outcome else {
            panic!("expected a permanent error, got {outcome:?}");
        };
        assert!(error.contains("422"), "{error}");
        assert!(error.ends_with(&"x".repeat(200)), "{error}");
    }

    /// A retryable error; panics on anything else.
    fn retryable(outcome: Result<Outcome, ExecError>) -> String {
        match outcome {
            Err(ExecError::Retryable(error)) => error,
            other => panic!("expected a retryable error, got {other:?}"),
        }
    }

    /// Fails every name, as a resolver that gets no answer does: no DNS query is sent.
    struct NoSuchName;

    impl Resolve for NoSuchName {
        fn resolve(&self, name: Name) -> Resolving {
            let host = name.as_str().to_owned();
            Box::pin(async move { Err(format!("no such host {host} (NXDOMAIN)").into()) })
        }
    }

    /// Accepts one connection, answers whatever comes first with these bytes, and closes.
    async fn speaks_first_bytes(answer: &'static [u8]) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(answer).await;
        });
        addr
    }

    /// "error sending request for url" said nothing of what failed; each stage says so now,
    /// with its cause. Only 127.0.0.1 is ever contacted (the name fails in the resolver).
    #[tokio::test]
    async fn a_failed_send_names_the_stage_that_failed() {
        let policy = Arc::new(EgressPolicy::parse("127.0.0.0/8").unwrap());
        let resolver = Arc::new(GuardedResolver {
            inner: Arc::new(NoSuchName),
            policy: policy.clone(),
        });
        let http = Http::with_parts(policy, resolver, base_client());
        let dns = retryable(post_with(&http, "http://billing.invalid/hook").await);
        assert!(
            dns.contains("DNS resolution of billing.invalid failed")
                && dns.contains("no such host billing.invalid (NXDOMAIN)"),
            "{dns}"
        );

        // A port with nothing listening on it.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let connect = retryable(post(&format!("http://127.0.0.1:{port}/hook")).await);
        assert!(
            connect.contains(&format!("the TCP connection to 127.0.0.1:{port} failed"))
                && connect.to_lowercase().contains("refused"),
            "{connect}"
        );

        // https to a server that speaks plain HTTP.
        let plain =
            speaks_first_bytes(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        let tls = retryable(post(&format!("https://{plain}/hook")).await);
        assert!(
            tls.contains(&format!("the TLS handshake with {plain} failed")),
            "{tls}"
        );

        // The response head breaks off.
        let cut = speaks_first_bytes(b"HTTP/1.1 200 OK\r\ncontent-le").await;
        let exchange = retryable(post(&format!("http://{cut}/hook")).await);
        assert!(
            exchange.contains(&format!(
                "the connection to {cut} was made, but the request or its response failed"
            )),
            "{exchange}"
        );
        for error in [&dns, &connect, &tls, &exchange] {
            assert!(!error.contains("error sending request"), "{error}");
        }

        // The body breaks off after its head.
        let (url, _server) = receiver(Answer::Cut(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"part",
        ))
        .await;
        let body = retryable(post(&url).await);
        assert!(
            body.contains("the response (200 OK) broke off before its end"),
            "{body}"
        );
    }

    /// An `Http` allowing loopback that also trusts the test CA (reqwest adds it to the webpki
    /// roots).
    fn trusting_the_test_ca() -> Http {
        let policy = Arc::new(EgressPolicy::parse("127.0.0.0/8").unwrap());
        let guard = Arc::new(GuardedResolver {
            inner: Arc::new(SystemResolver),
            policy: policy.clone(),
        });
        let ca = reqwest::Certificate::from_pem(TEST_CA).unwrap();
        Http::with_parts(policy, guard, base_client().add_root_certificate(ca))
    }

    /// https end to end with the process's one crypto provider (aws-lc-rs): the handshake, the
    /// certificate check against the roots, and the same body cap as over plain HTTP.
    #[tokio::test]
    async fn https_reaches_a_receiver_whose_certificate_verifies() {
        let http = trusting_the_test_ca();
        let (url, server) = tls_receiver(Answer::Fixed(200, br#"{"ok":true}"#.to_vec())).await;
        let outcome = post_with(&http, &url).await;
        assert_eq!(outcome, Ok(Outcome::Done(json!({"ok": true}))));
        assert_eq!(server.await.unwrap(), 11);

        let (url, server) = tls_receiver(Answer::Endless(200)).await;
        let outcome = post_with(&http, &url).await;
        assert!(
            matches!(&outcome, Err(ExecError::Permanent(e)) if e.contains("more than 65536 bytes")),
            "{outcome:?}"
        );
        let written = server.await.unwrap();
        assert!(written < 64 * 1024 * 1024, "{written} bytes were sent");
    }

    #[tokio::test]
    async fn https_refuses_a_certificate_no_trusted_root_signed() {
        // Http::new trusts the webpki roots only, which do not include the test CA.
        let (url, server) = tls_receiver(Answer::Fixed(200, b"{}".to_vec())).await;
        let error = retryable(post(&url).await);
        let addr = url.trim_start_matches("https://").trim_end_matches("/hook");
        assert!(
            error.contains(&format!("the TLS handshake with {addr} failed"))
                && error.contains("UnknownIssuer"),
            "{error}"
        );
        assert_eq!(server.await.unwrap(), 0, "no request got through");
    }

    #[tokio::test]
    async fn a_server_error_is_retried_without_reading_its_body() {
        let (url, _server) = receiver(Answer::Endless(503)).await;
        let outcome = post(&url).await;
        assert!(
            matches!(&outcome, Err(ExecError::Retryable(e)) if e.contains("503")),
            "{outcome:?}"
        );
    }
}
/// The egress guard, tested where it decides, without a packet leaving 127.0.0.0/8: names
/// resolve through a fixed map (never DNS), whatever the guard lets through passes a tripwire
/// that refuses any address outside 127.0.0.0/8 and records it, and IP-literal URLs outside
/// 127.0.0.0/8 (which reqwest connects to without resolving) are routed to a loopback "proxy"
/// that only counts connections. A broken guard fails these tests; it never reaches the
/// network.
#[cfg(test)]
mod egress_tests {
    use super::tests::{post_with, receiver, Answer};
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A guarded executor and what reached its connector.
    struct Guarded {
        http: Http,
        /// Addresses the guard let through for a name, in order.
        resolved: Arc<Mutex<Vec<IpAddr>>>,
        /// Connections to IP literals outside 127.0.0.0/8 (each would have left the machine).
        literal_escapes: Arc<AtomicUsize>,
    }

    impl Guarded {
        /// Asserts that nothing but 127.0.0.0/8 was ever handed to the connector.
        fn assert_contained(&self) {
            let resolved = self.resolved.lock().unwrap().clone();
            assert!(
                resolved.iter().all(|ip| is_loopback_v4(*ip)),
                "the guard let {resolved:?} through to the connector"
            );
            assert_eq!(
                self.literal_escapes.load(Ordering::SeqCst),
                0,
                "the guard let an IP-literal URL outside 127.0.0.0/8 through to the connector"
            );
        }

        fn resolved(&self) -> Vec<IpAddr> {
            self.resolved.lock().unwrap().clone()
        }
    }

    fn is_loopback_v4(ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 127)
    }

    /// Test names resolved from a map; anything else is an error, never a DNS query.
    struct MapResolver(Vec<(&'static str, Vec<IpAddr>)>);

    impl Resolve for MapResolver {
        fn resolve(&self, name: Name) -> Resolving {
            let found = self
                .0
                .iter()
                .find(|(n, _)| *n == name.as_str())
                .map(|(_, ips)| ips.clone());
            let host = name.as_str().to_owned();
            Box::pin(async move {
                let ips = found.ok_or_else(|| format!("{host} is not a test name"))?;
                let addrs: Vec<SocketAddr> =
                    ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
                Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
            })
        }
    }

    /// Sits between the guard and the connector: records every address, and refuses (so
    /// nothing connects) any outside 127.0.0.0/8.
    struct Tripwire {
        guard: GuardedResolver,
        seen: Arc<Mutex<Vec<IpAddr>>>,
    }

    impl Resolve for Tripwire {
        fn resolve(&self, name: Name) -> Resolving {
            let pending = self.guard.resolve(name);
            let seen = self.seen.clone();
            Box::pin(async move {
                let addrs: Vec<SocketAddr> = pending.await?.collect();
                seen.lock()
                    .unwrap()
                    .extend(addrs.iter().map(SocketAddr::ip));
                if addrs.iter().any(|a| !is_loopback_v4(a.ip())) {
                    return Err(
                        "tripwire: an address outside 127.0.0.0/8 reached the connector".into(),
                    );
                }
                Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
            })
        }
    }

    /// A loopback listener that counts connections: where literal escapes are sent.
    async fn escape_counter() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        (url, count)
    }

    async fn guarded(policy: EgressPolicy, names: Vec<(&'static str, Vec<IpAddr>)>) -> Guarded {
        let policy = Arc::new(policy);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tripwire = Arc::new(Tripwire {
            guard: GuardedResolver {
                inner: Arc::new(MapResolver(names)),
                policy: policy.clone(),
            },
            seen: seen.clone(),
        });
        let (escape_url, literal_escapes) = escape_counter().await;
        let divert = reqwest::Proxy::custom(move |url| {
            let host = url
                .host_str()?
                .trim_start_matches('[')
                .trim_end_matches(']');
            let ip: IpAddr = host.parse().ok()?;
            (!is_loopback_v4(ip)).then(|| escape_url.clone())
        });
        let http = Http::with_parts(policy, tripwire, base_client().proxy(divert));
        Guarded {
            http,
            resolved: seen,
            literal_escapes,
        }
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    fn allow(raw: &str) -> EgressPolicy {
        EgressPolicy::parse(raw).unwrap()
    }

    /// The run's permanent error; panics on anything else.
    async fn refused(guarded: &Guarded, url: &str) -> String {
        let outcome = post_with(&guarded.http, url).await;
        guarded.assert_contained();
        match outcome {
            Err(ExecError::Permanent(error)) => error,
            other => panic!("{url}: expected a permanent refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_allowed() {
        let (url, _server) = receiver(Answer::Fixed(200, b"{}".to_vec())).await;
        let strict = guarded(EgressPolicy::default(), vec![]).await;
        let error = refused(&strict, &url).await;
        assert!(error.contains("a loopback address"), "{error}");
        assert!(error.contains("HttpExecutorAllowedHosts"), "{error}");
        for other in [
            "http://[::1]:9/",
            "http://[::ffff:127.0.0.1]:9/",
            "http://127.8.9.10:9/",
        ] {
            let error = refused(&strict, other).await;
            assert!(error.contains("loopback"), "{other}: {error}");
        }

        let open = guarded(allow("127.0.0.0/8"), vec![]).await;
        assert_eq!(
            post_with(&open.http, &url).await,
            Ok(Outcome::Done(json!({})))
        );
    }

    #[tokio::test]
    async fn link_local_private_and_other_internal_literals_are_refused_by_class() {
        // Loopback is allowed, as in the tests: the other classes stay refused.
        let guard = guarded(allow("127.0.0.0/8"), vec![]).await;
        for (url, class) in [
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://169.254.170.2/v2/credentials", "link-local"),
            ("http://[fe80::1]/", "link-local"),
            (
                "http://[::ffff:169.254.169.254]/",
                "IPv4-mapped IPv6 form of a link-local",
            ),
            ("http://10.0.0.1/", "private"),
            ("http://172.16.5.4:8080/", "private"),
            ("http://192.168.1.1/", "private"),
            ("http://[fd00:ec2::254]/", "private"),
            ("http://100.64.0.1/", "carrier-grade NAT"),
            ("http://0.0.0.0/", "unspecified"),
            ("http://[::]/", "unspecified"),
            ("http://255.255.255.255/", "broadcast"),
            ("http://224.0.0.1/", "multicast"),
        ] {
            let error = refused(&guard, url).await;
            assert!(error.contains(class), "{url}: {error}");
            assert!(error.contains("refused"), "{url}: {error}");
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_forbidden_address_is_refused_at_connect_time() {
        let guard = guarded(
            allow("127.0.0.0/8"),
            vec![
                ("metadata.test", vec![ip("169.254.169.254")]),
                ("intranet.test", vec![ip("10.1.2.3"), ip("fd00::1")]),
            ],
        )
        .await;
        let error = refused(&guard, "http://metadata.test/latest/meta-data/").await;
        assert!(
            error.contains("metadata.test is 169.254.169.254, a link-local address"),
            "{error}"
        );
        let error = refused(&guard, "https://intranet.test/hook").await;
        assert!(
            error.contains("intranet.test is 10.1.2.3, a private address"),
            "{error}"
        );
        assert!(guard.resolved().is_empty());
    }

    #[tokio::test]
    async fn only_the_allowed_addresses_of_a_name_are_connected_to() {
        let (url, _server) = receiver(Answer::Fixed(200, b"\"ok\"".to_vec())).await;
        let port = url.rsplit(':').next().unwrap().trim_end_matches("/hook");
        let guard = guarded(
            allow("127.0.0.0/8"),
            vec![("mixed.test", vec![ip("10.0.0.7"), ip("127.0.0.1")])],
        )
        .await;
        let outcome = post_with(&guard.http, &format!("http://mixed.test:{port}/hook")).await;
        assert_eq!(outcome, Ok(Outcome::Done(json!("ok"))));
        assert_eq!(guard.resolved(), vec![ip("127.0.0.1")]);
        guard.assert_contained();
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        let guard = guarded(
            allow("127.0.0.0/8"),
            vec![("metadata.test", vec![ip("169.254.169.254")])],
        )
        .await;
        for location in [
            "http://169.254.169.254/latest/meta-data/",
            "http://metadata.test/latest/meta-data/",
            "http://10.0.0.1/",
        ] {
            let (url, _server) = receiver(Answer::Redirect(location)).await;
            let error = refused(&guard, &url).await;
            assert!(error.contains("302"), "{error}");
            assert!(
                error.contains(&format!("a redirect to {location}")),
                "{error}"
            );
            assert!(error.contains("does not follow redirects"), "{error}");
        }
        assert!(guard.resolved().is_empty());
    }

    #[tokio::test]
    async fn the_allowlist_opens_named_hosts_and_ranges_only() {
        let (url, _server) = receiver(Answer::Fixed(200, b"1".to_vec())).await;
        let port = url.rsplit(':').next().unwrap().trim_end_matches("/hook");
        let names = || {
            vec![
                ("hooks.internal.test", vec![ip("127.0.0.1")]),
                ("other.internal.test", vec![ip("127.0.0.1")]),
            ]
        };
        let guard = guarded(allow(" Hooks.Internal.Test. , 10.9.0.0/16"), names()).await;
        let outcome = post_with(
            &guard.http,
            &format!("http://hooks.internal.test:{port}/hook"),
        )
        .await;
        assert_eq!(outcome, Ok(Outcome::Done(json!(1))));
        let error = refused(&guard, &format!("http://other.internal.test:{port}/hook")).await;
        assert!(error.contains("loopback"), "{error}");
        let error = refused(&guard, &url).await;
        assert!(error.contains("loopback"), "{error}");
        // The range opens its own addresses and no others (10.9.0.0/16 is diverted to the
        // counter, so an allowed literal shows up as an escape rather than a packet).
        assert!(EgressPolicy::parse("10.9.0.0/16")
            .unwrap()
            .admit("x", ip("10.9.200.1"))
            .is_ok());
        let error = refused(&guard, "http://10.10.0.1/").await;
        assert!(error.contains("private"), "{error}");
    }

    #[tokio::test]
    async fn the_runtime_api_is_refused_even_with_loopback_allowed() {
        let (url, _server) = receiver(Answer::Fixed(200, b"{}".to_vec())).await;
        let address = url.trim_start_matches("http://").trim_end_matches("/hook");
        let port = address.rsplit(':').next().unwrap();
        let policy = allow("127.0.0.0/8").with_runtime_api(Some(address));
        let guard = guarded(policy, vec![("runtime.test", vec![ip("127.0.0.1")])]).await;
        let error = refused(&guard, &url).await;
        assert!(error.contains("Lambda Runtime API"), "{error}");
        let error = refused(
            &guard,
            &format!("http://runtime.test:{port}/2018-06-01/runtime/invocation/next"),
        )
        .await;
        assert!(error.contains("Lambda Runtime API"), "{error}");
    }

    #[test]
    fn the_allowlist_parses_names_addresses_and_ranges_and_names_a_bad_entry() {
        let policy = EgressPolicy::parse("127.0.0.0/8, ::1, api.example.com,").unwrap();
        assert!(policy.admit("x", ip("127.3.2.1")).is_ok());
        assert!(policy.admit("x", ip("::ffff:127.0.0.1")).is_ok());
        assert!(policy.admit("x", ip("::1")).is_ok());
        assert!(policy.admit("API.example.com", ip("10.0.0.1")).is_ok());
        assert!(policy.admit("x", ip("10.0.0.1")).is_err());
        // Public addresses need no allowlist.
        assert!(EgressPolicy::default()
            .admit("x", ip("93.184.216.34"))
            .is_ok());
        assert!(EgressPolicy::default()
            .admit("x", ip("2606:4700::1"))
            .is_ok());
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/x", "host name", "a_b"] {
            assert!(EgressPolicy::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            EgressPolicy::parse("10.0.0.0/33").unwrap_err(),
            "'10.0.0.0/33': the prefix length must be 0 to 32"
        );
    }
}
