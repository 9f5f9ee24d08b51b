//! The dispatch window of fair share (`ports::DispatchWindow`) on the single table.
//!
//! - Window: one item per agency and tier, `PK = AGENCY#<id>#QUEUED#<tier>`, `SK = WINDOW` (a
//!   partition of its own, not the agency's quota partition, which the in-flight slots load),
//!   whose `places` map names each task run sent to the queue and not yet started (task id →
//!   lease end, epoch ms; a [`LeaseMap`]), and `parked`, the latest park's mark (unique per
//!   park), present while dispatches may be parked.
//! - Parked dispatches: `PK = AGENCY#<id>#PARKED#<tier>`, `SK = <task id>` (ULIDs: oldest
//!   first), `message` the dispatch as JSON.

use super::keys::{s, PK, SK};
use super::lease_map::{lease_entries, LeaseMap, Take};
use crate::domain::{AgencyId, DispatchMessage, Priority, TaskId};
use crate::error::AppError;
use crate::ports::{DispatchWindow, Entry, Placement, WindowState};
use crate::store::{conditional_write, from_sdk};
use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

const PLACES: &str = "places";
const PARKED_MARK: &str = "parked";
const MESSAGE: &str = "message";

fn window_pk(agency: &AgencyId, tier: Priority) -> String {
    format!("AGENCY#{agency}#QUEUED#{tier}")
}

fn parked_pk(agency: &AgencyId, tier: Priority) -> String {
    format!("AGENCY#{agency}#PARKED#{tier}")
}

#[derive(Clone)]
pub struct DynamoDispatchWindow {
    client: Client,
    table: String,
}

impl DynamoDispatchWindow {
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    fn places(&self, agency: &AgencyId, tier: Priority) -> LeaseMap<'_> {
        LeaseMap {
            client: &self.client,
            table: &self.table,
            pk: window_pk(agency, tier),
            sk: "WINDOW".to_owned(),
            attribute: PLACES,
        }
    }
}

#[async_trait]
impl DispatchWindow for DynamoDispatchWindow {
    async fn enter(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
        until: DateTime<Utc>,
        size: u32,
        now: DateTime<Utc>,
        entry: Entry,
    ) -> Result<Placement, AppError> {
        let taken = self
            .places(agency, tier)
            .take(
                &task.to_string(),
                until,
                Some(size),
                now,
                entry == Entry::Dispatch,
            )
            .await?;
        Ok(match taken {
            Take::Taken => Placement::Entered,
            Take::Full => Placement::Full,
            Take::Held => Placement::Held,
        })
    }

    async fn leave(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<WindowState, AppError> {
        let result = self
            .places(agency, tier)
            .give_back(&task.to_string())
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let item = match result {
            Ok(out) => out.attributes.unwrap_or_default(),
            // No window: nothing was taken (a message sent before pacing, a retry's copy).
            Err(err)
                if err.as_service_error().and_then(|e| e.code())
                    == Some("ConditionalCheckFailedException") =>
            {
                return Ok(WindowState::default())
            }
            Err(err) => return Err(from_sdk("dynamodb:UpdateItem", err)),
        };
        Ok(WindowState {
            taken: lease_entries(item.get(PLACES)).map_or(0, |places| places.len() as u32),
            parked_mark: item.get(PARKED_MARK).and_then(|v| v.as_s().ok()).cloned(),
        })
    }

    async fn park(&self, message: &DispatchMessage) -> Result<(), AppError> {
        let body = serde_json::to_string(message).map_err(AppError::internal)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .item(PK, s(parked_pk(&message.agency_id, message.priority)))
            .item(SK, s(message.task_id.to_string()))
            .item(MESSAGE, s(body))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:PutItem", e))?;
        // After the parked item: a refill that sees the mark finds what it marks. Each park
        // writes a new mark, so a refill that found nothing clears only the mark it read.
        let mark = format!("{}#{:016x}", message.task_id, rand::random::<u64>());
        self.places(&message.agency_id, message.priority)
            .update()
            .update_expression(format!("SET {PARKED_MARK} = :mark"))
            .expression_attribute_values(":mark", s(mark))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    async fn parked(
        &self,
        agency: &AgencyId,
        tier: Priority,
        limit: usize,
    ) -> Result<Vec<DispatchMessage>, AppError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", s(parked_pk(agency, tier)))
            .consistent_read(true)
            .limit(limit.clamp(1, 1_000) as i32)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:Query", e))?;
        out.items()
            .iter()
            .map(|item| {
                let body = item
                    .get(MESSAGE)
                    .and_then(|v| v.as_s().ok())
                    .ok_or_else(|| AppError::internal("a parked dispatch without its message"))?;
                serde_json::from_str(body).map_err(AppError::internal)
            })
            .collect()
    }

    async fn unpark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<(), AppError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(parked_pk(agency, tier)))
            .key(SK, s(task.to_string()))
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:DeleteItem", e))?;
        Ok(())
    }

    async fn clear_parked_mark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        mark: &str,
    ) -> Result<(), AppError> {
        let update = self
            .places(agency, tier)
            .update()
            .update_expression(format!("REMOVE {PARKED_MARK}"))
            .condition_expression(format!("{PARKED_MARK} = :mark"))
            .expression_attribute_values(":mark", AttributeValue::S(mark.to_owned()));
        // A failed condition: a later park set its own mark, which stays.
        conditional_write("dynamodb:UpdateItem", update.send().await)?;
        Ok(())
    }
}
