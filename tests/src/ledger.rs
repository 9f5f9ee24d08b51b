//! The execution ledger: an HTTP endpoint on 127.0.0.1 for the `http` executor that records
//! every run it receives, so tests count real executions instead of task records.
//!
//! Each run is kept with what the executor sends: the task, the attempt, and the unit of work
//! (`dispatchId` for a task, `step` for a chain step, `itemIndex` for a batch item). A test can
//! hold runs open ([`Ledger::hold`]) to have work provably in flight while it breaks something,
//! script answers per run ([`Ledger::answering`]), and make a run slow (`{"delayMs": n}` in its
//! input).

use serde_json::{json, Value};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One run of an executor, as the ledger received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Order of arrival, from 0.
    pub seq: usize,
    pub task_id: String,
    pub attempt: u64,
    pub dispatch_id: Option<String>,
    pub step: Option<String>,
    pub item_index: Option<u64>,
    pub input: Value,
    /// Answered (the executor may still have lost the answer, e.g. when its host died).
    pub answered: bool,
}

/// Decides the HTTP status for a run; it sees the run and the earlier runs of the same unit.
pub type Answer = dyn Fn(&Run, &[Run]) -> u16 + Send + Sync;

#[derive(Default)]
struct State {
    runs: Vec<Run>,
}

pub struct Ledger {
    pub url: String,
    state: Arc<Mutex<State>>,
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Ledger {
    /// Answers 200 to every run.
    pub fn start() -> Ledger {
        Ledger::answering(|_, _| 200)
    }

    /// Answers each run with the status `answer` picks.
    pub fn answering(answer: impl Fn(&Run, &[Run]) -> u16 + Send + Sync + 'static) -> Ledger {
        let answer: Arc<Answer> = Arc::new(answer);
        let state = Arc::new(Mutex::new(State::default()));
        let (held, _) = tokio::sync::watch::channel(false);
        let held = Arc::new(held);
        let (shared, gate) = (state.clone(), held.clone());
        let addr = crate::serve_loopback(move |stream| {
            serve(stream, shared.clone(), answer.clone(), gate.subscribe())
        });
        let url = format!("http://{addr}/run");
        Ledger { url, state, held }
    }

    /// From now on, runs are recorded but not answered until [`Ledger::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Every run so far, in order of arrival.
    pub fn runs(&self) -> Vec<Run> {
        lock(&self.state).runs.clone()
    }

    /// The runs of one task (all its steps or items included), in order of arrival.
    pub fn runs_of(&self, task_id: &str) -> Vec<Run> {
        self.runs()
            .into_iter()
            .filter(|r| r.task_id == task_id)
            .collect()
    }

    /// Runs received and not answered yet.
    pub fn open(&self) -> Vec<Run> {
        self.runs().into_iter().filter(|r| !r.answered).collect()
    }

    /// Waits until at least `count` runs satisfy `matches`; returns all the runs then.
    pub async fn wait_for(
        &self,
        what: &str,
        count: usize,
        matches: impl Fn(&Run) -> bool,
    ) -> Vec<Run> {
        crate::eventually(what, crate::scaled(Duration::from_secs(60)), || {
            let runs = self.runs();
            let seen = runs.iter().filter(|r| matches(r)).count();
            std::future::ready((seen >= count).then_some(runs))
        })
        .await
    }
}

/// The `(attempt, dispatchId)` of each run of a task, in order: what a test compares with the
/// task's own record. Runs of the same dispatch carry increasing attempts, never one twice.
pub fn attempts(runs: &[Run]) -> Vec<(u64, Option<String>)> {
    runs.iter()
        .map(|r| (r.attempt, r.dispatch_id.clone()))
        .collect()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    answer: Arc<Answer>,
    mut gate: tokio::sync::watch::Receiver<bool>,
) {
    let Some(body) = read_request(&mut stream).await else {
        return;
    };
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (seq, status) = {
        let mut state = lock(&state);
        let run = Run {
            seq: state.runs.len(),
            task_id: payload["taskId"].as_str().unwrap_or_default().to_owned(),
            attempt: payload["attempt"].as_u64().unwrap_or_default(),
            dispatch_id: payload["dispatchId"].as_str().map(str::to_owned),
            step: payload["step"].as_str().map(str::to_owned),
            item_index: payload["itemIndex"].as_u64(),
            input: payload["input"].clone(),
            answered: false,
        };
        let earlier: Vec<Run> = state
            .runs
            .iter()
            .filter(|r| {
                r.task_id == run.task_id && r.step == run.step && r.item_index == run.item_index
            })
            .cloned()
            .collect();
        let status = answer(&run, &earlier);
        state.runs.push(run);
        (state.runs.len() - 1, status)
    };
    // Held runs stay open; a dropped connection (the executor's host died) ends them unanswered.
    let _ = gate.wait_for(|held| !*held).await;
    // An input may ask the endpoint to be slow: `{"delayMs": n}` answers n ms later.
    if let Some(ms) = payload["input"]["delayMs"].as_u64() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = json!({"run": seq}).to_string();
    if write_response(&mut stream, status, &body).await.is_ok() {
        lock(&state).runs[seq].answered = true;
    }
}

/// Reads one HTTP/1.1 request (headers and the body its Content-Length announces); returns
/// the body, or None when the peer went away first.
pub async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
        let Some(split) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let headers = String::from_utf8_lossy(&request[..split]).to_ascii_lowercase();
        let length = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if request.len() >= split + 4 + length {
            return Some(request[split + 4..split + 4 + length].to_vec());
        }
    }
}

/// Writes a JSON response and closes the connection.
pub async fn write_response(
    stream: &mut tokio::net::TcpStream,
    status: u16,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}
