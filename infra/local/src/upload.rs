//! Dropping a file under `uploads/<agencyId>/` in the local stack's batch bucket, as a client
//! with S3 credentials does on AWS (`aws s3 cp … --metadata …`): the upload trigger makes it a
//! batch. Locally the emulator's credentials and the bucket's name come from the stack.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// `name=value` pairs for `x-amz-meta-*`: the names the upload trigger reads, checked here so a
/// typo is an error now rather than a default silently taken.
pub fn parse_metadata(pairs: &[String]) -> Result<Vec<(String, String)>> {
    const NAMES: [&str; 6] = [
        "title",
        "parallelism",
        "tolerated-failure-percentage",
        "priority",
        "executor",
        "items-per-batch",
    ];
    pairs
        .iter()
        .map(|pair| {
            let Some((name, value)) = pair.split_once('=') else {
                bail!("--meta {pair}: expected name=value");
            };
            let name = name.trim().to_ascii_lowercase();
            if !NAMES.contains(&name.as_str()) {
                bail!("--meta {pair}: unknown name; one of {}", NAMES.join(", "));
            }
            Ok((name, value.to_owned()))
        })
        .collect()
}

/// The key an upload of `file` for `agency` lands under.
pub fn upload_key(agency: &str, file: &Path) -> Result<String> {
    shared::domain::AgencyId::parse(agency).map_err(|e| anyhow::anyhow!("--agency: {e}"))?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", file.display()))?;
    Ok(format!("uploads/{agency}/{name}"))
}

/// Puts `file` at `key` in `bucket` on the emulator at `endpoint`, with `metadata`.
pub async fn upload(
    endpoint: &str,
    bucket: &str,
    key: &str,
    file: &Path,
    metadata: &[(String, String)],
) -> Result<()> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let sdk = crate::emulator::sdk_config(endpoint).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let mut put = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/octet-stream")
        .body(body.into());
    for (name, value) in metadata {
        put = put.metadata(name, value);
    }
    put.send()
        .await
        .with_context(|| format!("putting s3://{bucket}/{key} on {endpoint}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_are_the_triggers_own() {
        let parsed = parse_metadata(&["priority=high".into(), "Items-Per-Batch=2".into()]).unwrap();
        assert_eq!(
            parsed,
            [
                ("priority".to_owned(), "high".to_owned()),
                ("items-per-batch".to_owned(), "2".to_owned())
            ]
        );
        let typo = parse_metadata(&["prority=high".into()]).unwrap_err();
        assert!(typo.to_string().contains("unknown name"), "{typo}");
        assert!(parse_metadata(&["priority".into()]).is_err());
    }

    #[test]
    fn the_key_is_under_the_agencys_uploads() {
        assert_eq!(
            upload_key("acme", Path::new("/tmp/orders.jsonl")).unwrap(),
            "uploads/acme/orders.jsonl"
        );
        assert!(upload_key("ac/me", Path::new("/tmp/orders.jsonl")).is_err());
    }
}
