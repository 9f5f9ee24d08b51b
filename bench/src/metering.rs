//! What the counting proxy bills, beyond counting requests, while metering is on: DynamoDB
//! capacity units and SQS requests as a Lambda event source mapping makes them, plus the
//! duration of each worker invocation.
//!
//! DynamoDB. The emulator's `ConsumedCapacity` is a constant, so the units are computed
//! ([`crate::dynamodb_units`]) from the items each request touches. For a write the proxy
//! needs the item before and after it: it locks the written keys (so no other write through
//! the proxy lands between its reads and the write), reads each item with a `GetItem` of its
//! own, forwards the caller's request unchanged, and reads the items again. For a read that
//! returns less than it reads (a projection, a filter, a count) it repeats the read without
//! them, as DynamoDB bills the items read, not the attributes returned. None of these extra
//! requests is counted, and the caller's request and answer pass through unchanged: only
//! their timing changes. So metering is on only while the bench measures cost per unit, and
//! [`Metering::Timing`] leaves DynamoDB alone for the run whose durations are kept.
//!
//! SQS. The local poller stands in for Lambda's event source mapping (ESM) but does not make
//! the same requests: it deletes each message alone. The ESM model billed here: each
//! non-empty `ReceiveMessage` is one ESM receive (billed per started 64 KiB of the messages it
//! returns), each such batch is deleted with one `DeleteMessageBatch`, every send is billed
//! per started 64 KiB of payload, and a message the proxy saw received but never saw sent
//! (Step Functions sends from inside the emulator) is billed as a send too. Empty receives are
//! not billed per unit of work: an ESM polls an idle queue whatever the load, a fixed monthly
//! cost ([`crate::cost::esm_idle_monthly_usd`]).
//!
//! Lambda. A worker invocation runs from the poller's receive to its first delete of that
//! batch: the proxy times that span per receive, rounded up to the millisecond as Lambda
//! bills it, slightly over the function's own time (it includes the poller's hop). A batch
//! the poller filled with several receives (a batching window) counts as one invocation per
//! receive, each timed from its own receive: an upper bound.

use crate::dynamodb_units::{self, Item, Outcome, TableSchema, WriteKind};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub type Response = hyper::Response<Full<Bytes>>;

/// SQS bills each started 64 KiB of a request's payload as one request.
pub const SQS_BILLING_CHUNK_BYTES: usize = 64 * 1024;

/// What metering saw, summed; every figure a count or units (fractional once per unit).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metered {
    pub dynamodb: DynamoDbMetered,
    pub sqs: SqsMetered,
    /// EventBridge events published (`PutEvents` entries accepted), each per started 64 KiB,
    /// as EventBridge bills them.
    #[serde(default)]
    pub events: f64,
    /// Worker-style invocations (a receive to its first delete), by queue URL.
    pub invocations: BTreeMap<String, Invocations>,
    /// Requests whose metering failed (the caller's request still went through): the
    /// figures undercount when this is not 0.
    pub errors: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamoDbMetered {
    /// Base table write units, by operation.
    pub table_write_units: BTreeMap<String, f64>,
    /// Global secondary index write units, by index.
    pub index_write_units: BTreeMap<String, f64>,
    /// Read units, by operation.
    pub read_units: BTreeMap<String, f64>,
}

impl DynamoDbMetered {
    pub fn write_units(&self) -> f64 {
        self.table_write_units.values().sum::<f64>() + self.index_write_units.values().sum::<f64>()
    }

