//! The BullMQ + Redis peer (bench/peer), run on this machine in the same
//! harness run: same work per task, same per-tier concurrency.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;

pub struct Redis {
    child: tokio::process::Child,
    pub url: String,
    pub pid: u32,
}

impl Redis {
    pub async fn start() -> Result<Redis> {
        let port = local_stack::emulator::free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (make bench installs it)")?;
        let pid = child.id().unwrap_or(0);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(Redis {
                    child,
                    url: format!("redis://127.0.0.1:{port}"),
                    pid,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        bail!("redis-server did not start")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Runs one peer scenario; returns its JSON result line.
pub async fn run(repo: &Path, redis: &Redis, args: &[&str], env: &[(&str, &str)]) -> Result<Value> {
    let out = Command::new("node")
        .arg(repo.join("bench/peer/run.mjs"))
        .args(args)
        .envs(env.iter().copied())
        .env("REDIS_URL", &redis.url)
        .env("REDIS_PID", redis.pid.to_string())
        .current_dir(repo.join("bench/peer"))
        .output()
        .await
        .context("running the BullMQ peer")?;
    if !out.status.success() {
        bail!(
            "peer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("peer printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}
