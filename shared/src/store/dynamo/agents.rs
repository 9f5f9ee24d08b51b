//! Agents in the single table, with capacity counted by conditional updates.

use super::keys::{self, n, s, AGENT_SK, PENDING_INDEX, PK, SK};
use super::list::batch_get;
use super::{from_item, Item};
use crate::domain::limits::{page_item_bytes, MAX_PAGE_BYTES};
use crate::domain::{AgencyId, Agent, AgentStatus, UserId};
use crate::error::AppError;
use crate::ports::{AgentStore, Page};
use crate::store::from_sdk;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};

/// Stale agents one sweep takes (oldest heartbeat first); the next sweep takes the rest.
const STALE_PAGE: usize = 100;

#[derive(Debug, Clone)]
pub struct DynamoAgentStore {
    client: Client,
    table: String,
}

impl DynamoAgentStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    fn key(agency: &AgencyId, id: &str) -> Item {
        Item::from([
            (PK.to_owned(), s(keys::agent_pk(agency, id))),
            (SK.to_owned(), s(AGENT_SK)),
        ])
    }

    /// The agents behind index entries' keys (strongly consistent, as `get` is); an agent
    /// removed since the index was read is left out.
    async fn read_agents(&self, keys: Vec<Item>) -> Result<Vec<Agent>, AppError> {
        batch_get(&self.client, &self.table, keys, true)
            .await?
            .into_iter()
            .map(from_item)
            .collect()
    }

    async fn get_by_key(&self, key: Item) -> Result<Option<Agent>, AppError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:GetItem", e))?;
        out.item.map(from_item).transpose()
    }
}

/// The table key of an index entry (every index holds it).
fn primary_key(entry: &Item) -> Item {
    [PK, SK]
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), entry.get(*k)?.clone())))
        .collect()
}

fn conditional_failed(err: &aws_sdk_dynamodb::error::SdkError<UpdateItemError>) -> bool {
    matches!(
        err.as_service_error(),
        Some(UpdateItemError::ConditionalCheckFailedException(_))
    )
}