    pub fn read_units(&self) -> f64 {
        self.read_units.values().sum()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SqsMetered {
    /// `SendMessage`/`SendMessageBatch` requests, and what they bill (64 KiB chunks).
    pub send_requests: f64,
    pub send_billed: f64,
    /// Messages received that no send through the proxy had sent (Step Functions' own).
    pub sends_inside_emulator: f64,
    pub inside_send_billed: f64,
    /// Non-empty receives (one ESM receive each) and what they bill.
    pub receives: f64,
    pub receive_billed: f64,
    pub messages_received: f64,
    /// The poller's empty long polls: not billed per unit (see the module docs).
    pub empty_receives: f64,
    /// One `DeleteMessageBatch` per received batch that was deleted.
    pub delete_batches: f64,
    /// Every other SQS request (`ChangeMessageVisibility`, `GetQueueAttributes`, ...), by operation.
    pub other_requests: BTreeMap<String, f64>,
}

impl SqsMetered {
    /// Requests the ESM model bills.
    pub fn billed_requests(&self) -> f64 {
        self.send_billed
            + self.inside_send_billed
            + self.receive_billed
            + self.delete_batches
            + self.other_requests.values().sum::<f64>()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Invocations {
    pub count: f64,
    /// Summed durations, each rounded up to the millisecond as Lambda bills.
    pub billed_ms: f64,
}

impl Metered {
    /// `self + factor × other`, every figure floored at 0 (a subtraction of an estimated
    /// background never makes a count negative).
    pub fn plus(&self, other: &Metered, factor: f64) -> Metered {
        fn combine(a: &Value, b: &Value, k: f64) -> Value {
            match (a, b) {
                (Value::Object(x), Value::Object(y)) => {
                    let mut out = x.clone();
                    for (key, value) in y {
                        let merged = combine(x.get(key).unwrap_or(&Value::Null), value, k);
                        out.insert(key.clone(), merged);
                    }
                    Value::Object(out)
                }
                (Value::Null, Value::Object(_)) => combine(&json!({}), b, k),
                _ => {
                    let sum = a.as_f64().unwrap_or(0.0) + k * b.as_f64().unwrap_or(0.0);
                    json!(sum.max(0.0))
                }
            }
        }
        let a = serde_json::to_value(self).expect("serializable");
        let b = serde_json::to_value(other).expect("serializable");
        serde_json::from_value(combine(&a, &b, factor)).expect("same shape")
    }
}

/// The emulator, as the proxy forwards to it.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    target: String,
}

/// The emulator's answer to a forwarded request.
pub struct Answer {
    pub parts: http::response::Parts,
    pub body: Bytes,
}

impl Answer {
    /// The answer for the caller, without the emulator's hop-by-hop headers: moto's server
    /// (werkzeug) sends `Connection: close` on every response, which passed on would make
    /// every function reconnect for each AWS request (a TCP connect and close per request, most
    /// of the functions' kernel time in the profile), where on AWS they keep their connections.
    pub fn into_response(mut self) -> Response {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
        ] {
            self.parts.headers.remove(name);
        }
        hyper::Response::from_parts(self.parts, Full::new(self.body))
    }
}

pub fn bad_gateway() -> Response {
    hyper::Response::builder()
        .status(502)
        .body(Full::new(Bytes::new()))
        .expect("static")
}

impl Upstream {
    pub fn new(target: &str) -> Upstream {
        Upstream {
            client: Client::builder(TokioExecutor::new()).build_http(),
            target: target.trim_end_matches('/').to_owned(),
        }
    }

    /// The caller's request, unchanged but for its address.
    pub async fn forward(&self, mut parts: http::request::Parts, body: Bytes) -> Option<Answer> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = format!("{}{path}", self.target).parse().ok()?;
        let response = self
            .client
            .request(hyper::Request::from_parts(parts, Full::new(body)))
            .await
            .ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Answer { parts, body })
    }

    /// A DynamoDB request of the meter's own, signed (without a signature the emulator
    /// checks) as the account's root user in the caller's region.
    async fn dynamodb(&self, region: &str, operation: &str, body: &Value) -> anyhow::Result<Value> {
        let request = hyper::Request::builder()
            .method("POST")
            .uri(format!("{}/", self.target))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("DynamoDB_20120810.{operation}"))
            .header(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=bench-meter/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0"
                ),
            )
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status.is_success(),
            "metering {operation}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// The region of a SigV4-signed request (its credential scope), else us-east-1.
fn region_of(headers: &http::HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|scope| scope.split('/').nth(2))
        .unwrap_or("us-east-1")
        .to_owned()
}

/// One write of a request: which item, and what was asked.
struct PlannedWrite {
    table: String,
    key: Item,
    kind: PlannedKind,
    transactional: bool,
}

enum PlannedKind {
    Put(Item),
    Update,
    Delete,
    ConditionCheck,
}

impl PlannedKind {
    fn as_write_kind(&self) -> WriteKind<'_> {
        match self {
            PlannedKind::Put(item) => WriteKind::Put(item),
            PlannedKind::Update => WriteKind::Update,
            PlannedKind::Delete => WriteKind::Delete,
            PlannedKind::ConditionCheck => WriteKind::ConditionCheck,
        }
    }
}

fn object(value: &Value) -> Item {
    value.as_object().cloned().unwrap_or_default()
}

/// How much the proxy meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metering {
    /// Counts only.
    Off = 0,
    /// SQS as the ESM makes them and invocation durations, but no DynamoDB reads of the
    /// meter's own: the requests' timing is left as it is.
    Timing = 1,
    /// Everything, DynamoDB capacity units included.
    Full = 2,
}

