//! The batch bucket on S3.

use super::from_sdk;
use crate::error::AppError;
use crate::ports::{ObjectBody, ObjectStore};
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// When presigned URLs are signed; their validity runs from here for `expires_in`.
    clock: fn() -> SystemTime,
}

impl S3ObjectStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            clock: SystemTime::now,
        }
    }

    /// Signs presigned URLs at the time `clock` gives (tests use a fixed one).
    pub fn with_clock(mut self, clock: fn() -> SystemTime) -> Self {
        self.clock = clock;
        self
    }

    /// GetObject, with a missing object as `NotFound` and one over `max_bytes` (by its
    /// Content-Length, before any byte is read) as a `Conflict` naming both sizes.
    async fn get_object(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, AppError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(err) if err.is_no_such_key() => AppError::NotFound { what: "object" },
                _ => from_sdk("s3:GetObject", e),
            })?;
        let size = out.content_length.unwrap_or(0).max(0) as u64;
        if size > max_bytes {
            return Err(AppError::Conflict(format!(
                "the file is {size} bytes; the limit is {max_bytes}"
            )));
        }
        Ok(out)
    }

    /// A GET URL whose response carries `content_disposition` (S3's
    /// `response-content-disposition`, part of the signature).
    pub async fn presign_get_as(
        &self,
        key: &str,
        content_disposition: &str,
        expires_in: Duration,
    ) -> Result<String, AppError> {
        self.presigned_get(key, Some(content_disposition), expires_in)
            .await
    }

    async fn presigned_get(
        &self,
        key: &str,
        content_disposition: Option<&str>,
        expires_in: Duration,
    ) -> Result<String, AppError> {
        let presigning = self.presigning(expires_in)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_response_content_disposition(content_disposition.map(str::to_owned))
            .presigned(presigning)
            .await
            .map_err(|e| from_sdk("s3:GetObject presign", e))?;
        Ok(request.uri().to_owned())
    }

    /// Valid from `clock()` for `expires_in`: the URL carries both (X-Amz-Date, X-Amz-Expires).
    fn presigning(&self, expires_in: Duration) -> Result<PresigningConfig, AppError> {
        PresigningConfig::builder()
            .start_time((self.clock)())
            .expires_in(expires_in)
            .build()
            .map_err(AppError::internal)
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), AppError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| from_sdk("s3:PutObject", e))?;
        Ok(())
    }

    async fn get(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, AppError> {
        let out = self.get_object(key, max_bytes as u64).await?;
        let bytes = out.body.collect().await.map_err(|e| {
            AppError::Unavailable(format!("reading s3://{}/{key}: {e}", self.bucket))
        })?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn open(&self, key: &str, max_bytes: u64) -> Result<ObjectBody, AppError> {
        let out = self.get_object(key, max_bytes).await?;
        let size = out.content_length.unwrap_or(0).max(0) as u64;
        let source = format!("s3://{}/{key}", self.bucket);
        let chunks = futures::stream::unfold(Some(out.body), move |body| {
            let source = source.clone();
            async move {
                let mut body = body?;
                match body.next().await {
                    None => None,
                    Some(Ok(bytes)) => Some((Ok(bytes.to_vec()), Some(body))),
                    Some(Err(e)) => Some((
                        Err(AppError::Unavailable(format!("reading {source}: {e}"))),
                        None,
                    )),
                }
            }
        });
        Ok(ObjectBody {
            size,
            chunks: Box::pin(chunks),
        })
    }

    async fn size(&self, key: &str) -> Result<Option<u64>, AppError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length.unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|err| err.is_not_found()) => Ok(None),
            Err(e) => Err(from_sdk("s3:HeadObject", e)),
        }
    }

    async fn metadata(&self, key: &str) -> Result<HashMap<String, String>, AppError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| from_sdk("s3:HeadObject", e))?;
        Ok(out.metadata.unwrap_or_default())
    }

    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, AppError> {
        self.presigned_get(key, None, expires_in).await
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<String, AppError> {
        let presigning = self.presigning(expires_in)?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .presigned(presigning)
            .await
            .map_err(|e| from_sdk("s3:PutObject presign", e))?;
        Ok(request.uri().to_owned())
    }
}

