//! The local Lambda runtime against a real binary (`lambda-fixture`, which does what each
//! event asks): warm reuse, the `Timeout`, `MemorySize`, panics and crashes.

use local_stack::runtime::{FunctionConfig, FunctionRuntime, InvokeError};
use serde_json::{json, Value};
use std::time::Duration;

fn fixture(timeout: Duration, memory_mb: u64) -> FunctionRuntime {
    FunctionRuntime::new(FunctionConfig {
        name: "Fixture".into(),
        binary: env!("CARGO_BIN_EXE_lambda-fixture").into(),
        environment: Vec::new(),
        timeout,
        memory_mb,
    })
}

async fn invoke(runtime: &FunctionRuntime, event: Value) -> Result<Value, InvokeError> {
    let body = runtime.invoke(event.to_string().into_bytes()).await?;
    Ok(serde_json::from_slice(&body).expect("a JSON response"))
}

#[tokio::test]
async fn a_warm_environment_serves_the_next_invocation() {
    let runtime = fixture(Duration::from_secs(10), 128);
    let first = invoke(&runtime, json!({})).await.unwrap();
    let second = invoke(&runtime, json!({})).await.unwrap();
    assert_eq!(first["pid"], second["pid"], "one process");
    assert_eq!(second["invocations"], 2);
    assert_eq!(runtime.warm_environments(), 1);
}

#[tokio::test]
async fn concurrent_invocations_get_environments_of_their_own() {
    let runtime = fixture(Duration::from_secs(10), 128);
    let (a, b) = tokio::join!(
        invoke(&runtime, json!({"sleepMs": 300})),
        invoke(&runtime, json!({"sleepMs": 300}))
    );
    assert_ne!(a.unwrap()["pid"], b.unwrap()["pid"]);
    assert_eq!(runtime.warm_environments(), 2);
}

#[tokio::test]
async fn an_invocation_past_its_timeout_is_ended_and_its_environment_replaced() {
    let runtime = fixture(Duration::from_millis(500), 128);
    let warm = invoke(&runtime, json!({})).await.unwrap();
    let err = invoke(&runtime, json!({"sleepMs": 5000}))
        .await
        .unwrap_err();
    assert!(matches!(err, InvokeError::Timeout { .. }), "{err:?}");
    assert!(err.to_string().starts_with("Task timed out after"), "{err}");
    assert_eq!(
        runtime.warm_environments(),
        0,
        "the timed-out environment is gone"
    );
    let next = invoke(&runtime, json!({})).await.unwrap();
    assert_ne!(next["pid"], warm["pid"], "a cold start replaces it");
    assert_eq!(next["invocations"], 1);
}

#[tokio::test]
async fn a_process_over_its_memory_size_is_killed() {
    let runtime = fixture(Duration::from_secs(20), 64);
    let err = invoke(&runtime, json!({"allocateMb": 160, "sleepMs": 5000}))
        .await
        .unwrap_err();
    match err {
        InvokeError::OutOfMemory { limit_mb, used_mb } => {
            assert_eq!(limit_mb, 64);
            assert!(used_mb > 64, "{used_mb}");
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // Within its size, the same work runs.
    let roomy = fixture(Duration::from_secs(20), 512);
    invoke(&roomy, json!({"allocateMb": 160, "sleepMs": 10}))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_peak_memory_of_the_environments_is_kept() {
    let runtime = fixture(Duration::from_secs(20), 512);
    assert_eq!(runtime.stats().peak_rss_kib, 0, "nothing sampled yet");
    invoke(&runtime, json!({"allocateMb": 100, "sleepMs": 10}))
        .await
        .unwrap();
    let after_allocating = runtime.stats().peak_rss_kib;
    assert!(after_allocating >= 100 * 1024, "{after_allocating} KiB");
    assert!(after_allocating < 512 * 1024, "{after_allocating} KiB");
    // A later, smaller invocation does not lower it.
    invoke(&runtime, json!({})).await.unwrap();
    assert!(runtime.stats().peak_rss_kib >= after_allocating);
}

#[tokio::test]
async fn a_panic_fails_that_invocation_only() {
    let runtime = fixture(Duration::from_secs(10), 128);
    let before = invoke(&runtime, json!({})).await.unwrap();
    let err = invoke(&runtime, json!({"panic": "boom at item 7"}))
        .await
        .unwrap_err();
    match &err {
        InvokeError::Function { message, .. } => {
            assert!(message.contains("boom at item 7"), "{err:?}")
        }
        other => panic!("expected a function error, got {other:?}"),
    }
    let after = invoke(&runtime, json!({})).await.unwrap();
    assert_eq!(after["pid"], before["pid"], "the environment stays warm");
}

#[tokio::test]
async fn a_crashed_process_fails_its_invocation_and_the_next_one_cold_starts() {
    let runtime = fixture(Duration::from_secs(10), 128);
    let before = invoke(&runtime, json!({})).await.unwrap();
    let err = invoke(&runtime, json!({"exit": 3})).await.unwrap_err();
    assert!(matches!(err, InvokeError::Crashed(_)), "{err:?}");
    let after = invoke(&runtime, json!({})).await.unwrap();
    assert_ne!(after["pid"], before["pid"]);
}

#[tokio::test]
async fn a_missing_binary_is_a_clear_error() {
    let runtime = FunctionRuntime::new(FunctionConfig {
        name: "Ghost".into(),
        binary: "/nonexistent/ghost".into(),
        environment: Vec::new(),
        timeout: Duration::from_secs(1),
        memory_mb: 128,
    });
    let err = runtime.invoke(b"{}".to_vec()).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ghost"), "{err}");
}

#[tokio::test]
async fn the_cpu_of_every_environment_is_kept_killed_ones_included() {
    let runtime = fixture(Duration::from_secs(2), 1024);
    assert_eq!(runtime.stats().cpu_ticks, 0, "nothing ran yet");
    // Touching 300 MB of pages takes well over one clock tick of CPU.
    invoke(&runtime, json!({"allocateMb": 300, "sleepMs": 10}))
        .await
        .unwrap();
    let after_one = runtime.stats().cpu_ticks;
    assert!(after_one > 0, "{after_one}");
    // A second environment that does the same and is then killed at its Timeout still counts.
    let (warm, killed) = tokio::join!(
        invoke(&runtime, json!({"sleepMs": 100})),
        invoke(&runtime, json!({"allocateMb": 300, "sleepMs": 5000}))
    );
    warm.unwrap();
    assert!(matches!(killed, Err(InvokeError::Timeout { .. })));
    let after_both = runtime.stats().cpu_ticks;
    assert!(after_both > after_one, "{after_both} vs {after_one}");
    runtime.shut_down();
    assert!(runtime.stats().cpu_ticks >= after_both);
    assert!(runtime.stats().cpu_seconds() > 0.0);
}