/// The meter shared by every connection of the proxy.
pub struct Meter {
    upstream: Upstream,
    level: AtomicU8,
    totals: Mutex<Metered>,
    schemas: tokio::sync::Mutex<HashMap<String, Arc<TableSchema>>>,
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    sqs: Mutex<SqsTracker>,
}

#[derive(Default)]
struct SqsTracker {
    sent: HashSet<String>,
    /// Each message received, with what its send billed: a send through the proxy may land
    /// after the receive that returns its message, so the two are matched at the end.
    received: HashMap<String, f64>,
    next_group: u64,
    groups: HashMap<u64, ReceivedBatch>,
    receipts: HashMap<String, u64>,
}

struct ReceivedBatch {
    queue: String,
    at: Instant,
    deleted: bool,
}

impl Meter {
    pub fn new(upstream: Upstream) -> Meter {
        Meter {
            upstream,
            level: AtomicU8::new(Metering::Off as u8),
            totals: Mutex::default(),
            schemas: tokio::sync::Mutex::default(),
            key_locks: Mutex::default(),
            sqs: Mutex::default(),
        }
    }

    pub fn set_level(&self, level: Metering) {
        self.level.store(level as u8, Ordering::SeqCst);
    }

    pub fn level(&self) -> Metering {
        match self.level.load(Ordering::SeqCst) {
            2 => Metering::Full,
            1 => Metering::Timing,
            _ => Metering::Off,
        }
    }

    /// What was metered since the last call.
    pub fn take(&self) -> Metered {
        // The bench takes its windows on a quiet stack: every send has landed, nothing
        // received or sent before this point is still to be matched, and no write holds a key.
        let tracker = std::mem::take(&mut *self.sqs.lock().expect("not poisoned"));
        self.key_locks
            .lock()
            .expect("not poisoned")
            .retain(|_, lock| Arc::strong_count(lock) > 1);
        let mut totals = std::mem::take(&mut *self.totals.lock().expect("not poisoned"));
        for (id, billed) in tracker.received {
            if !tracker.sent.contains(&id) {
                totals.sqs.sends_inside_emulator += 1.0;
                totals.sqs.inside_send_billed += billed;
            }
        }
        totals
    }

    fn add(&self, update: impl FnOnce(&mut Metered)) {
        update(&mut self.totals.lock().expect("not poisoned"));
    }

