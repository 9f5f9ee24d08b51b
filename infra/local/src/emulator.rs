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

/// A running (or attached) moto server.
pub struct Emulator {
    /// e.g. `http://127.0.0.1:4566`.
    pub endpoint: String,
    child: Option<tokio::process::Child>,
    log_path: Option<PathBuf>,
    http: reqwest::Client,
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

        let mut command = tokio::process::Command::new(&binary);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the closure runs in the forked child before exec and only calls
            // async-signal-safe functions (prctl, getppid, _exit).
            let parent = std::process::id() as libc::pid_t;
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
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
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;

        let mut emulator = Emulator {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log_path,
            http: http_client()?,
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
        let emulator = Emulator {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            child: None,
            log_path: None,
            http: http_client()?,
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
            tracing::warn!(
                "{} did not take the moto configuration ({e:#}); assuming another emulator",
                emulator.endpoint
            );
        }
        Ok(emulator)
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
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| anyhow!("building the HTTP client: {e}"))
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

    #[test]
    fn free_ports_are_usable() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
}
