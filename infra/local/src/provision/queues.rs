//! Creates `AWS::SQS::Queue`s; an existing queue is kept and its attributes updated.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use serde_yaml::Value;

use super::{opt_bool, opt_str, sdk_err, Provisioner, ACCOUNT_ID};
use crate::template::Resource;

impl Provisioner<'_> {
    pub(super) async fn create_queue(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_sqs::error::ProvideErrorMetadata;
        use aws_sdk_sqs::types::QueueAttributeName;
        let id = r.logical_id.as_str();
        let fifo = opt_bool(props, "FifoQueue")?.unwrap_or(false);
        let name = match opt_str(props, "QueueName") {
            Some(n) => n,
            None if fifo => format!("{}.fifo", self.state.generated_name(id)),
            None => self.state.generated_name(id),
        };

        let mut attributes: HashMap<QueueAttributeName, String> = HashMap::new();
        for key in [
            "VisibilityTimeout",
            "MessageRetentionPeriod",
            "DelaySeconds",
            "ReceiveMessageWaitTimeSeconds",
            "MaximumMessageSize",
            "ContentBasedDeduplication",
            "DeduplicationScope",
            "FifoThroughputLimit",
            "KmsMasterKeyId",
            "KmsDataKeyReusePeriodSeconds",
            "SqsManagedSseEnabled",
        ] {
            if let Some(v) = opt_str(props, key) {
                attributes.insert(QueueAttributeName::from(key), v);
            }
        }
        for key in ["RedrivePolicy", "RedriveAllowPolicy"] {
            match props.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => {
                    attributes.insert(QueueAttributeName::from(key), s.clone());
                }
                Some(v) => {
                    let json = serde_json::to_string(v).with_context(|| key.to_string())?;
                    attributes.insert(QueueAttributeName::from(key), json);
                }
            }
        }
        let mut create_attributes = attributes.clone();
        if fifo {
            create_attributes.insert(QueueAttributeName::FifoQueue, "true".into());
        }

        // An existing queue is kept (with its messages) and its attributes updated, so that
        // template edits take effect; moto's CreateQueue would silently return it unchanged.
        let existing = match self.sqs.get_queue_url().queue_name(&name).send().await {
            Ok(out) => out.queue_url().map(String::from),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_queue_does_not_exist())
                    || matches!(
                        e.code(),
                        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
                    ) =>
            {
                None
            }
            Err(e) => {
                return Err(sdk_err(e)).with_context(|| format!("looking up queue {name}"));
            }
        };
        let url = match existing {
            Some(url) => {
                if !attributes.is_empty() {
                    self.sqs
                        .set_queue_attributes()
                        .queue_url(&url)
                        .set_attributes(Some(attributes))
                        .send()
                        .await
                        .map_err(sdk_err)
                        .with_context(|| format!("updating attributes of existing queue {name}"))?;
                }
                tracing::info!("queue {name} ({id}) already exists; attributes updated");
                url
            }
            None => {
                let created = self
                    .sqs
                    .create_queue()
                    .queue_name(&name)
                    .set_attributes(Some(create_attributes))
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("creating queue {name}"))?;
                tracing::info!("created queue {name} ({id})");
                created
                    .queue_url()
                    .map(String::from)
                    .ok_or_else(|| anyhow!("CreateQueue returned no URL for {name}"))?
            }
        };

        let arn = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("reading the ARN of queue {name}"))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .unwrap_or_else(|| format!("arn:aws:sqs:{}:{ACCOUNT_ID}:{name}", self.state.region));

        self.queue_urls_by_arn.insert(arn.clone(), url.clone());
        self.state.set_attr(id, "Arn", arn);
        self.state.set_attr(id, "QueueName", &name);
        self.state.set_attr(id, "QueueUrl", &url);
        self.state.set_ref(id, url);
        Ok(())
    }
}
