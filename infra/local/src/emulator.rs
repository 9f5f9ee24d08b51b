//! The local AWS emulator: a pinned moto server from the project venv, bound to 127.0.0.1.
//!
//! The child process dies with its parent: `kill_on_drop`, an explicit kill in `Drop`, and
//! `PR_SET_PDEATHSIG` (Linux) so that a killed test binary or a Ctrl-C never leaves moto running.
//! The death signal follows the *thread* that spawned moto: call [`Emulator::start`] from async
//! code (the main thread or a runtime worker), never from inside `spawn_blocking`, whose threads
//! exit when idle.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use aws_config::SdkConfig;

/// How long [`Emulator::start`] waits for moto to answer.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The settings moto needs: run Step Functions executions (otherwise they stay RUNNING forever)
/// and never try Docker for Lambda.
fn moto_config() -> serde_json::Value {
    serde_json::json!({
        "stepfunctions": { "execute_state_machine": true },
        "lambda": { "use_docker": false }
    })
}

/// `python -c` script: `moto_server` with DynamoDB requests serialized and IAM enforced for
/// IAM users' keys (each function's credentials). Arguments: host, port. The file says why.
const MOTO_LAUNCHER: &str = include_str!("moto_launcher.py");

/// A running (or attached) moto server.
pub struct Emulator {
    /// e.g. `http://127.0.0.1:4566`.
    pub endpoint: String,
    child: Option<tokio::process::Child>,
    log_path: Option<PathBuf>,
    http: reqwest::Client,
    /// moto took its configuration (LocalStack, say, does not).
    moto: bool,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.as_ref().and_then(|c| c.id()))
            .field("log_path", &self.log_path)
            .finish()
    }
}

impl Emulator {
    /// Spawns `<venv>/bin/moto_server -H 127.0.0.1 -p <port>`, waits until it answers HTTP and
    /// applies the configuration. moto's output goes to `<venv>/../.local/moto-<port>.log`
    /// (truncated at each start).
    pub async fn start(venv_dir: &Path, port: u16) -> Result<Emulator> {
        let log_dir = venv_dir
            .parent()
            .map(|p| p.join(".local"))
            .unwrap_or_else(|| PathBuf::from(".local"));
        Self::start_with_log(
            venv_dir,
            port,
            Some(&log_dir.join(format!("moto-{port}.log"))),
        )
        .await
    }

    /// Like [`Emulator::start`], with moto's output written to `log` (`None`: discarded).
    pub async fn start_with_log(
        venv_dir: &Path,
        port: u16,
        log: Option<&Path>,
    ) -> Result<Emulator> {
        Self::start_launched(venv_dir, port, log).await
    }

    /// Like [`Emulator::start`], for a moto that serves DynamoDB alone (the hybrid backend):
    /// the same server with DynamoDB requests handled one at a time. moto 5.2.5's
    /// TransactWriteItems deep-copies the whole table without a lock, so a concurrent write
    /// makes it fail with HTTP 500 (`RuntimeError: dictionary changed size during
    /// iteration`); moto is bound by Python's GIL anyway, so serializing costs little.
    pub async fn start_for_dynamodb(venv_dir: &Path, port: u16) -> Result<Emulator> {
        let log_dir = venv_dir
            .parent()
            .map(|p| p.join(".local"))
            .unwrap_or_else(|| PathBuf::from(".local"));
        Self::start_launched(
            venv_dir,
            port,
            Some(&log_dir.join(format!("moto-{port}.log"))),
        )
        .await
    }

