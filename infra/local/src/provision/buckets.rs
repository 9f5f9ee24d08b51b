//! Creates `AWS::S3::Bucket`s (CORS, versioning) and their queue notifications.

use anyhow::{Context, Result};
use serde_yaml::Value;

use super::{opt_bool, opt_str, opt_u64, req_str, sdk_err, seq, Provisioner};
use crate::intrinsics::scalar_string;
use crate::template::Resource;

impl Provisioner<'_> {
    pub(super) async fn create_bucket(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        use aws_sdk_s3::types::{
            BucketLocationConstraint, BucketVersioningStatus, CorsConfiguration, CorsRule,
            CreateBucketConfiguration, VersioningConfiguration,
        };
        let id = r.logical_id.as_str();
        let region = self.state.region.clone();
        let name = match opt_str(props, "BucketName") {
            Some(n) => n,
            None => bucket_name(&self.state.stack, id, &region),
        };

        // moto (like AWS in us-east-1) answers CreateBucket for an owned bucket with 200.
        let exists = self.s3.head_bucket().bucket(&name).send().await.is_ok();
        let created = if exists {
            Err(None)
        } else {
            self.s3
                .create_bucket()
                .bucket(&name)
                .set_create_bucket_configuration((region != "us-east-1").then(|| {
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(region.as_str()))
                        .build()
                }))
                .send()
                .await
                .map_err(Some)
        };
        match created {
            Ok(_) => tracing::info!("created bucket {name} ({id})"),
            Err(None) => tracing::info!("bucket {name} ({id}) already exists"),
            Err(Some(e))
                if matches!(
                    e.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                tracing::info!("bucket {name} ({id}) already exists");
            }
            Err(Some(e)) => {
                return Err(sdk_err(e)).with_context(|| format!("creating bucket {name}"))
            }
        }

        if let Some(cors) = props.get("CorsConfiguration") {
            let strings = |v: &Value, k: &str| -> Option<Vec<String>> {
                let items: Vec<String> = seq(v, k).iter().filter_map(scalar_string).collect();
                (!items.is_empty()).then_some(items)
            };
            let mut rules = Vec::new();
            for rule in seq(cors, "CorsRules") {
                rules.push(
                    CorsRule::builder()
                        .set_id(opt_str(rule, "Id"))
                        .set_allowed_methods(strings(rule, "AllowedMethods"))
                        .set_allowed_origins(strings(rule, "AllowedOrigins"))
                        .set_allowed_headers(strings(rule, "AllowedHeaders"))
                        .set_expose_headers(strings(rule, "ExposedHeaders"))
                        .set_max_age_seconds(
                            opt_u64(rule, "MaxAge")?.map(|n| n.try_into()).transpose()?,
                        )
                        .build()
                        .context("CorsRules")?,
                );
            }
            self.s3
                .put_bucket_cors()
                .bucket(&name)
                .cors_configuration(
                    CorsConfiguration::builder()
                        .set_cors_rules(Some(rules))
                        .build()?,
                )
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("setting CORS on {name}"))?;
        }

        if let Some(status) = props
            .get("VersioningConfiguration")
            .and_then(|v| opt_str(v, "Status"))
        {
            self.s3
                .put_bucket_versioning()
                .bucket(&name)
                .versioning_configuration(
                    VersioningConfiguration::builder()
                        .status(BucketVersioningStatus::from(status.as_str()))
                        .build(),
                )
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("setting versioning on {name}"))?;
        }

        if let Some(n) = props.get("NotificationConfiguration") {
            self.put_notifications(id, &name, n).await?;
        }

        self.state
            .set_attr(id, "Arn", format!("arn:aws:s3:::{name}"));
        self.state
            .set_attr(id, "DomainName", format!("{name}.s3.amazonaws.com"));
        self.state.set_attr(
            id,
            "RegionalDomainName",
            format!("{name}.s3.{region}.amazonaws.com"),
        );
        self.state.set_attr(
            id,
            "DualStackDomainName",
            format!("{name}.s3.dualstack.{region}.amazonaws.com"),
        );
        self.state.set_attr(
            id,
            "WebsiteURL",
            format!("http://{name}.s3-website-{region}.amazonaws.com"),
        );
        self.state.set_ref(id, name);
        Ok(())
    }

    async fn put_notifications(&mut self, id: &str, bucket: &str, config: &Value) -> Result<()> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        use aws_sdk_s3::types::{
            Event, EventBridgeConfiguration, FilterRule, FilterRuleName, NotificationConfiguration,
            NotificationConfigurationFilter, QueueConfiguration, S3KeyFilter,
        };
        let mut wanted: Vec<QueueNotification> = Vec::new();
        for q in seq(config, "QueueConfigurations") {
            let queue = req_str(q, "Queue").context("QueueConfigurations")?;
            let event = req_str(q, "Event").context("QueueConfigurations")?;
            let rules: Vec<(String, String)> = q
                .get("Filter")
                .and_then(|f| f.get("S3Key"))
                .map(|k| seq(k, "Rules"))
                .unwrap_or_default()
                .iter()
                .map(|rule| {
                    Ok((
                        req_str(rule, "Name")?.to_lowercase(),
                        req_str(rule, "Value")?,
                    ))
                })
                .collect::<Result<_>>()
                .context("Filter.S3Key.Rules")?;
            wanted.push((queue, vec![event], rules));
        }
        for kind in ["TopicConfigurations", "LambdaConfigurations"] {
            if !seq(config, kind).is_empty() {
                tracing::warn!(
                    "{id}: NotificationConfiguration.{kind} is not supported locally (deliver S3 events through SQS)"
                );
            }
        }
        let eventbridge = config
            .get("EventBridgeConfiguration")
            .map(|e| opt_bool(e, "EventBridgeEnabled"))
            .transpose()?
            .flatten()
            .unwrap_or(false);

        // PutBucketNotificationConfiguration sends an s3:TestEvent to each queue; skip it when
        // the bucket is already configured this way. (moto answers the GET for a bucket without
        // notifications with a root element the SDK cannot parse: treat any failure as "unknown".)
        let current = self
            .s3
            .get_bucket_notification_configuration()
            .bucket(bucket)
            .send()
            .await;
        match current {
            Ok(current) => {
                let mut have: Vec<QueueNotification> = current
                    .queue_configurations()
                    .iter()
                    .map(|q| {
                        let rules = q
                            .filter()
                            .and_then(|f| f.key())
                            .map(|k| k.filter_rules())
                            .unwrap_or_default()
                            .iter()
                            .map(|r| {
                                (
                                    r.name()
                                        .map(|n| n.as_str().to_lowercase())
                                        .unwrap_or_default(),
                                    r.value().unwrap_or_default().to_string(),
                                )
                            })
                            .collect();
                        let events = q.events().iter().map(|e| e.as_str().to_string()).collect();
                        (q.queue_arn().to_string(), events, rules)
                    })
                    .collect();
                let mut sorted_wanted = wanted.clone();
                for list in [&mut have, &mut sorted_wanted] {
                    for entry in list.iter_mut() {
                        entry.1.sort();
                        entry.2.sort();
                    }
                    list.sort();
                }
                if have == sorted_wanted
                    && current.event_bridge_configuration().is_some() == eventbridge
                {
                    tracing::debug!("notifications of {bucket} unchanged");
                    return Ok(());
                }
            }
            Err(e) => tracing::debug!(
                "could not read the notifications of {bucket} ({}); putting them",
                e.code().unwrap_or("unparsable answer")
            ),
        }

        let mut builder = NotificationConfiguration::builder();
        for (queue, events, rules) in &wanted {
            let filter_rules: Vec<FilterRule> = rules
                .iter()
                .map(|(n, v)| {
                    FilterRule::builder()
                        .name(FilterRuleName::from(n.as_str()))
                        .value(v)
                        .build()
                })
                .collect();
            let filter = (!filter_rules.is_empty()).then(|| {
                NotificationConfigurationFilter::builder()
                    .key(
                        S3KeyFilter::builder()
                            .set_filter_rules(Some(filter_rules))
                            .build(),
                    )
                    .build()
            });
            builder = builder.queue_configurations(
                QueueConfiguration::builder()
                    .queue_arn(queue)
                    .set_events(Some(
                        events.iter().map(|e| Event::from(e.as_str())).collect(),
                    ))
                    .set_filter(filter)
                    .build()?,
            );
        }
        if eventbridge {
            builder =
                builder.event_bridge_configuration(EventBridgeConfiguration::builder().build());
        }
        self.s3
            .put_bucket_notification_configuration()
            .bucket(bucket)
            .notification_configuration(builder.build())
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("setting notifications on {bucket}"))?;
        tracing::info!("bucket {bucket} ({id}) notifies {} queue(s)", wanted.len());
        Ok(())
    }
}

