//! The default dispatch windows against the worker's tier subscriptions, on template.yaml.
//!
//! A tier's event source mapping with a batching window waits, per invocation, until its batch
//! is full or the window has passed. An agency's runs enter its dispatch window when sent and
//! leave it only when they start, so if the window is smaller than what the tier's pollers
//! gather at once (`BatchSize` × `MaximumConcurrency`), each poller ends up holding part of a
//! batch and waiting out the batching window for messages that cannot be sent until the runs it
//! holds start: a lone agency's backlog then drains one window per batching window (about one
//! task a second on the background tier with a window of 5). Where the mapping has no batching
//! window, or a short one, half the capacity is enough and keeps another agency's wait short.

use std::path::Path;

use local_stack::template::Template;
use serde_yaml::Value;

const TIERS: [(&str, &str); 5] = [
    ("critical", "CriticalTier"),
    ("high", "HighTier"),
    ("normal", "NormalTier"),
    ("low", "LowTier"),
    ("background", "BackgroundTier"),
];

/// A batching window this long or longer stalls batches that cannot fill.
const STALLING_WINDOW_SECONDS: u64 = 2;

fn number(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::Number(n)) => n.as_u64().expect("a whole number"),
        Some(Value::String(s)) => s.parse().expect("a whole number"),
        None => 0,
        other => panic!("not a number: {other:?}"),
    }
}

#[test]
fn default_windows_let_every_batching_tier_fill_its_batches() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
    let template = Template::load(&path).expect("template.yaml loads");
    let windows: Vec<u64> = template
        .parameter("AgencyDispatchWindows")
        .and_then(|p| p.default.clone())
        .expect("AgencyDispatchWindows has a default")
        .split(',')
        .map(|w| w.parse().expect("a number per tier"))
        .collect();
    assert_eq!(
        shared::config::DEFAULT_DISPATCH_WINDOWS,
        windows
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "the code's default is the template's"
    );
    let worker = template.resource("WorkerFunction").expect("the worker");
    for ((tier, event), window) in TIERS.iter().zip(&windows) {
        let mapping = worker
            .property_path(&["Events", event, "Properties"])
            .unwrap_or_else(|| panic!("{event}"));
        let batch = number(mapping.get("BatchSize"));
        let pollers = number(
            mapping
                .get("ScalingConfig")
                .and_then(|s| s.get("MaximumConcurrency")),
        );
        let batching = number(mapping.get("MaximumBatchingWindowInSeconds"));
        let capacity = batch * pollers;
        if batching >= STALLING_WINDOW_SECONDS {
            assert!(
                *window >= capacity,
                "{tier}: a window of {window} under a {batching} s batching window stalls \
                 {pollers} pollers of {batch}; it needs at least {capacity}"
            );
        } else {
            assert!(
                *window >= capacity / 2,
                "{tier}: {window} is under half the tier's {capacity}"
            );
        }
    }
}