    async fn start_launched(venv_dir: &Path, port: u16, log: Option<&Path>) -> Result<Emulator> {
        let binary = venv_dir.join("bin").join("moto_server");
        if !binary.is_file() {
            bail!(
                "moto_server not found at {}: run `make venv` to create the project venv \
                 (or set MOTO_VENV to a venv with moto[server] installed)",
                binary.display()
            );
        }

        let (stdout, stderr, log_path) = match log.map(open_log).transpose() {
            Ok(Some((file, path))) => {
                let err = file
                    .try_clone()
                    .context("duplicating the moto log handle")?;
                (Stdio::from(file), Stdio::from(err), Some(path))
            }
            Ok(None) => (Stdio::null(), Stdio::null(), None),
            Err(e) => {
                tracing::warn!("cannot open the moto log ({e:#}); discarding its output");
                (Stdio::null(), Stdio::null(), None)
            }
        };

        // moto's own server and application, with DynamoDB requests serialized (moto 5.2.5's
        // TransactWriteItems is not thread-safe; see `start_for_dynamodb`) and IAM checked
        // for the functions' keys (see moto_launcher.py).
        let mut command = tokio::process::Command::new(venv_dir.join("bin").join("python"));
        command.args(["-c", MOTO_LAUNCHER, "127.0.0.1", &port.to_string()]);
        // What moto_server sets when MOTO_PORT is unset.
        command.env("MOTO_PORT", port.to_string());
        command
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;

        let mut emulator = Emulator {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log_path,
            http: http_client()?,
            moto: true,
        };
        let log_hint = match &emulator.log_path {
            Some(p) => format!("see its log {}", p.display()),
            None => "its output was discarded".to_string(),
        };

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = emulator.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking moto_server")? {
                    bail!(
                        "moto_server exited ({status}) before answering on {}; {log_hint}{}",
                        emulator.endpoint,
                        emulator.log_tail()
                    );
                }
            }
            if emulator.answers().await {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "moto_server did not answer on {} within {} s; {log_hint}{}",
                    emulator.endpoint,
                    START_DEADLINE.as_secs(),
                    emulator.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        emulator
            .configure()
            .await
            .with_context(|| format!("configuring moto; {log_hint}"))?;
        tracing::info!(
            endpoint = %emulator.endpoint,
            log = ?emulator.log_path,
            "moto server started"
        );
        Ok(emulator)
    }

    /// Attaches to an emulator that is already running at `endpoint` and applies the moto
    /// configuration (only warns if the endpoint is not moto, e.g. LocalStack). Nothing is
    /// owned: [`Emulator::stop`] leaves it running.
    pub async fn attach(endpoint: &str) -> Result<Emulator> {
        let mut emulator = Emulator {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            child: None,
            log_path: None,
            http: http_client()?,
            moto: true,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !emulator.answers().await {
            if Instant::now() >= deadline {
                bail!("no emulator answers at {}", emulator.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = emulator.configure().await {
            // Not moto (LocalStack, say): nothing to configure.
            emulator.moto = false;
            tracing::warn!(
                "{} did not take the moto configuration ({e:#}); assuming another emulator",
                emulator.endpoint
            );
        }
        Ok(emulator)
    }

    /// Whether this is moto (started here, or attached and configured).
    pub fn is_moto(&self) -> bool {
        self.moto
    }

    /// Clears all emulator state (`POST /moto-api/reset`) and re-applies the configuration.
    pub async fn reset(&self) -> Result<()> {
        let url = format!("{}/moto-api/reset", self.endpoint);
        let resp = self
            .http
            .post(&url)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !resp.status().is_success() {
            bail!("POST {url} answered {}", resp.status());
        }
        self.configure().await
    }

    /// The file moto's output goes to, if any.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// The pid of the owned moto process (`None` when attached).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Stops the owned moto process and waits for it; an attached emulator is left running.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.start_kill() {
                tracing::debug!("killing moto_server: {e}");
            }
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(status)) => tracing::debug!("moto_server stopped ({status})"),
                Ok(Err(e)) => tracing::warn!("waiting for moto_server: {e}"),
                Err(_) => tracing::warn!("moto_server did not exit within 5 s"),
            }
        }
    }

    async fn answers(&self) -> bool {
        self.http
            .get(format!("{}/moto-api/config", self.endpoint))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok()
    }

    async fn configure(&self) -> Result<()> {
        let url = format!("{}/moto-api/config", self.endpoint);
        let resp = self
            .http
            .post(&url)
            .json(&moto_config())
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST {url} answered {status}: {body}");
        }
        let applied: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("POST {url} answered {body:?}"))?;
        // moto echoes only `batch` and `lambda` (never `stepfunctions`), so check what it shows.
        if applied["lambda"]["use_docker"] != serde_json::Value::Bool(false) {
            bail!("moto did not take the configuration: {body}");
        }
        Ok(())
    }

    /// The last lines of the log, for error messages.
    fn log_tail(&self) -> String {
        let Some(text) = self
            .log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n--- moto log (last lines) ---\n{tail}")
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn open_log(path: &Path) -> Result<(std::fs::File, PathBuf)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok((file, path.to_path_buf()))
}

