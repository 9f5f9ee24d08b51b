//! A small signed HTTP client for the local API.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: &str, secret: &[u8], agency: &str, user: &str, role: &str) -> Api {
        shared::tls::install_crypto_provider();
        Api {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            base: base.to_owned(),
            token: local_stack::jwt::sign(secret, user, agency, role, 24 * 3600),
        }
    }

    /// Sends a request; returns (status, body, milliseconds taken).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value, f64)> {
        let started = Instant::now();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.context("calling the API")?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, body, ms))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value, f64)> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.call(reqwest::Method::GET, path, None).await?.1)
    }

    /// Creates a task, retrying server errors; returns (id, ms of the successful call).
    pub async fn create(&self, body: &Value) -> Result<(String, f64)> {
        for _ in 0..5 {
            let (status, reply, ms) = self.post("/api/tasks", body).await?;
            if status == 201 {
                return Ok((reply["id"].as_str().unwrap_or_default().to_owned(), ms));
            }
            if status < 500 {
                bail!("create refused ({status}): {reply}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("create kept failing")
    }

    /// Polls until every listed task is final; returns the tasks.
    pub async fn wait_all(&self, ids: &[String], timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            loop {
                let task = self.get(&format!("/api/tasks/{id}")).await?;
                let status = task["status"].as_str().unwrap_or_default();
                if ["completed", "failed", "cancelled"].contains(&status) {
                    done.push(task);
                    break;
                }
                if Instant::now() > deadline {
                    bail!("task {id} still {status} after {timeout:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(done)
    }
}

/// Milliseconds between two RFC 3339 timestamps of a task.
pub fn between(task: &Value, from: &str, to: &str) -> Option<f64> {
    let parse = |f: &str| {
        task[f]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    Some((parse(to)? - parse(from)?).num_microseconds()? as f64 / 1000.0)
}
