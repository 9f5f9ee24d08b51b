//! Per-agency quotas: each answers 429 with Retry-After and the error shape, names the
//! quota and its limit, and leaves other agencies alone. Every reply also passes the
//! contract check in `support`.

use crate::support::*;
use serde_json::{json, Value};
use shared::config::Quotas;
use shared::service::RequestQuota;
use shared::testing::MemoryBuckets;
use std::sync::Arc;

/// An API whose agencies may send `rate` requests a second, `burst` at once.
fn rate_limited(rate: u64, burst: u64) -> Api {
    let mut api = Api::new();
    let quotas = Quotas {
        requests_per_second: rate,
        request_burst: burst,
        ..Quotas::default()
    };
    let quota = RequestQuota::new(Arc::new(MemoryBuckets::default()), quotas);
    api.app = api.app.clone().with_request_quota(quota);
    api
}

fn list(agency: &str) -> Event {
    Event::load("api-list-tasks").caller(MANAGER, agency, "manager")
}

#[track_caller]
fn assert_quota_refusal(reply: &Reply, quota: &str, limit: u64) -> u64 {
    assert_eq!(reply.status, 429, "{:#}", reply.body);
    assert_eq!(reply.code(), "quota_exceeded");
    assert_eq!(reply.body["error"]["fields"]["quota"], quota);
    assert_eq!(reply.body["error"]["fields"]["limit"], limit);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(quota) && message.contains(&limit.to_string()),
        "{message}"
    );
    let retry_after: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(retry_after >= 1);
    retry_after
}

#[tokio::test]
async fn the_request_rate_refuses_past_the_burst_and_refills() {
    let api = rate_limited(1, 3);
    for _ in 0..3 {
        api.send(&list(AGENCY)).await.expect(200);
    }
    let refused = api.send(&list(AGENCY)).await;
    assert_eq!(assert_quota_refusal(&refused, "requestRate", 1), 1);
    // Another agency has its own bucket.
    api.send(&list("initech")).await.expect(200);
    // The static document is exempt.
    api.send(&Event::load("api-openapi").manager())
        .await
        .expect(200);
    // One token a second comes back, and only one.
    tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
    api.send(&list(AGENCY)).await.expect(200);
    let refused = api.send(&list(AGENCY)).await;
    assert_quota_refusal(&refused, "requestRate", 1);
}

#[tokio::test]
async fn without_a_request_quota_nothing_is_refused() {
    let api = Api::new();
    for _ in 0..20 {
        api.send(&list(AGENCY)).await.expect(200);
    }
}

fn batch(agency: &str, items: usize) -> Event {
    let items: Vec<Value> = (0..items).map(|i| json!({"n": i})).collect();
    Event::load("api-create-batch")
        .caller(MANAGER, agency, "manager")
        .body(&json!({"title": "quota", "items": items}))
}

#[tokio::test]
async fn batch_items_per_day_are_counted_and_refused_past_the_limit() {
    let api = Api::new();
    *api.batches.daily_item_limit.lock().unwrap() = Some(5);
    api.send(&batch(AGENCY, 3)).await.expect(202);
    let refused = api.send(&batch(AGENCY, 3)).await;
    let retry_after = assert_quota_refusal(&refused, "batchItemsPerDay", 5);
    // Counters are per UTC day: the wait ends at the next midnight.
    assert!(retry_after <= 86_400, "{retry_after}");
    // A refused batch counted nothing and created nothing: exactly the rest still fits.
    assert_eq!(
        api.batches
            .daily_items
            .lock()
            .unwrap()
            .values()
            .sum::<u64>(),
        3
    );
    api.send(&batch(AGENCY, 2)).await.expect(202);
    assert_quota_refusal(&api.send(&batch(AGENCY, 1)).await, "batchItemsPerDay", 5);
    // A batch larger than the whole day's limit is refused the same way.
    assert_quota_refusal(&api.send(&batch("initech", 6)).await, "batchItemsPerDay", 5);
    // Another agency has its own count.
    api.send(&batch("initech", 5)).await.expect(202);
    let batch_tasks = api
        .store
        .all_tasks()
        .into_iter()
        .filter(|t| t.agency_id.as_str() == AGENCY)
        .count();
    assert_eq!(batch_tasks, 2, "refused batches leave no task behind");
}
