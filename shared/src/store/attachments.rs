//! Attachments in S3, uploaded by clients straight to the bucket through
//! presigned URLs scoped to one object key.

use crate::error::AppError;
use crate::ports::AttachmentStorage;
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct S3AttachmentStorage {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3AttachmentStorage {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }
}

#[async_trait]
impl AttachmentStorage for S3AttachmentStorage {
    async fn presign_upload(
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
            .map_err(|e| super::from_sdk("s3:PutObject presign", e))?;
        Ok(request.uri().to_owned())
    }
}
