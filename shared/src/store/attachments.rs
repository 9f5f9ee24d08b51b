//! Attachments in S3, uploaded by clients straight to the bucket through
//! presigned URLs scoped to one object key.

use super::S3ObjectStore;
use crate::error::AppError;
use crate::ports::{AttachmentStorage, ObjectStore};
use async_trait::async_trait;
use std::time::Duration;

/// The attachments bucket: the same presigning as the batch bucket, another bucket.
#[derive(Debug, Clone)]
pub struct S3AttachmentStorage {
    objects: S3ObjectStore,
}

impl S3AttachmentStorage {
    pub fn new(client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        Self {
            objects: S3ObjectStore::new(client, bucket),
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
        self.objects
            .presign_put(key, content_type, expires_in)
            .await
    }
}
