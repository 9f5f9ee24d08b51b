//! A Lambda function for the local runtime's own tests: it does what each event asks, so a
//! test can make an invocation slow, greedy, panicking or crashing on purpose.
//!
//! Event: `{"sleepMs": n, "allocateMb": n, "panic": "message", "exit": code}`, all optional.
//! Response: `{"pid": <process id>, "invocations": <count in this process>}`.

use lambda_runtime::{run, service_fn, Error, LambdaEvent};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let count = INVOCATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    let ask = event.payload;
    if let Some(mb) = ask["allocateMb"].as_u64() {
        // Touch every page, so the memory is resident, not only reserved.
        let held = vec![1u8; (mb as usize) << 20];
        tokio::time::sleep(std::time::Duration::from_millis(
            ask["sleepMs"].as_u64().unwrap_or(2000),
        ))
        .await;
        std::hint::black_box(&held);
    } else if let Some(ms) = ask["sleepMs"].as_u64() {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(message) = ask["panic"].as_str() {
        panic!("{message}");
    }
    if let Some(code) = ask["exit"].as_i64() {
        std::process::exit(code as i32);
    }
    Ok(json!({"pid": std::process::id(), "invocations": count}))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    run(service_fn(handle)).await
}