    /// Forwards one request, metering it when metering is on.
    pub async fn exchange(
        &self,
        operation: &str,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Option<Answer> {
        let level = self.level();
        if level == Metering::Off {
            return self.upstream.forward(parts, body).await;
        }
        let (service, op) = operation.split_once(':').unwrap_or(("", operation));
        match service {
            "dynamodb" if level == Metering::Full => self.dynamodb(op, parts, body).await,
            "sqs" => self.sqs(op, parts, body).await,
            "AWSEvents" if op == "PutEvents" => self.put_events(parts, body).await,
            _ => self.upstream.forward(parts, body).await,
        }
    }

    async fn schema(&self, region: &str, table: &str) -> anyhow::Result<Arc<TableSchema>> {
        let mut schemas = self.schemas.lock().await;
        if let Some(schema) = schemas.get(table) {
            return Ok(schema.clone());
        }
        let described = self
            .upstream
            .dynamodb(region, "DescribeTable", &json!({"TableName": table}))
            .await?;
        let schema = Arc::new(
            TableSchema::parse(&described["Table"])
                .ok_or_else(|| anyhow::anyhow!("no key schema for {table}"))?,
        );
        schemas.insert(table.to_owned(), schema.clone());
        Ok(schema)
    }

    async fn get_item(
        &self,
        region: &str,
        table: &str,
        key: &Item,
    ) -> anyhow::Result<Option<Item>> {
        let answer = self
            .upstream
            .dynamodb(
                region,
                "GetItem",
                &json!({"TableName": table, "Key": key, "ConsistentRead": true}),
            )
            .await?;
        Ok(answer["Item"].as_object().cloned())
    }

    async fn dynamodb(&self, op: &str, parts: http::request::Parts, body: Bytes) -> Option<Answer> {
        let region = region_of(&parts.headers);
        let Ok(request) = serde_json::from_slice::<Value>(&body) else {
            return self.unmetered(parts, body).await;
        };
        match op {
            "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems" => {
                match self.plan_writes(&region, op, &request).await {
                    Ok(writes) => self.metered_writes(&region, op, writes, parts, body).await,
                    Err(err) => {
                        tracing::debug!(%err, "could not meter {op}");
                        self.unmetered(parts, body).await
                    }
                }
            }
            "GetItem" | "BatchGetItem" | "Query" | "Scan" | "TransactGetItems" => {
                let answer = self.upstream.forward(parts, body).await?;
                if answer.parts.status.is_success() {
                    match self.read_units(&region, op, &request, &answer.body).await {
                        Ok(units) => self.add(|m| {
                            *m.dynamodb.read_units.entry(op.to_owned()).or_default() += units;
                        }),
                        Err(err) => {
                            tracing::debug!(%err, "could not meter {op}");
                            self.add(|m| m.errors += 1.0);
                        }
                    }
                }
                Some(answer)
            }
            _ => self.upstream.forward(parts, body).await,
        }
    }

    async fn unmetered(&self, parts: http::request::Parts, body: Bytes) -> Option<Answer> {
        self.add(|m| m.errors += 1.0);
        self.upstream.forward(parts, body).await
    }

    async fn plan_writes(
        &self,
        region: &str,
        op: &str,
        request: &Value,
    ) -> anyhow::Result<Vec<PlannedWrite>> {
        let mut writes = Vec::new();
        let mut plan = |table: &str, key: Item, kind: PlannedKind, transactional: bool| {
            writes.push(PlannedWrite {
                table: table.to_owned(),
                key,
                kind,
                transactional,
            })
        };
        let table_of = |v: &Value| v["TableName"].as_str().unwrap_or_default().to_owned();
        match op {
            "PutItem" => {
                let table = table_of(request);
                let item = object(&request["Item"]);
                let key = self
                    .schema(region, &table)
                    .await?
                    .key_of(&item)
                    .unwrap_or_default();
                plan(&table, key, PlannedKind::Put(item), false);
            }
            "UpdateItem" => plan(
                &table_of(request),
                object(&request["Key"]),
                PlannedKind::Update,
                false,
            ),
            "DeleteItem" => plan(
                &table_of(request),
                object(&request["Key"]),
                PlannedKind::Delete,
                false,
            ),
            "BatchWriteItem" => {
                for (table, requests) in request["RequestItems"].as_object().into_iter().flatten() {
                    let schema = self.schema(region, table).await?;
                    for write in requests.as_array().into_iter().flatten() {
                        if let Some(item) = write["PutRequest"]["Item"].as_object() {
                            let key = schema.key_of(item).unwrap_or_default();
                            plan(table, key, PlannedKind::Put(item.clone()), false);
                        } else {
                            plan(
                                table,
                                object(&write["DeleteRequest"]["Key"]),
                                PlannedKind::Delete,
                                false,
                            );
                        }
                    }
                }
            }
            _ => {
                for action in request["TransactItems"].as_array().into_iter().flatten() {
                    if let Some(put) = action.get("Put") {
                        let table = table_of(put);
                        let item = object(&put["Item"]);
                        let key = self
                            .schema(region, &table)
                            .await?
                            .key_of(&item)
                            .unwrap_or_default();
                        plan(&table, key, PlannedKind::Put(item), true);
                    } else if let Some(update) = action.get("Update") {
                        plan(
                            &table_of(update),
                            object(&update["Key"]),
                            PlannedKind::Update,
                            true,
                        );
                    } else if let Some(delete) = action.get("Delete") {
                        plan(
                            &table_of(delete),
                            object(&delete["Key"]),
                            PlannedKind::Delete,
                            true,
                        );
                    } else if let Some(check) = action.get("ConditionCheck") {
                        plan(
                            &table_of(check),
                            object(&check["Key"]),
                            PlannedKind::ConditionCheck,
                            true,
                        );
                    }
                }
            }
        }
        anyhow::ensure!(
            writes
                .iter()
                .all(|w| !w.key.is_empty() && !w.table.is_empty()),
            "a write without a table or key"
        );
        Ok(writes)
    }

    /// The lock of one item, the same for every request that names it.
    async fn lock_keys(
        &self,
        region: &str,
        writes: &[PlannedWrite],
    ) -> anyhow::Result<Vec<tokio::sync::OwnedMutexGuard<()>>> {
        let mut names = Vec::with_capacity(writes.len());
        for write in writes {
            let schema = self.schema(region, &write.table).await?;
            // In the schema's order, whatever order the request gave the key in.
            let key = schema
                .key_of(&write.key)
                .unwrap_or_else(|| write.key.clone());
            names.push(format!("{}\u{1f}{}", write.table, Value::Object(key)));
        }
        names.sort();
        names.dedup();
        let locks: Vec<_> = {
            let mut all = self.key_locks.lock().expect("not poisoned");
            names
                .iter()
                .map(|n| all.entry(n.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(locks.len());
        for lock in locks {
            guards.push(lock.lock_owned().await);
        }
        Ok(guards)
    }

    /// The written items as they are now (the emulator serves DynamoDB one request at a
    /// time, so reading them in turn costs nothing a concurrent read would save).
    async fn images(
        &self,
        region: &str,
        writes: &[PlannedWrite],
    ) -> anyhow::Result<Vec<Option<Item>>> {
        let mut images = Vec::with_capacity(writes.len());
        for write in writes {
            images.push(self.get_item(region, &write.table, &write.key).await?);
        }
        Ok(images)
    }

    async fn metered_writes(
        &self,
        region: &str,
        op: &str,
        writes: Vec<PlannedWrite>,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Option<Answer> {
        let guards = match self.lock_keys(region, &writes).await {
            Ok(guards) => guards,
            Err(err) => {
                tracing::debug!(%err, "could not meter {op}");
                return self.unmetered(parts, body).await;
            }
        };
        let before = self.images(region, &writes).await;
        let answer = self.upstream.forward(parts, body).await?;
        let after = self.images(region, &writes).await;
        drop(guards);
        let (Ok(before), Ok(after)) = (before, after) else {
            self.add(|m| m.errors += 1.0);
            return Some(answer);
        };
        let outcome = write_outcome(&answer);
        let mut table_units = 0.0;
        let mut index_units: BTreeMap<String, f64> = BTreeMap::new();
        for ((write, before), after) in writes.iter().zip(&before).zip(&after) {
            table_units += dynamodb_units::table_write_units(
                write.kind.as_write_kind(),
                before.as_ref(),
                after.as_ref(),
                outcome,
                write.transactional,
            );
            if outcome == Outcome::Applied {
                let Ok(schema) = self.schema(region, &write.table).await else {
                    continue;
                };
                for index in &schema.indexes {
                    let units = schema.index_write_units(index, before.as_ref(), after.as_ref());
                    if units > 0.0 {
                        *index_units.entry(index.name.clone()).or_default() += units;
                    }
                }
            }
        }
        self.add(|m| {
            *m.dynamodb
                .table_write_units
                .entry(op.to_owned())
                .or_default() += table_units;
            for (index, units) in index_units {
                *m.dynamodb.index_write_units.entry(index).or_default() += units;
            }
        });
        Some(answer)
    }

    async fn read_units(
        &self,
        region: &str,
        op: &str,
        request: &Value,
        answer: &[u8],
    ) -> anyhow::Result<f64> {
        let answer: Value = serde_json::from_slice(answer)?;
        let consistent = request["ConsistentRead"].as_bool().unwrap_or(false);
        let returns_less = |r: &Value| {
            [
                "ProjectionExpression",
                "AttributesToGet",
                "FilterExpression",
                "QueryFilter",
                "ScanFilter",
            ]
            .iter()
            .any(|k| r.get(*k).is_some())
                || r["Select"]
                    .as_str()
                    .is_some_and(|s| s == "COUNT" || s == "SPECIFIC_ATTRIBUTES")
        };
        match op {
            "GetItem" => {
                let table = request["TableName"].as_str().unwrap_or_default();
                let item = if returns_less(request) {
                    self.get_item(region, table, &object(&request["Key"]))
                        .await?
                } else {
                    answer["Item"].as_object().cloned()
                };
                Ok(dynamodb_units::read_units(
                    item.as_ref().map_or(0, dynamodb_units::item_size),
                    consistent,
                ))
            }
            "TransactGetItems" => {
                let mut units = 0.0;
                for get in request["TransactItems"].as_array().into_iter().flatten() {
                    let get = &get["Get"];
                    let table = get["TableName"].as_str().unwrap_or_default();
                    let item = self.get_item(region, table, &object(&get["Key"])).await?;
                    units += 2.0
                        * dynamodb_units::read_units(
                            item.as_ref().map_or(0, dynamodb_units::item_size),
                            true,
                        );
                }
                Ok(units)
            }
            "BatchGetItem" => {
                let mut units = 0.0;
                for (table, asked) in request["RequestItems"].as_object().into_iter().flatten() {
                    let consistent = asked["ConsistentRead"].as_bool().unwrap_or(false);
                    let schema = self.schema(region, table).await?;
                    let returned: Vec<Item> = answer["Responses"][table]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_object().cloned())
                        .collect();
                    for key in asked["Keys"].as_array().into_iter().flatten() {
                        let key = object(key);
                        let item = if returns_less(asked) {
                            self.get_item(region, table, &key).await?
                        } else {
                            returned
                                .iter()
                                .find(|i| schema.key_of(i).as_ref() == Some(&key))
                                .cloned()
                        };
                        units += dynamodb_units::read_units(
                            item.as_ref().map_or(0, dynamodb_units::item_size),
                            consistent,
                        );
                    }
                }
                Ok(units)
            }
            _ => {
                // Query and Scan: the items read, before any filter or projection.
                let table = request["TableName"].as_str().unwrap_or_default();
                let items = if returns_less(request) {
                    let plain = without_filters(request);
                    self.upstream.dynamodb(region, op, &plain).await?["Items"].clone()
                } else {
                    answer["Items"].clone()
                };
                let schema = self.schema(region, table).await?;
                let index = request["IndexName"].as_str().and_then(|n| schema.index(n));
                let bytes: usize = items
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                    .map(|item| match index {
                        Some(index) => schema
                            .index_entry(index, item)
                            .as_ref()
                            .map_or(0, dynamodb_units::item_size),
                        None => dynamodb_units::item_size(item),
                    })
                    .sum();
                // Index queries are eventually consistent.
                Ok(dynamodb_units::read_units(
                    bytes,
                    consistent && index.is_none(),
                ))
            }
        }
    }

    /// Bills each entry EventBridge accepted, per started 64 KiB (a refused entry is not an
    /// event, and its retry is billed when it is accepted).
    async fn put_events(&self, parts: http::request::Parts, body: Bytes) -> Option<Answer> {
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = self.upstream.forward(parts, body).await?;
        if answer.parts.status.is_success() {
            let reply: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let billed = events_billed(&request, &reply);
            self.add(|m| m.events += billed);
        }
        Some(answer)
    }

    async fn sqs(&self, op: &str, parts: http::request::Parts, body: Bytes) -> Option<Answer> {
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = self.upstream.forward(parts, body).await?;
        if !answer.parts.status.is_success() {
            self.add(|m| *m.sqs.other_requests.entry(op.to_owned()).or_default() += 1.0);
            return Some(answer);
        }
        let reply: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let now = Instant::now();
        let mut tracker = self.sqs.lock().expect("not poisoned");
        let mut totals = self.totals.lock().expect("not poisoned");
        let Metered {
            sqs, invocations, ..
        } = &mut *totals;
        match op {
            "SendMessage" => {
                sqs.send_requests += 1.0;
                sqs.send_billed += sqs_billed(sqs_payload(&request));
                if let Some(id) = reply["MessageId"].as_str() {
                    tracker.sent.insert(id.to_owned());
                }
            }
            "SendMessageBatch" => {
                let payload: usize = request["Entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(sqs_payload)
                    .sum();
                sqs.send_requests += 1.0;
                sqs.send_billed += sqs_billed(payload);
                for sent in reply["Successful"].as_array().into_iter().flatten() {
                    if let Some(id) = sent["MessageId"].as_str() {
                        tracker.sent.insert(id.to_owned());
                    }
                }
            }
            "ReceiveMessage" => {
                let messages = reply["Messages"].as_array().cloned().unwrap_or_default();
                if messages.is_empty() {
                    sqs.empty_receives += 1.0;
                } else {
                    sqs.receives += 1.0;
                    sqs.messages_received += messages.len() as f64;
                    sqs.receive_billed +=
                        sqs_billed(messages.iter().map(sqs_payload).sum::<usize>());
                    let group = tracker.next_group;
                    tracker.next_group += 1;
                    tracker.groups.insert(
                        group,
                        ReceivedBatch {
                            queue: request["QueueUrl"].as_str().unwrap_or_default().to_owned(),
                            at: now,
                            deleted: false,
                        },
                    );
                    for message in &messages {
                        if let Some(receipt) = message["ReceiptHandle"].as_str() {
                            tracker.receipts.insert(receipt.to_owned(), group);
                        }
                        let id = message["MessageId"].as_str().unwrap_or_default().to_owned();
                        tracker
                            .received
                            .insert(id, sqs_billed(sqs_payload(message)));
                    }
                }
            }
            "DeleteMessage" | "DeleteMessageBatch" => {
                let receipts: Vec<String> = if op == "DeleteMessage" {
                    request["ReceiptHandle"]
                        .as_str()
                        .map(str::to_owned)
                        .into_iter()
                        .collect()
                } else {
                    request["Entries"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["ReceiptHandle"].as_str().map(str::to_owned))
                        .collect()
                };
                let mut matched = false;
                for receipt in receipts {
                    let Some(group) = tracker.receipts.remove(&receipt) else {
                        continue;
                    };
                    matched = true;
                    let Some(batch) = tracker.groups.get_mut(&group) else {
                        continue;
                    };
                    if !batch.deleted {
                        batch.deleted = true;
                        sqs.delete_batches += 1.0;
                        let ms = now.duration_since(batch.at).as_secs_f64() * 1000.0;
                        let queue = invocations.entry(batch.queue.clone()).or_default();
                        queue.count += 1.0;
                        queue.billed_ms += ms.ceil();
                    }
                }
                if !matched {
                    // A message received before metering began: still one request.
                    sqs.delete_batches += 1.0;
                }
                let live: HashSet<u64> = tracker.receipts.values().copied().collect();
                tracker.groups.retain(|id, _| live.contains(id));
            }
            _ => *sqs.other_requests.entry(op.to_owned()).or_default() += 1.0,
        }
        Some(answer)
    }
}

/// How a forwarded write ended, from the emulator's answer.
fn write_outcome(answer: &Answer) -> Outcome {
    if answer.parts.status.is_success() {
        return Outcome::Applied;
    }
    let kind = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["__type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if kind.contains("ConditionalCheckFailed") || kind.contains("TransactionCanceled") {
        Outcome::ConditionFailed
    } else {
        Outcome::Rejected
    }
}

/// A Query or Scan that reads the same items and returns them whole: no filter, projection
/// or count, and only the expression names and values its key condition still uses.
fn without_filters(request: &Value) -> Value {
    let mut plain = request.as_object().cloned().unwrap_or_default();
    for key in [
        "FilterExpression",
        "ProjectionExpression",
        "AttributesToGet",
        "QueryFilter",
        "ScanFilter",
        "Select",
        "ReturnConsumedCapacity",
    ] {
        plain.remove(key);
    }
    let used = plain
        .get("KeyConditionExpression")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for key in ["ExpressionAttributeNames", "ExpressionAttributeValues"] {
        let kept: Map<String, Value> = plain
            .get(key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(name, _)| mentions(&used, name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if kept.is_empty() {
            plain.remove(key);
        } else {
            plain.insert(key.to_owned(), Value::Object(kept));
        }
    }
    Value::Object(plain)
}

/// Whether `expression` uses the placeholder `name` (`#a` is not used by `#ab`).
fn mentions(expression: &str, name: &str) -> bool {
    expression.match_indices(name).any(|(at, _)| {
        expression[at + name.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

/// Payload bytes of an SQS message as sent or received: its body and its attributes.
fn sqs_payload(message: &Value) -> usize {
    let body = message["MessageBody"]
        .as_str()
        .or_else(|| message["Body"].as_str())
        .map_or(0, str::len);
    let attributes: usize = message["MessageAttributes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| {
            name.len()
                + value["DataType"].as_str().map_or(0, str::len)
                + value["StringValue"].as_str().map_or(0, str::len)
                + value["BinaryValue"].as_str().map_or(0, |b| b.len() * 3 / 4)
        })
        .sum();
    body + attributes
}

/// Requests SQS bills for one request carrying `payload` bytes.
/// EventBridge bills each started 64 KiB of an event as one event.
pub const EVENT_BILLING_CHUNK_BYTES: usize = 64 * 1024;

/// The events a `PutEvents` request published, as billed: each entry its reply does not mark
/// failed (an `ErrorCode`), per started 64 KiB of its source, detail-type, detail and resources.
pub fn events_billed(request: &Value, reply: &Value) -> f64 {
    let results = reply["Entries"].as_array();
    request["Entries"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(i, _)| {
            results
                .and_then(|r| r.get(*i))
                .is_none_or(|result| result.get("ErrorCode").is_none_or(Value::is_null))
        })
        .map(|(_, entry)| {
            let text = |name: &str| entry[name].as_str().map_or(0, str::len);
            let resources: usize = entry["Resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::len)
                .sum();
            let size = text("Source") + text("DetailType") + text("Detail") + resources;
            size.div_ceil(EVENT_BILLING_CHUNK_BYTES).max(1) as f64
        })
        .sum()
}

pub fn sqs_billed(payload: usize) -> f64 {
    payload.div_ceil(SQS_BILLING_CHUNK_BYTES).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_bill_each_accepted_entry_per_started_64_kib() {
        let big = "x".repeat(70 * 1024);
        let request = json!({"Entries": [
            {"Source": "taskflow", "DetailType": "Task Completed", "Detail": "{}"},
            {"Source": "taskflow", "DetailType": "Task Failed", "Detail": big},
            {"Source": "taskflow", "DetailType": "Task Queued", "Detail": "{}"},
        ]});
        let all = json!({"FailedEntryCount": 0, "Entries": [{"EventId": "a"}, {"EventId": "b"}, {"EventId": "c"}]});
        assert_eq!(events_billed(&request, &all), 1.0 + 2.0 + 1.0);
        let one_refused = json!({"FailedEntryCount": 1, "Entries": [
            {"EventId": "a"}, {"ErrorCode": "InternalFailure"}, {"EventId": "c"}]});
        assert_eq!(events_billed(&request, &one_refused), 2.0);
    }

    #[test]
    fn sqs_bills_each_started_64_kib() {
        assert_eq!(sqs_billed(0), 1.0);
        assert_eq!(sqs_billed(65_536), 1.0);
        assert_eq!(sqs_billed(65_537), 2.0);
        assert_eq!(sqs_billed(256 * 1024), 4.0);
        let message = json!({"MessageBody": "x".repeat(100),
            "MessageAttributes": {"tier": {"DataType": "String", "StringValue": "high"}}});
        assert_eq!(sqs_payload(&message), 100 + 4 + 6 + 4);
        assert_eq!(sqs_payload(&json!({"Body": "abc"})), 3);
    }

    #[test]
    fn plain_reads_keep_only_what_the_key_condition_uses() {
        let query = json!({
            "TableName": "t", "IndexName": "GSI3", "Limit": 25,
            "KeyConditionExpression": "#pk = :pk AND #sk < :before",
            "FilterExpression": "#status = :s", "ProjectionExpression": "#pk, #sk",
            "Select": "SPECIFIC_ATTRIBUTES",
            "ExpressionAttributeNames": {"#pk": "GSI3PK", "#sk": "GSI3SK", "#status": "status"},
            "ExpressionAttributeValues": {":pk": {"S": "a"}, ":before": {"S": "b"}, ":s": {"S": "c"}, ":pk2": {"S": "d"}}
        });
        let plain = without_filters(&query);
        assert_eq!(
            plain,
            json!({
                "TableName": "t", "IndexName": "GSI3", "Limit": 25,
                "KeyConditionExpression": "#pk = :pk AND #sk < :before",
                "ExpressionAttributeNames": {"#pk": "GSI3PK", "#sk": "GSI3SK"},
                "ExpressionAttributeValues": {":pk": {"S": "a"}, ":before": {"S": "b"}}
            })
        );
        assert!(mentions("a = :v", ":v"));
        assert!(!mentions("a = :v2", ":v"));
    }

    #[test]
    fn metered_figures_add_subtract_and_scale_without_going_negative() {
        let mut a = Metered::default();
        a.dynamodb.table_write_units.insert("PutItem".into(), 10.0);
        a.sqs.receives = 4.0;
        a.invocations.insert(
            "q".into(),
            Invocations {
                count: 2.0,
                billed_ms: 30.0,
            },
        );
        let mut b = Metered::default();
        b.dynamodb.table_write_units.insert("PutItem".into(), 1.0);
        b.dynamodb.read_units.insert("Query".into(), 3.0);
        b.sqs.receives = 8.0;
        let minus = a.plus(&b, -1.0);
        assert_eq!(minus.dynamodb.table_write_units["PutItem"], 9.0);
        assert_eq!(minus.dynamodb.read_units["Query"], 0.0);
        assert_eq!(minus.sqs.receives, 0.0);
        let half = Metered::default().plus(&a, 0.5);
        assert_eq!(
            half.invocations["q"],
            Invocations {
                count: 1.0,
                billed_ms: 15.0
            }
        );
        assert_eq!(half.dynamodb.write_units(), 5.0);
    }

    #[test]
    fn write_outcomes_tell_failed_conditions_from_refusals() {
        let answer = |status: u16, kind: &str| Answer {
            parts: hyper::Response::builder()
                .status(status)
                .body(())
                .unwrap()
                .into_parts()
                .0,
            body: Bytes::from(json!({"__type": kind}).to_string()),
        };
        assert_eq!(write_outcome(&answer(200, "")), Outcome::Applied);
        assert_eq!(
            write_outcome(&answer(
                400,
                "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"
            )),
            Outcome::ConditionFailed
        );
        assert_eq!(
            write_outcome(&answer(
                400,
                "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
            )),
            Outcome::ConditionFailed
        );
        assert_eq!(
            write_outcome(&answer(
                400,
                "com.amazonaws.dynamodb.v20120810#ValidationException"
            )),
            Outcome::Rejected
        );
    }
}

#[cfg(test)]
#[path = "metering_tests.rs"]
mod against_the_emulator;