fn http_client() -> Result<reqwest::Client> {
    shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| anyhow!("building the HTTP client: {e}"))
}

/// Makes `command`'s child die (SIGKILL: emulators keep state only in memory, and a large
/// one can take minutes to exit gracefully) with its parent (Linux `PR_SET_PDEATHSIG`), so
/// that a killed test binary or a Ctrl-C never leaves an emulator running.
fn die_with_parent(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let signal = libc::SIGKILL;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        let parent = std::process::id() as libc::pid_t;
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may already have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (command, signal);
}

/// How long [`LocalStackServer::start`] waits for LocalStack's health check (it answers in
/// about 1.5 s here; a cold page cache after an install makes it slower).
const LOCALSTACK_START_DEADLINE: Duration = Duration::from_secs(90);

/// The LocalStack services the hybrid backend uses (names as `/_localstack/health` gives them).
pub const LOCALSTACK_SERVICES: [&str; 3] = ["sqs", "stepfunctions", "s3"];

/// The SDK service ids ([`Endpoints::services`] keys) that go to LocalStack in the hybrid
/// backend: the same services as [`LOCALSTACK_SERVICES`].
pub const LOCALSTACK_SERVICE_IDS: [&str; 3] = ["SQS", "SFN", "S3"];

/// LocalStack's own runtime as a host process (no Docker), from a venv made with Python 3.13
/// (`make venv-localstack`), bound to 127.0.0.1. It serves SQS, Step Functions and S3 only:
/// its DynamoDB downloads Java and DynamoDB Local at run time and its Lambda needs Docker,
/// so the hybrid backend keeps DynamoDB on moto.
///
/// Like moto, the child dies with its parent (`kill_on_drop`, `Drop`, `PR_SET_PDEATHSIG`).
pub struct LocalStackServer {
    /// e.g. `http://127.0.0.1:4566`.
    pub endpoint: String,
    child: Option<tokio::process::Child>,
    log_path: Option<PathBuf>,
    scratch: Option<PathBuf>,
    http: reqwest::Client,
}

impl std::fmt::Debug for LocalStackServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStackServer")
            .field("endpoint", &self.endpoint)
            .field("pid", &self.child.as_ref().and_then(|c| c.id()))
            .field("log_path", &self.log_path)
            .finish()
    }
}

impl LocalStackServer {
    /// Starts `<venv>/bin/python -m localstack.runtime.main` on `127.0.0.1:<port>` and waits
    /// until `/_localstack/health` reports SQS, Step Functions and S3 running. Its state and
    /// temporary files live in `<venv>/../.local/localstack/<port>/` (emptied at each start,
    /// removed by [`LocalStackServer::stop`]); its output goes to
    /// `<venv>/../.local/localstack-<port>.log`.
    pub async fn start(venv_dir: &Path, port: u16) -> Result<LocalStackServer> {
        let local = venv_dir
            .parent()
            .map(|p| p.join(".local"))
            .unwrap_or_else(|| PathBuf::from(".local"));
        Self::start_in(
            venv_dir,
            port,
            &local.join("localstack").join(port.to_string()),
            &local.join(format!("localstack-{port}.log")),
        )
        .await
    }

