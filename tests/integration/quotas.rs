//! Per-agency quotas on DynamoDB (moto): the request bucket's conditional writes, and both
//! quotas end to end on a stack of their own with small limits set as template parameters.

use integration_tests::{isolated_options, stack, unique_agency, Client, Reply};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::domain::AgencyId;
use shared::ports::RequestBuckets;
use shared::store::DynamoRequestBuckets;

fn agency(prefix: &str) -> AgencyId {
    AgencyId::parse(&unique_agency(prefix)).expect("valid agency")
}

#[tokio::test]
async fn the_request_bucket_admits_its_burst_then_its_rate_even_to_concurrent_callers() {
    let clients = stack().clients().await;
    let buckets = DynamoRequestBuckets::new(clients.dynamodb.clone(), &stack().config.table_name);
    // 10 requests/s (one every 100 ms), bursts of 3.
    let (interval, tolerance) = (100_000, 200_000);
    let acme = agency("bucket");
    let t0 = 1_800_000_000_000_000;
    for n in 0..3 {
        let admitted = buckets.admit(&acme, t0, interval, tolerance).await;
        assert_eq!(
            admitted.expect("dynamodb"),
            Ok(()),
            "request {n} of the burst"
        );
    }
    let refused = buckets.admit(&acme, t0, interval, tolerance).await;
    assert_eq!(refused.expect("dynamodb"), Err(t0 + 300_000));
    // Another agency has its own bucket.
    let other = agency("bucket-other");
    assert_eq!(
        buckets
            .admit(&other, t0, interval, tolerance)
            .await
            .expect("dynamodb"),
        Ok(())
    );
    // One token comes back every 100 ms, not sooner.
    let early = buckets.admit(&acme, t0 + 99_999, interval, tolerance).await;
    assert!(early.expect("dynamodb").is_err());
    let refilled = buckets
        .admit(&acme, t0 + 100_000, interval, tolerance)
        .await;
    assert_eq!(refilled.expect("dynamodb"), Ok(()));

    // Many callers at the same instant (Lambda instances): exactly the burst passes.
    let later = t0 + 60_000_000;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (buckets, acme) = (buckets.clone(), acme.clone());
        calls.spawn(async move { buckets.admit(&acme, later, interval, tolerance).await });
    }
    let results = calls.join_all().await;
    let admitted = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(admitted, 3, "{results:?}");
}

#[track_caller]
fn assert_quota_refusal(reply: &Reply, quota: &str, limit: u64) {
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], "quota_exceeded");
    assert_eq!(
        reply.body["error"]["fields"],
        json!({"quota": quota, "limit": limit})
    );
    let retry_after = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .expect("Retry-After in seconds");
    assert!((1..=86_400).contains(&retry_after), "{retry_after}");
}

fn items(n: usize) -> Value {
    Value::Array((0..n).map(|i| json!({"n": i})).collect())
}

#[tokio::test]
async fn small_quotas_from_template_parameters_answer_429() {
    let mut options = isolated_options("taskflow-quotas");
    options.parameter_overrides.extend(
        [
            ("QuotaRequestsPerSecond", "1"),
            ("QuotaRequestBurst", "4"),
            ("QuotaBatchItemsPerDay", "5"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let host = local_stack::LocalStack::start(options)
        .await
        .expect("stack with small quotas");

    // The request rate: the burst passes, then a 429 (a token may refill meanwhile).
    let flooder = Client::as_user(&unique_agency("flood"), "boss", "manager").at(&host.api_url());
    let started = std::time::Instant::now();
    let mut admitted = 0;
    let refused = loop {
        let reply = flooder.get("/api/tasks").await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        admitted += 1;
        assert!(admitted <= 50, "no 429 after {admitted} requests");
    };
    // The burst, plus at most one token per second since the first request.
    let refills = started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        (4..=4 + refills).contains(&admitted),
        "{admitted} requests passed in {refills} s"
    );
    assert_quota_refusal(&refused, "requestRate", 1);
    // Another agency is unaffected.
    let bystander = Client::as_user(&unique_agency("calm"), "boss", "manager").at(&host.api_url());
    assert_eq!(bystander.get("/api/tasks").await.status, StatusCode::OK);

    // Batch items per day: 3 + 3 > 5 is refused and counts nothing, so 2 more still fit.
    let batcher = Client::as_user(&unique_agency("batcher"), "boss", "manager").at(&host.api_url());
    let first = batcher
        .post(
            "/api/batches",
            &json!({"title": "quota", "items": items(3)}),
        )
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let over = batcher
        .post(
            "/api/batches",
            &json!({"title": "quota", "items": items(3)}),
        )
        .await;
    assert_quota_refusal(&over, "batchItemsPerDay", 5);
    let rest = batcher
        .post(
            "/api/batches",
            &json!({"title": "quota", "items": items(2)}),
        )
        .await;
    assert_eq!(rest.status, StatusCode::ACCEPTED, "{}", rest.body);
    let listed = batcher.get("/api/tasks").await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(2),
        "{}",
        listed.body
    );
    host.stop().await;
}
