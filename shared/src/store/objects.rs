//! The batch bucket on S3.

use super::from_sdk;
use crate::error::AppError;
use crate::ports::ObjectStore;
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3ObjectStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
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
        if out.content_length.unwrap_or(0) as u64 > max_bytes as u64 {
            return Err(AppError::Conflict(format!(
                "object is {} bytes; the limit is {max_bytes}",
                out.content_length.unwrap_or(0)
            )));
        }
        let bytes = out.body.collect().await.map_err(|e| {
            AppError::Unavailable(format!("reading s3://{}/{key}: {e}", self.bucket))
        })?;
        Ok(bytes.into_bytes().to_vec())
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
        let presigning = PresigningConfig::expires_in(expires_in).map_err(AppError::internal)?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|e| from_sdk("s3:GetObject presign", e))?;
        Ok(request.uri().to_owned())
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<String, AppError> {
        let presigning = PresigningConfig::expires_in(expires_in).map_err(AppError::internal)?;
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
