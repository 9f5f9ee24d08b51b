//! Agents: workers (people or programs) that take tasks, with capabilities and a capacity.

use super::fields::string_enum;
use super::ids::{AgencyId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An agent that has not heartbeated for this long is offline.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(90);

string_enum!(
    AgentStatus, "agent status" {
        Online => "online",
        Offline => "offline",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// The agent's user id (its `sub`).
    pub id: UserId,
    pub agency_id: AgencyId,
    pub capabilities: Vec<String>,
    /// Most tasks it works on at once.
    pub capacity: u32,
    /// Tasks assigned and not finished; only ever changed by conditional updates.
    pub active_tasks: u32,
    pub status: AgentStatus,
    pub last_heartbeat_at: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
}

impl Agent {
    pub fn has_capability(&self, capability: Option<&str>) -> bool {
        capability.is_none_or(|c| self.capabilities.iter().any(|own| own == c))
    }

    pub fn heartbeat_expired(&self, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(self.last_heartbeat_at)
            .to_std()
            .unwrap_or_default()
            > HEARTBEAT_TIMEOUT
    }
}
