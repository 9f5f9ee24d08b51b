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

    async fn presign_download(
        &self,
        key: &str,
        file_name: &str,
        expires_in: Duration,
    ) -> Result<String, AppError> {
        self.objects
            .presign_get_as(key, &content_disposition(file_name), expires_in)
            .await
    }
}

/// `attachment` with the name twice: plain ASCII for old clients (anything else, quotes and
/// backslashes included, becomes `_`), and exactly as given in RFC 5987 form (RFC 6266).
fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            ' ' => ' ',
            c if c.is_ascii_graphic() => c,
            _ => '_',
        })
        .collect();
    let encoded: String = file_name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn download_names_survive_quotes_and_unicode() {
        assert_eq!(
            content_disposition("notes.txt"),
            "attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt"
        );
        assert_eq!(
            content_disposition("a \"q\".pdf"),
            "attachment; filename=\"a _q_.pdf\"; filename*=UTF-8''a%20%22q%22.pdf"
        );
        assert_eq!(
            content_disposition("Übersicht.csv"),
            "attachment; filename=\"_bersicht.csv\"; filename*=UTF-8''%C3%9Cbersicht.csv"
        );
    }
}
