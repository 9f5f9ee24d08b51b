//! Creates `AWS::DynamoDB::Table`s (GSIs, LSIs, streams, TTL); an existing table gets its
//! missing GSIs and its TTL setting.

use std::collections::HashSet;

use anyhow::{anyhow, Context, Result};
use serde_yaml::Value;

use super::{opt_bool, opt_str, opt_u64, req_str, sdk_err, seq, Provisioner, ACCOUNT_ID};
use crate::intrinsics::scalar_string;
use crate::template::Resource;

impl Provisioner<'_> {
    pub(super) async fn create_table(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction,
            GlobalSecondaryIndex, GlobalSecondaryIndexUpdate, KeySchemaElement, KeyType,
            LocalSecondaryIndex, Projection, ProjectionType, ProvisionedThroughput,
            ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
            TimeToLiveStatus,
        };
        let id = r.logical_id.as_str();
        let name = opt_str(props, "TableName").unwrap_or_else(|| self.state.generated_name(id));

        let attribute_definitions = seq(props, "AttributeDefinitions")
            .iter()
            .map(|a| {
                AttributeDefinition::builder()
                    .attribute_name(req_str(a, "AttributeName")?)
                    .attribute_type(ScalarAttributeType::from(
                        req_str(a, "AttributeType")?.as_str(),
                    ))
                    .build()
                    .map_err(Into::into)
            })
            .collect::<Result<Vec<_>>>()
            .context("AttributeDefinitions")?;
        let key_schema = |v: &Value| -> Result<Vec<KeySchemaElement>> {
            seq(v, "KeySchema")
                .iter()
                .map(|k| {
                    KeySchemaElement::builder()
                        .attribute_name(req_str(k, "AttributeName")?)
                        .key_type(KeyType::from(req_str(k, "KeyType")?.as_str()))
                        .build()
                        .map_err(Into::into)
                })
                .collect::<Result<Vec<_>>>()
                .context("KeySchema")
        };
        let throughput = |v: &Value| -> Result<Option<ProvisionedThroughput>> {
            let Some(t) = v.get("ProvisionedThroughput") else {
                return Ok(None);
            };
            let units = |k: &str| -> Result<i64> {
                opt_u64(t, k)?
                    .ok_or_else(|| anyhow!("ProvisionedThroughput.{k} missing"))?
                    .try_into()
                    .context(k.to_string())
            };
            Ok(Some(
                ProvisionedThroughput::builder()
                    .read_capacity_units(units("ReadCapacityUnits")?)
                    .write_capacity_units(units("WriteCapacityUnits")?)
                    .build()?,
            ))
        };
        let projection = |v: &Value| -> Projection {
            let p = v.get("Projection").cloned().unwrap_or(Value::Null);
            let non_key: Vec<String> = seq(&p, "NonKeyAttributes")
                .iter()
                .filter_map(scalar_string)
                .collect();
            Projection::builder()
                .projection_type(ProjectionType::from(
                    opt_str(&p, "ProjectionType")
                        .unwrap_or_else(|| "ALL".into())
                        .as_str(),
                ))
                .set_non_key_attributes((!non_key.is_empty()).then_some(non_key))
                .build()
        };

        let table_throughput = throughput(props)?;
        let billing = match opt_str(props, "BillingMode") {
            Some(b) => BillingMode::from(b.as_str()),
            None if table_throughput.is_some() => BillingMode::Provisioned,
            None => BillingMode::PayPerRequest,
        };
        let provisioned = billing == BillingMode::Provisioned;
        let default_throughput = || {
            ProvisionedThroughput::builder()
                .read_capacity_units(5)
                .write_capacity_units(5)
                .build()
        };

        let mut gsis = Vec::new();
        for g in seq(props, "GlobalSecondaryIndexes") {
            let index_name = req_str(g, "IndexName").context("GlobalSecondaryIndexes")?;
            let t = match throughput(g)? {
                Some(t) => Some(t),
                None if provisioned => Some(
                    table_throughput
                        .clone()
                        .map_or_else(default_throughput, Ok)?,
                ),
                None => None,
            };
            gsis.push(
                GlobalSecondaryIndex::builder()
                    .index_name(&index_name)
                    .set_key_schema(Some(key_schema(g).with_context(|| index_name.clone())?))
                    .projection(projection(g))
                    .set_provisioned_throughput(t)
                    .build()?,
            );
        }
        let mut lsis = Vec::new();
        for l in seq(props, "LocalSecondaryIndexes") {
            let index_name = req_str(l, "IndexName").context("LocalSecondaryIndexes")?;
            lsis.push(
                LocalSecondaryIndex::builder()
                    .index_name(&index_name)
                    .set_key_schema(Some(key_schema(l).with_context(|| index_name.clone())?))
                    .projection(projection(l))
                    .build()?,
            );
        }
        let stream = match props.get("StreamSpecification") {
            Some(s) => Some(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::from(
                        opt_str(s, "StreamViewType")
                            .unwrap_or_else(|| "NEW_AND_OLD_IMAGES".into())
                            .as_str(),
                    ))
                    .build()?,
            ),
            None => None,
        };
        let table_key_schema = key_schema(props)?;

        let created = self
            .dynamodb
            .create_table()
            .table_name(&name)
            .set_attribute_definitions(Some(attribute_definitions.clone()))
            .set_key_schema(Some(table_key_schema.clone()))
            .set_global_secondary_indexes((!gsis.is_empty()).then(|| gsis.clone()))
            .set_local_secondary_indexes((!lsis.is_empty()).then_some(lsis))
            .billing_mode(billing.clone())
            .set_provisioned_throughput(if provisioned {
                Some(
                    table_throughput
                        .clone()
                        .map_or_else(default_throughput, Ok)?,
                )
            } else {
                None
            })
            .set_stream_specification(stream)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!("created table {name} ({id}, {} GSIs)", gsis.len()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                // Bring an existing table in line where that can be done without losing data.
                let existing = self
                    .dynamodb
                    .describe_table()
                    .table_name(&name)
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("describing existing table {name}"))?;
                let table = existing.table();
                if table.map(|t| t.key_schema()) != Some(table_key_schema.as_slice()) {
                    tracing::warn!(
                        "table {name} ({id}) exists with a different key schema; reset the emulator to recreate it"
                    );
                }
                let have: HashSet<&str> = table
                    .map(|t| t.global_secondary_indexes())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|g| g.index_name())
                    .collect();
                let missing: Vec<&GlobalSecondaryIndex> = gsis
                    .iter()
                    .filter(|g| !have.contains(g.index_name()))
                    .collect();
                for g in &missing {
                    let action = CreateGlobalSecondaryIndexAction::builder()
                        .index_name(g.index_name())
                        .set_key_schema(Some(g.key_schema().to_vec()))
                        .set_projection(g.projection().cloned())
                        .set_provisioned_throughput(g.provisioned_throughput().cloned())
                        .build()?;
                    self.dynamodb
                        .update_table()
                        .table_name(&name)
                        .set_attribute_definitions(Some(attribute_definitions.clone()))
                        .global_secondary_index_updates(
                            GlobalSecondaryIndexUpdate::builder().create(action).build(),
                        )
                        .send()
                        .await
                        .map_err(sdk_err)
                        .with_context(|| format!("adding GSI {} to {name}", g.index_name()))?;
                    tracing::info!("added GSI {} to existing table {name}", g.index_name());
                }
                if missing.is_empty() {
                    tracing::info!("table {name} ({id}) already exists");
                }
            }
            Err(e) => return Err(sdk_err(e)).with_context(|| format!("creating table {name}")),
        }

        if let Some(ttl) = props.get("TimeToLiveSpecification") {
            let attribute = req_str(ttl, "AttributeName").context("TimeToLiveSpecification")?;
            let enabled = opt_bool(ttl, "Enabled")?.unwrap_or(false);
            let current = self
                .dynamodb
                .describe_time_to_live()
                .table_name(&name)
                .send()
                .await
                .map_err(sdk_err)
                .with_context(|| format!("describing TTL of {name}"))?;
            let desc = current.time_to_live_description();
            let is_enabled =
                desc.and_then(|d| d.time_to_live_status()) == Some(&TimeToLiveStatus::Enabled);
            let same_attr = desc.and_then(|d| d.attribute_name()) == Some(attribute.as_str());
            if enabled != is_enabled || (enabled && !same_attr) {
                self.dynamodb
                    .update_time_to_live()
                    .table_name(&name)
                    .time_to_live_specification(
                        TimeToLiveSpecification::builder()
                            .attribute_name(&attribute)
                            .enabled(enabled)
                            .build()?,
                    )
                    .send()
                    .await
                    .map_err(sdk_err)
                    .with_context(|| format!("setting TTL on {name}"))?;
                tracing::debug!("TTL on {name}: {attribute} enabled={enabled}");
            }
        }

        let described = self
            .dynamodb
            .describe_table()
            .table_name(&name)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("describing table {name}"))?;
        let table = described.table();
        let arn = table
            .and_then(|t| t.table_arn())
            .map(String::from)
            .unwrap_or_else(|| {
                format!(
                    "arn:aws:dynamodb:{}:{ACCOUNT_ID}:table/{name}",
                    self.state.region
                )
            });
        if let Some(stream_arn) = table.and_then(|t| t.latest_stream_arn()) {
            self.state.set_attr(id, "StreamArn", stream_arn);
        }
        self.state.set_attr(id, "Arn", arn);
        self.state.set_ref(id, name);
        Ok(())
    }
}
