//! Counts the AWS requests a client makes, by operation, for tests that hold a code path to its
//! request budget (what AWS bills). An SDK interceptor sees every attempt, retries included.

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use std::sync::{Arc, Mutex};

/// The operations sent, in order (`PutItem`, `UpdateItem`, ...).
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    /// The operations sent since the last call, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // JSON-protocol services name the operation in X-Amz-Target: "DynamoDB_20120810.PutItem".
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        self.0.lock().unwrap().push(operation);
        Ok(())
    }
}

/// A DynamoDB client like `client` whose requests are logged.
pub fn counted_dynamodb(
    client: &aws_sdk_dynamodb::Client,
) -> (aws_sdk_dynamodb::Client, RequestLog) {
    let log = RequestLog::default();
    let config = client
        .config()
        .to_builder()
        .interceptor(log.clone())
        .build();
    (aws_sdk_dynamodb::Client::from_conf(config), log)
}
