//! Creates `AWS::Serverless::StateMachine`s and `AWS::StepFunctions::StateMachine`s, or updates
//! the definition of an existing one.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value;

use super::{opt_str, sdk_err, Provisioner, ACCOUNT_ID, SAM_STATE_MACHINE};
use crate::intrinsics::{self, scalar_string};
use crate::template::Resource;

impl Provisioner<'_> {
    pub(super) async fn create_state_machine(&mut self, r: &Resource, props: &Value) -> Result<()> {
        use aws_sdk_sfn::error::ProvideErrorMetadata;
        use aws_sdk_sfn::types::StateMachineType;
        let id = r.logical_id.as_str();
        let sam = r.kind == SAM_STATE_MACHINE;
        let name = opt_str(props, if sam { "Name" } else { "StateMachineName" })
            .unwrap_or_else(|| self.state.generated_name(id));
        let kind = opt_str(props, if sam { "Type" } else { "StateMachineType" })
            .unwrap_or_else(|| "STANDARD".into());
        let role_arn = format!(
            "arn:aws:iam::{ACCOUNT_ID}:role/{}",
            self.state.generated_name(id)
        );
        let definition = self.state_machine_definition(r, props)?;

        let existing = self.find_state_machine(&name).await?;
        let arn = match existing {
            Some(arn) => {
                self.update_state_machine(id, &name, &arn, &definition, &role_arn, &kind)
                    .await?;
                arn
            }
            None => {
                let created = self
                    .sfn
                    .create_state_machine()
                    .name(&name)
                    .definition(&definition)
                    .role_arn(&role_arn)
                    .r#type(StateMachineType::from(kind.as_str()))
                    .send()
                    .await;
                match created {
                    Ok(out) => {
                        tracing::info!("created state machine {name} ({id})");
                        out.state_machine_arn().to_string()
                    }
                    Err(e) if e.code() == Some("StateMachineAlreadyExists") => {
                        let arn = self.find_state_machine(&name).await?.ok_or_else(|| {
                            anyhow!("state machine {name} exists but is not listed")
                        })?;
                        self.update_state_machine(id, &name, &arn, &definition, &role_arn, &kind)
                            .await?;
                        arn
                    }
                    Err(e) => {
                        return Err(sdk_err(e))
                            .with_context(|| format!("creating state machine {name}"))
                    }
                }
            }
        };
        self.state.set_attr(id, "Arn", &arn);
        self.state.set_attr(id, "Name", &name);
        self.state.set_ref(id, arn);
        Ok(())
    }

    /// The definition JSON: from `DefinitionUri` (a file relative to the template), `Definition`
    /// (inline, intrinsics resolved) or `DefinitionString`, with `DefinitionSubstitutions` applied.
    fn state_machine_definition(&self, r: &Resource, props: &Value) -> Result<String> {
        let text = if let Some(uri) = props.get("DefinitionUri") {
            let rel = scalar_string(uri).ok_or_else(|| {
                anyhow!("DefinitionUri must be a local file path to run locally (S3 locations are not supported)")
            })?;
            let path = self.state.template.dir().join(&rel);
            let raw = std::fs::read_to_string(&path)
                .with_context(|| format!("reading DefinitionUri {}", path.display()))?;
            if matches!(
                Path::new(&rel).extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let v: Value = serde_yaml::from_str(&raw)
                    .with_context(|| format!("parsing {}", path.display()))?;
                serde_json::to_string(&v)?
            } else {
                raw
            }
        } else if let Some(def) = props.get("Definition") {
            serde_json::to_string(def).context("serializing Definition")?
        } else if let Some(s) = props.get("DefinitionString").and_then(scalar_string) {
            s
        } else if props.get("DefinitionS3Location").is_some() {
            bail!("DefinitionS3Location is not supported locally; use DefinitionUri with a local file")
        } else {
            bail!("no Definition, DefinitionUri or DefinitionString")
        };

        let mut text = text;
        if let Some(subs) = props
            .get("DefinitionSubstitutions")
            .and_then(Value::as_mapping)
        {
            for (k, v) in subs {
                let k =
                    scalar_string(k).ok_or_else(|| anyhow!("DefinitionSubstitutions key {k:?}"))?;
                let v = match v {
                    Value::Sequence(_) | Value::Mapping(_) => serde_json::to_string(v)?,
                    other => scalar_string(other).unwrap_or_default(),
                };
                text = text.replace(&format!("${{{k}}}"), &v);
            }
        }
        let left = intrinsics::sub_placeholders(&text);
        if !left.is_empty() {
            tracing::warn!(
                "{}: definition still has placeholders without DefinitionSubstitutions: {}",
                r.logical_id,
                left.join(", ")
            );
        }
        serde_json::from_str::<serde_json::Value>(&text).with_context(|| {
            format!(
                "{}: the definition is not valid JSON after substitutions",
                r.logical_id
            )
        })?;
        Ok(text)
    }

    async fn find_state_machine(&self, name: &str) -> Result<Option<String>> {
        let mut token = None;
        loop {
            let page = self
                .sfn
                .list_state_machines()
                .set_next_token(token)
                .send()
                .await
                .map_err(sdk_err)
                .context("listing state machines")?;
            if let Some(sm) = page.state_machines().iter().find(|sm| sm.name() == name) {
                return Ok(Some(sm.state_machine_arn().to_string()));
            }
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => return Ok(None),
            }
        }
    }

    async fn update_state_machine(
        &self,
        id: &str,
        name: &str,
        arn: &str,
        definition: &str,
        role_arn: &str,
        kind: &str,
    ) -> Result<()> {
        let current = self
            .sfn
            .describe_state_machine()
            .state_machine_arn(arn)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("describing state machine {name}"))?;
        if current.r#type().as_str() != kind {
            tracing::warn!(
                "state machine {name} ({id}) exists as {}, the template says {kind}; reset the emulator to change it",
                current.r#type().as_str()
            );
        }
        if current.definition() == definition && current.role_arn() == role_arn {
            tracing::info!("state machine {name} ({id}) already exists, unchanged");
            return Ok(());
        }
        self.sfn
            .update_state_machine()
            .state_machine_arn(arn)
            .definition(definition)
            .role_arn(role_arn)
            .send()
            .await
            .map_err(sdk_err)
            .with_context(|| format!("updating state machine {name}"))?;
        tracing::info!("updated state machine {name} ({id})");
        Ok(())
    }
}