#[cfg(test)]
mod tests {
    //! The batch URLs' lifetime, signed at a fixed time. S3 refuses a presigned URL once
    //! X-Amz-Date + X-Amz-Expires has passed, and both are covered by the signature; the
    //! emulators check neither, so this is where the 15 minutes are pinned down.
    use super::*;
    use crate::domain::{AgencyId, BatchStatus, Caller, Role, UserId};
    use crate::ports::BatchStore;
    use crate::service::BatchService;
    use crate::testing::MemoryWorld;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use serde_json::json;
    use std::sync::Arc;

    /// 2027-01-01T00:00:00Z.
    fn signing_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_600)
    }

    fn a_second_later() -> SystemTime {
        signing_time() + Duration::from_secs(1)
    }

    /// A client that only signs: nothing here sends a request.
    fn signing_client() -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "AKIDEXAMPLE",
                "secret",
                None,
                None,
                "test",
            ))
            .endpoint_url("http://127.0.0.1:1")
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    fn query(url: &str) -> HashMap<String, String> {
        let (_, query) = url.split_once('?').expect("a query string");
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn boss() -> Caller {
        Caller {
            user: UserId::parse("boss").unwrap(),
            agency: AgencyId::parse("a1").unwrap(),
            role: Role::Manager,
        }
    }

    /// The batch service with S3 presigning at the fixed time (everything else in memory).
    fn batches(world: &MemoryWorld) -> BatchService {
        BatchService {
            objects: Arc::new(
                S3ObjectStore::new(signing_client(), "batch-bucket").with_clock(signing_time),
            ),
            ..world.services().batches
        }
    }

    /// Signed at 2027-01-01T00:00:00Z for 900 s: S3 honours it until 00:15:00 and not after.
    fn assert_valid_for_15_minutes_from_signing(url: &str) {
        let query = query(url);
        assert_eq!(query["X-Amz-Date"], "20270101T000000Z", "{url}");
        assert_eq!(query["X-Amz-Expires"], "900", "{url}");
        // The signing scope is that day, so the date cannot be moved without a new signature.
        assert!(
            query["X-Amz-Credential"].contains("%2F20270101%2Fus-east-1%2Fs3%2F"),
            "{url}"
        );
        assert!(query["X-Amz-SignedHeaders"].contains("host"), "{url}");
    }

    #[tokio::test]
    async fn a_batch_upload_url_is_signed_for_15_minutes_from_its_signing_time() {
        let world = MemoryWorld::new();
        let reply = batches(&world)
            .upload_url(&boss(), &json!({"fileName": "skus.csv"}))
            .await
            .unwrap();
        let url = reply["upload"]["url"].as_str().unwrap();
        assert_valid_for_15_minutes_from_signing(url);
        assert!(url.contains("/batch-bucket/inputs/a1/"), "{url}");
    }

    #[tokio::test]
    async fn a_batch_results_url_is_signed_for_15_minutes_from_its_signing_time() {
        let world = MemoryWorld::new();
        let created = world
            .services()
            .batches
            .create(&boss(), &json!({"items": [1, 2]}))
            .await
            .unwrap();
        let mut batch = created.batch;
        assert_eq!(
            batches(&world)
                .get(&boss(), batch.id)
                .await
                .unwrap()
                .results_url,
            None
        );
        batch.status = BatchStatus::Completed;
        batch.results_key = Some(format!("batches/a1/{}/results/summary.json", batch.id));
        world.batches.put(&batch).await.unwrap();

        let view = batches(&world).get(&boss(), batch.id).await.unwrap();
        let url = view.results_url.expect("a results URL once finished");
        assert_valid_for_15_minutes_from_signing(&url);
        assert!(url.contains("/results/summary.json?"), "{url}");
    }

    /// The expiry is part of what is signed: the same URL signed a second later carries
    /// another date and another signature, so neither can be edited to extend it.
    #[tokio::test]
    async fn the_signing_time_and_lifetime_are_covered_by_the_signature() {
        let store = |clock| S3ObjectStore::new(signing_client(), "b").with_clock(clock);
        let ttl = Duration::from_secs(900);
        let now = query(&store(signing_time).presign_get("k", ttl).await.unwrap());
        let later = query(&store(a_second_later).presign_get("k", ttl).await.unwrap());
        assert_eq!(later["X-Amz-Date"], "20270101T000001Z");
        assert_ne!(now["X-Amz-Signature"], later["X-Amz-Signature"]);
        let shorter = query(
            &store(signing_time)
                .presign_get("k", Duration::from_secs(899))
                .await
                .unwrap(),
        );
        assert_eq!(shorter["X-Amz-Expires"], "899");
        assert_ne!(now["X-Amz-Signature"], shorter["X-Amz-Signature"]);
    }
}
