//! `AWS::Events::EventBus`: a custom bus on the emulator, so state-change events published
//! to it reach the rules (and their targets) a test or a developer puts on it.

use anyhow::{Context, Result};
use serde_yaml::Value;

use super::{opt_str, sdk_err, Provisioner, ACCOUNT_ID};
use crate::template::Resource;

impl Provisioner<'_> {
    pub(super) async fn create_event_bus(&mut self, r: &Resource, props: &Value) -> Result<()> {
        let id = r.logical_id.as_str();
        let name = opt_str(props, "Name").unwrap_or_else(|| self.state.generated_name(id));
        match self.events.create_event_bus().name(&name).send().await {
            Ok(_) => tracing::info!("created event bus {name}"),
            Err(err) => {
                let already = err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_already_exists_exception());
                if !already {
                    return Err(sdk_err(err)).with_context(|| format!("creating event bus {name}"));
                }
            }
        }
        let arn = format!(
            "arn:aws:events:{}:{ACCOUNT_ID}:event-bus/{name}",
            self.state.region
        );
        self.state.set_attr(id, "Arn", arn);
        self.state.set_attr(id, "Name", name.clone());
        self.state.set_ref(id, name);
        Ok(())
    }
}