    /// Like [`LocalStackServer::start`], with an explicit scratch folder and log file.
    pub async fn start_in(
        venv_dir: &Path,
        port: u16,
        scratch: &Path,
        log: &Path,
    ) -> Result<LocalStackServer> {
        let python = venv_dir.join("bin").join("python");
        if !python.is_file() {
            bail!(
                "no LocalStack venv at {}: run `make venv-localstack` to create it \
                 (or set LOCALSTACK_VENV to a venv with localstack-core[runtime] installed)",
                venv_dir.display()
            );
        }
        if scratch.exists() {
            std::fs::remove_dir_all(scratch)
                .with_context(|| format!("emptying {}", scratch.display()))?;
        }
        let (filesystem_root, tmp) = (scratch.join("fs"), scratch.join("tmp"));
        for dir in [&filesystem_root, &tmp] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (file, log_path) = open_log(log)?;
        let err = file
            .try_clone()
            .context("duplicating the LocalStack log handle")?;

        let listen = format!("127.0.0.1:{port}");
        let mut command = tokio::process::Command::new(&python);
        command
            .args(["-m", "localstack.runtime.main"])
            .current_dir(scratch)
            // Bind to loopback only: hypercorn honours GATEWAY_LISTEN (the default server
            // binds 0.0.0.0).
            .env("GATEWAY_LISTEN", &listen)
            .env("GATEWAY_SERVER", "hypercorn")
            .env("LOCALSTACK_HOST", &listen)
            // No DNS server (it would want port 53), no analytics, no certificate download.
            .env("DNS_ADDRESS", "0")
            .env("DISABLE_EVENTS", "1")
            .env("SKIP_SSL_CERT_DOWNLOAD", "1")
            .env("FILESYSTEM_ROOT", &filesystem_root)
            .env("TMPDIR", &tmp)
            // No SERVICES list: Step Functions needs more than it names (a Distributed Map's
            // ItemReader calls sts:AssumeRole, executions notify `events`); with
            // SERVICES=sqs,stepfunctions,s3 they fail with "Service 'sts' is not enabled".
            // Services load on first use (Step Functions takes about 1.5 s).
            .env_remove("SERVICES")
            .env_remove("EAGER_SERVICE_LOADING")
            // Queue URLs as http://127.0.0.1:<port>/queue/<region>/<account>/<name>; the
            // default (`sqs.<region>.<LOCALSTACK_HOST>`) is not a resolvable host name.
            .env("SQS_ENDPOINT_STRATEGY", "path")
            .env("PERSISTENCE", "0")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        // SIGKILL: LocalStack's graceful shutdown can take seconds; nothing of it is kept.
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} -m localstack.runtime.main", python.display()))?;

        let mut server = LocalStackServer {
            endpoint: format!("http://{listen}"),
            child: Some(child),
            log_path: Some(log_path),
            scratch: Some(scratch.to_path_buf()),
            http: http_client()?,
        };
        let log_hint = format!("see its log {}", log.display());
        let started = Instant::now();
        let deadline = started + LOCALSTACK_START_DEADLINE;
        loop {
            if let Some(child) = server.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking LocalStack")? {
                    bail!(
                        "LocalStack exited ({status}) before it was ready on {}; {log_hint}{}",
                        server.endpoint,
                        server.log_tail()
                    );
                }
            }
            let last = match server.health().await {
                Ok(()) => break,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "LocalStack was not ready on {} within {} s (last health check: {last:#}); \
                     {log_hint}{}",
                    server.endpoint,
                    LOCALSTACK_START_DEADLINE.as_secs(),
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!(
            endpoint = %server.endpoint,
            log = ?server.log_path,
            seconds = started.elapsed().as_secs_f32(),
            "LocalStack started"
        );
        Ok(server)
    }

    /// Attaches to a LocalStack that is already running (a Docker container, or another
    /// process's host runtime) and checks that SQS, Step Functions and S3 are up. Nothing is
    /// owned: [`LocalStackServer::stop`] leaves it running.
    pub async fn attach(endpoint: &str) -> Result<LocalStackServer> {
        let server = LocalStackServer {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            child: None,
            log_path: None,
            scratch: None,
            http: http_client()?,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match server.health().await {
                Ok(()) => return Ok(server),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("no ready LocalStack at {}", server.endpoint)))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// The file LocalStack's output goes to, if this process started it.
    pub fn log_path(&self) -> Option<&Path> {
        self.log_path.as_deref()
    }

    /// The pid of the owned LocalStack process (`None` when attached).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Stops the owned LocalStack (SIGTERM, then SIGKILL after 10 s), waits for it and removes
    /// its scratch folder; an attached one is left running.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let exited = match child.id() {
            Some(pid) => {
                // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_ok()
            }
            None => true,
        };
        if !exited {
            tracing::warn!("LocalStack did not stop within 10 s of SIGTERM; killing it");
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        if let Some(scratch) = self.scratch.take() {
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                tracing::debug!("removing {}: {e}", scratch.display());
            }
        }
    }

    /// `Ok` when `/_localstack/health` answers and every one of [`LOCALSTACK_SERVICES`] is
    /// `running` or `available`.
    async fn health(&self) -> Result<()> {
        let url = format!("{}/_localstack/health", self.endpoint);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET {url} answered {status}: {body}");
        }
        let health: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET {url} answered {body:?}"))?;
        let not_ready: Vec<String> = LOCALSTACK_SERVICES
            .iter()
            .filter_map(|service| {
                let state = health["services"][service].as_str().unwrap_or("missing");
                (!matches!(state, "running" | "available")).then(|| format!("{service}: {state}"))
            })
            .collect();
        if !not_ready.is_empty() {
            bail!("not ready: {}", not_ready.join(", "));
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let Some(text) = self
            .log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        else {
            return String::new();
        };
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n--- LocalStack log (last lines) ---\n{tail}")
        }
    }
}

