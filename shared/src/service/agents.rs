//! Agent registration and heartbeats.

use super::input::parse_capability;
use crate::domain::limits::{MAX_AGENT_CAPACITY, MAX_CAPABILITIES};
use crate::domain::{Agent, Caller, Role, UserId};
use crate::error::{AppError, FieldErrors};
use crate::ports::AgentStore;
use chrono::Utc;
use serde_json::Value;
use std::sync::Arc;

#[derive(Clone)]
pub struct AgentService {
    agents: Arc<dyn AgentStore>,
}

impl AgentService {
    pub fn new(agents: Arc<dyn AgentStore>) -> Self {
        Self { agents }
    }

    /// `PUT /api/agents/{id}` with `{"capabilities": [...], "capacity": n}`:
    /// registers the agent or heartbeats it. An agent speaks for itself; managers for any agent.
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        id: &str,
        body: &Value,
    ) -> Result<Agent, AppError> {
        let id = UserId::parse(id).map_err(|_| AppError::NotFound { what: "agent" })?;
        let is_self = caller.role == Role::Agent && caller.user == id;
        if !is_self && !caller.is_manager() {
            return Err(AppError::Forbidden(
                "agents may only heartbeat for themselves".into(),
            ));
        }
        let (capabilities, capacity) = parse_registration(body)?;
        self.agents
            .heartbeat(&caller.agency, &id, &capabilities, capacity, Utc::now())
            .await
    }

    /// A page of the caller's agency's agents, in id order, after the agent named by `cursor`.
    pub async fn list(
        &self,
        caller: &Caller,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::ports::Page<Agent>, AppError> {
        let after = cursor
            .map(|c| {
                UserId::parse(c).map_err(|_| {
                    let mut errors = FieldErrors::new();
                    errors.add(
                        "cursor",
                        "is not a cursor returned by this API for this query",
                    );
                    AppError::Validation(errors)
                })
            })
            .transpose()?;
        let now = Utc::now();
        let mut page = self
            .agents
            .page(&caller.agency, after.as_ref(), limit)
            .await?;
        for agent in &mut page.items {
            // Report what callers would see if the sweeper ran right now.
            if agent.heartbeat_expired(now) {
                agent.status = crate::domain::AgentStatus::Offline;
            }
        }
        Ok(page)
    }
}

fn parse_registration(body: &Value) -> Result<(Vec<String>, u32), AppError> {
    let mut errors = FieldErrors::new();
    let Value::Object(map) = body else {
        errors.add("body", "must be a JSON object");
        return Err(AppError::Validation(errors));
    };
    for key in map
        .keys()
        .filter(|k| *k != "capabilities" && *k != "capacity")
    {
        errors.add(
            key.clone(),
            "unknown field; allowed: capabilities, capacity",
        );
    }
    let mut capabilities = Vec::new();
    match map.get("capabilities") {
        None => {}
        Some(Value::Array(items)) if items.len() <= MAX_CAPABILITIES => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str().map(parse_capability) {
                    Some(Ok(c)) => capabilities.push(c),
                    Some(Err(problem)) => errors.add(format!("capabilities[{i}]"), problem),
                    None => errors.add(format!("capabilities[{i}]"), "must be a string"),
                }
            }
        }
        Some(_) => errors.add(
            "capabilities",
            format!("must be an array of at most {MAX_CAPABILITIES} strings"),
        ),
    }
    let capacity = match map.get("capacity") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(MAX_AGENT_CAPACITY)).contains(&n) => n as u32,
            _ => {
                errors.add(
                    "capacity",
                    format!("must be an integer from 1 to {MAX_AGENT_CAPACITY}"),
                );
                0
            }
        },
    };
    errors.into_result()?;
    capabilities.sort();
    capabilities.dedup();
    Ok((capabilities, capacity))
}