#[async_trait]
impl AgentStore for DynamoAgentStore {
    async fn heartbeat(
        &self,
        agency: &AgencyId,
        id: &UserId,
        capabilities: &[String],
        capacity: u32,
        now: DateTime<Utc>,
    ) -> Result<Agent, AppError> {
        let stamp = keys::sortable_time(now);
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, id.as_str())))
            .update_expression(
                "SET id = :id, agencyId = :agency, capabilities = :caps, #capacity = :capacity, \
                 #status = :online, lastHeartbeatAt = :now, entity = :entity, \
                 GSI1PK = :list, GSI1SK = :id, GSI3PK = :online_pk, GSI3SK = :online_sk, \
                 registeredAt = if_not_exists(registeredAt, :now), \
                 activeTasks = if_not_exists(activeTasks, :zero)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#capacity", "capacity")
            .expression_attribute_values(":id", s(id.as_str()))
            .expression_attribute_values(":agency", s(agency.as_str()))
            .expression_attribute_values(
                ":caps",
                AttributeValue::L(capabilities.iter().map(|c| s(c.clone())).collect()),
            )
            .expression_attribute_values(":capacity", n(capacity))
            .expression_attribute_values(":online", s(AgentStatus::Online.as_str()))
            .expression_attribute_values(":now", s(stamp.clone()))
            .expression_attribute_values(":entity", s("agent"))
            .expression_attribute_values(":list", s(keys::agents_partition(agency)))
            .expression_attribute_values(
                ":online_pk",
                s(keys::online_agents_partition(agency, id.as_str())),
            )
            .expression_attribute_values(":online_sk", s(format!("{stamp}#{agency}#{id}")))
            .expression_attribute_values(":zero", n(0))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| from_sdk("dynamodb:UpdateItem", e))?;
        from_item(out.attributes.unwrap_or_default())
    }

    async fn get(&self, agency: &AgencyId, id: &UserId) -> Result<Option<Agent>, AppError> {
        self.get_by_key(Self::key(agency, id.as_str())).await
    }

    async fn list(&self, agency: &AgencyId) -> Result<Vec<Agent>, AppError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(keys::AGENCY_INDEX.name)
                .key_condition_expression("GSI1PK = :p")
                .expression_attribute_values(":p", s(keys::agents_partition(agency)))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            keys.extend(out.items.unwrap_or_default().iter().map(primary_key));
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        // GSI1 holds keys, not agents: read them, in the index's (id) order.
        let mut agents: Vec<Agent> = self.read_agents(keys).await?;
        agents.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(agents)
    }

    async fn page(
        &self,
        agency: &AgencyId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Page<Agent>, AppError> {
        let partition = keys::agents_partition(agency);
        let mut start = after.map(|id| {
            let mut key = Self::key(agency, id.as_str());
            key.insert(keys::AGENCY_INDEX.pk.to_owned(), s(partition.clone()));
            key.insert(keys::AGENCY_INDEX.sk.to_owned(), s(id.as_str()));
            key
        });
        let mut agents: Vec<Agent> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        'read: loop {
            // One more than the page needs: it tells whether another page follows.
            let want = limit + 1 - agents.len();
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(keys::AGENCY_INDEX.name)
                .key_condition_expression("GSI1PK = :p")
                .expression_attribute_values(":p", s(partition.clone()))
                .limit(i32::try_from(want).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            // GSI1 holds keys, not agents: read the page's agents, in the index's (id) order.
            let entries = out.items.unwrap_or_default();
            let mut read = self
                .read_agents(entries.iter().map(primary_key).collect())
                .await?;
            read.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            for agent in read {
                let size = page_item_bytes(&agent);
                if agents.len() == limit || (!agents.is_empty() && bytes + size > MAX_PAGE_BYTES) {
                    more = true;
                    break 'read;
                }
                bytes += size;
                agents.push(agent);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let next_cursor = agents.last().filter(|_| more).map(|a| a.id.to_string());
        Ok(Page {
            items: agents,
            next_cursor,
        })
    }

    async fn reserve(&self, agency: &AgencyId, id: &UserId) -> Result<bool, AppError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, id.as_str())))
            .update_expression("SET activeTasks = activeTasks + :one")
            .condition_expression("#status = :online AND activeTasks < #capacity")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#capacity", "capacity")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":online", s(AgentStatus::Online.as_str()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(from_sdk("dynamodb:UpdateItem", err)),
        }
    }

    async fn release(&self, agency: &AgencyId, id: &UserId) -> Result<(), AppError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, id.as_str())))
            .update_expression("SET activeTasks = activeTasks - :one")
            .condition_expression("activeTasks > :zero")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if conditional_failed(&err) => Ok(()),
            Err(err) => Err(from_sdk("dynamodb:UpdateItem", err)),
        }
    }

    async fn stale(&self, before: DateTime<Utc>) -> Result<Vec<Agent>, AppError> {
        // The online agents are sharded: each shard's oldest page, merged, gives the
        // STALE_PAGE agents whose heartbeat is oldest across all of them.
        let mut entries: Vec<(String, Item)> = Vec::new();
        for partition in keys::online_agents_partitions() {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PENDING_INDEX.name)
                .key_condition_expression("GSI3PK = :p AND GSI3SK < :before")
                .expression_attribute_values(":p", s(partition))
                .expression_attribute_values(":before", s(keys::sortable_time(before)))
                .limit(STALE_PAGE as i32)
                .send()
                .await
                .map_err(|e| from_sdk("dynamodb:Query", e))?;
            for item in out.items.unwrap_or_default() {
                let since = item
                    .get(PENDING_INDEX.sk)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default();
                let key = Item::from([
                    (PK.to_owned(), item.get(PK).cloned().unwrap_or(s(""))),
                    (SK.to_owned(), item.get(SK).cloned().unwrap_or(s(""))),
                ]);
                entries.push((since, key));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.truncate(STALE_PAGE);
        let mut agents = Vec::new();
        for (_, key) in entries {
            if let Some(agent) = self.get_by_key(key).await? {
                agents.push(agent);
            }
        }
        Ok(agents)
    }

    async fn mark_offline(
        &self,
        agency: &AgencyId,
        id: &UserId,
        before: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(agency, id.as_str())))
            .update_expression("SET #status = :offline REMOVE GSI3PK, GSI3SK")
            // A heartbeat that just arrived wins, and so does another sweep that got there
            // first (EventBridge may deliver a schedule twice; sweeps may overlap): only the
            // sweep whose mark applies reassigns the agent's tasks.
            .condition_expression("lastHeartbeatAt < :cutoff AND #status = :online")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":offline", s(AgentStatus::Offline.as_str()))
            .expression_attribute_values(":online", s(AgentStatus::Online.as_str()))
            .expression_attribute_values(":cutoff", s(keys::sortable_time(before)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err) if conditional_failed(&err) => Ok(false),
            Err(err) => Err(from_sdk("dynamodb:UpdateItem", err)),
        }
    }
}