impl Drop for LocalStackServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Where each AWS service is reached: a default endpoint, and endpoints of their own for some
/// services, keyed by the SDK's service id (`"DynamoDB"`, `"SQS"`, `"SFN"`, `"S3"`). This is
/// what `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` do for a process that loads its
/// configuration from the environment, as the functions do on Lambda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Every service without an endpoint of its own.
    pub default: String,
    /// Service id → endpoint.
    pub services: std::collections::BTreeMap<String, String>,
}

impl Endpoints {
    /// Every service at one endpoint.
    pub fn single(endpoint: &str) -> Endpoints {
        Endpoints {
            default: endpoint.trim_end_matches('/').to_string(),
            services: Default::default(),
        }
    }

    /// The hybrid: SQS, Step Functions and S3 at `localstack`, DynamoDB (and anything else)
    /// at `moto`.
    pub fn hybrid(moto: &str, localstack: &str) -> Endpoints {
        let mut endpoints = Endpoints::single(moto);
        for id in LOCALSTACK_SERVICE_IDS {
            endpoints
                .services
                .insert(id.to_string(), localstack.trim_end_matches('/').to_string());
        }
        endpoints
    }

    /// The endpoint the SDK client for `service_id` uses.
    pub fn endpoint_for(&self, service_id: &str) -> &str {
        self.services
            .get(service_id)
            .map(String::as_str)
            .unwrap_or(&self.default)
    }

    /// The same routing as environment variables (`AWS_ENDPOINT_URL`,
    /// `AWS_ENDPOINT_URL_SQS`, …), e.g. for a process that loads its configuration from the
    /// environment.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let mut vars = vec![("AWS_ENDPOINT_URL".to_string(), self.default.clone())];
        for (id, endpoint) in &self.services {
            vars.push((
                format!("AWS_ENDPOINT_URL_{}", id.to_uppercase().replace(' ', "_")),
                endpoint.clone(),
            ));
        }
        vars
    }
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.services.is_empty() {
            return f.write_str(&self.default);
        }
        write!(f, "{} (default)", self.default)?;
        for (id, endpoint) in &self.services {
            write!(f, ", {id} {endpoint}")?;
        }
        Ok(())
    }
}

/// Per-service endpoints as SDK service configuration: each client built from the
/// `SdkConfig` (`aws_sdk_x::Client::new`, `Builder::from`) asks it for its endpoint before it
/// falls back to the config's global `endpoint_url`, exactly as it would read
/// `AWS_ENDPOINT_URL_<SERVICE>` from the environment.
#[derive(Debug)]
struct ServiceEndpoints(std::collections::BTreeMap<String, String>);

impl aws_types::service_config::LoadServiceConfig for ServiceEndpoints {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        if key.env() != "AWS_ENDPOINT_URL" {
            return None;
        }
        self.0.get(key.service_id()).cloned()
    }
}

/// A TCP port that is free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// An `SdkConfig` pointing every service at `endpoint`, region us-east-1, static credentials
/// `test`/`test` (moto accepts anything; presigned URLs need some credentials).
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "local-stack",
        ))
        .load()
        .await
}