/// A queue notification, compared as (queue ARN, events, (filter rule name, value)).
type QueueNotification = (String, Vec<String>, Vec<(String, String)>);

/// The longest S3 bucket name.
const MAX_BUCKET_NAME: usize = 63;

/// A name for a bucket the template leaves unnamed, as CloudFormation generates one: S3 names
/// are global, lower case and at most 63 characters, while stack names may be upper case and
/// 128 long. `<stack>-<logical id>-<region>` in lower case, `[a-z0-9-]` only (dots would break
/// virtual-hosted HTTPS); a longer one is cut and ends in a hash of the whole, so two long stack
/// names never share a bucket, nor do two Regions.
fn bucket_name(stack: &str, logical_id: &str, region: &str) -> String {
    let full: String = format!("{stack}-{logical_id}-{region}")
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut name = full.trim_matches('-').to_string();
    // S3 reserves these prefixes.
    if ["xn--", "sthree-", "amzn-s3-demo-"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        name.insert_str(0, "b-");
    }
    if name.len() < 3 || name.len() > MAX_BUCKET_NAME {
        use sha2::{Digest, Sha256};
        let hash: String = Sha256::digest(full.as_bytes())[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        name.truncate(MAX_BUCKET_NAME - hash.len() - 1);
        name = format!("{}-{hash}", name.trim_end_matches('-'));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    /// S3's rules for a general purpose bucket name, as far as these names can break them.
    fn valid(name: &str) -> bool {
        (3..=MAX_BUCKET_NAME).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric())
            && !name.starts_with("xn--")
            && !name.starts_with("sthree-")
    }

    #[test]
    fn bucket_names_are_lower_case_and_carry_the_region() {
        assert_eq!(
            bucket_name("Taskflow-Dev", "AttachmentsBucket", "eu-west-1"),
            "taskflow-dev-attachmentsbucket-eu-west-1"
        );
        assert_eq!(bucket_name("a_b", "C", "us-east-1"), "a-b-c-us-east-1");
        assert_ne!(
            bucket_name("Taskflow", "Bucket", "us-east-1"),
            bucket_name("Taskflow", "Bucket", "eu-west-1")
        );
        assert!(valid(&bucket_name("xn--Stack", "B", "us-east-1")));
    }

    #[test]
    fn long_stack_names_get_valid_names_of_their_own() {
        // CloudFormation allows 128 characters; two stacks sharing their first 100.
        let stem = format!("Team-{}", "X".repeat(95));
        let a = bucket_name(
            &format!("{stem}-Alpha-{}", "y".repeat(22)),
            "AttachmentsBucket",
            "ap-southeast-2",
        );
        let b = bucket_name(
            &format!("{stem}-Bravo-{}", "y".repeat(22)),
            "AttachmentsBucket",
            "ap-southeast-2",
        );
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_eq!(a.len(), MAX_BUCKET_NAME);
        assert_ne!(a, b);
        let other_region = bucket_name(
            &format!("{stem}-Alpha-{}", "y".repeat(22)),
            "AttachmentsBucket",
            "eu-west-1",
        );
        assert_ne!(a, other_region);
        // Stable: the same stack finds its bucket again.
        assert_eq!(
            a,
            bucket_name(
                &format!("{stem}-Alpha-{}", "y".repeat(22)),
                "AttachmentsBucket",
                "ap-southeast-2"
            )
        );
    }
}