/// Like [`sdk_config`], with each service at its endpoint in `endpoints`: the global
/// `endpoint_url` is `endpoints.default` (so S3 stays path-style) and each per-service one
/// wins over it, as `AWS_ENDPOINT_URL_<SERVICE>` wins over `AWS_ENDPOINT_URL`. The
/// process environment's `AWS_ENDPOINT_URL_*` are not consulted (nor are they by
/// [`sdk_config`]). With no per-service endpoints this is exactly [`sdk_config`].
pub async fn sdk_config_for(endpoints: &Endpoints) -> aws_config::SdkConfig {
    let config = sdk_config(&endpoints.default).await;
    if endpoints.services.is_empty() {
        return config;
    }
    let mut builder = config
        .into_builder()
        .service_config(ServiceEndpoints(endpoints.services.clone()));
    // A programmatic (loader) endpoint_url takes precedence over every per-service one; from
    // the environment (AWS_ENDPOINT_URL) it does not. Mark it as the latter.
    builder.insert_origin(
        "endpoint_url",
        aws_types::origin::Origin::shared_environment_variable(),
    );
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_venv_says_how_to_create_it() {
        let err = Emulator::start(Path::new("/nonexistent/venv"), free_port())
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("make venv"), "{msg}");
        assert!(msg.contains("/nonexistent/venv/bin/moto_server"), "{msg}");
    }

    #[tokio::test]
    async fn attach_fails_when_nothing_listens() {
        let port = free_port();
        let err = Emulator::attach(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("no emulator answers"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_missing_localstack_venv_says_how_to_create_it() {
        let err = LocalStackServer::start(Path::new("/nonexistent/lsvenv"), free_port())
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("make venv-localstack"), "{msg}");
    }

    #[tokio::test]
    async fn attach_to_localstack_fails_when_nothing_listens() {
        let port = free_port();
        let err = LocalStackServer::attach(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("no ready LocalStack"),
            "{err:#}"
        );
    }

    #[test]
    fn hybrid_endpoints_route_sqs_sfn_s3_to_localstack() {
        let e = Endpoints::hybrid("http://127.0.0.1:1/", "http://127.0.0.1:2");
        assert_eq!(e.endpoint_for("DynamoDB"), "http://127.0.0.1:1");
        for id in ["SQS", "SFN", "S3"] {
            assert_eq!(e.endpoint_for(id), "http://127.0.0.1:2");
        }
        let vars = e.env_vars();
        assert!(vars.contains(&("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:1".into())));
        assert!(vars.contains(&("AWS_ENDPOINT_URL_SFN".into(), "http://127.0.0.1:2".into())));
        assert_eq!(Endpoints::single("http://x/").env_vars().len(), 1);
    }

    /// A listener that answers every request with a 400 and reports each request's
    /// `x-amz-target` header (the JSON protocols' operation name).
    async fn recording_listener() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 16384];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let target = head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-amz-target:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let _ = tx.send(target);
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn clients_from_a_hybrid_config_reach_their_own_endpoints() {
        let (moto, mut moto_seen) = recording_listener().await;
        let (localstack, mut localstack_seen) = recording_listener().await;
        let sdk = sdk_config_for(&Endpoints::hybrid(&moto, &localstack)).await;
        let clients = shared::aws::AwsClients::new(&sdk);

        let _ = clients.dynamodb.list_tables().send().await;
        let _ = clients.sqs.list_queues().send().await;
        let _ = clients.sfn.list_state_machines().send().await;
        let moto_targets: Vec<String> = std::iter::from_fn(|| moto_seen.try_recv().ok()).collect();
        let localstack_targets: Vec<String> =
            std::iter::from_fn(|| localstack_seen.try_recv().ok()).collect();
        assert!(
            moto_targets.iter().all(|t| t.starts_with("dynamodb_")) && !moto_targets.is_empty(),
            "moto saw {moto_targets:?}"
        );
        assert!(
            localstack_targets
                .iter()
                .any(|t| t.starts_with("amazonsqs."))
                && localstack_targets
                    .iter()
                    .any(|t| t.starts_with("awsstepfunctions."))
                && localstack_targets
                    .iter()
                    .all(|t| !t.starts_with("dynamodb_")),
            "LocalStack saw {localstack_targets:?}"
        );

        // S3 (presigned URLs included) goes to LocalStack, path-style.
        let presigned = clients
            .s3
            .put_object()
            .bucket("bucket")
            .key("a/b.txt")
            .presigned(
                aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(60))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(
            presigned
                .uri()
                .starts_with(&format!("{localstack}/bucket/a/b.txt?")),
            "{}",
            presigned.uri()
        );
    }

    #[tokio::test]
    async fn a_single_endpoint_config_is_the_plain_one() {
        let single = sdk_config_for(&Endpoints::single("http://127.0.0.1:9")).await;
        assert_eq!(single.endpoint_url(), Some("http://127.0.0.1:9"));
        assert!(single.service_config().is_some());
    }

    #[test]
    fn free_ports_are_usable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
