//! In-memory implementations of the ports, for unit and handler tests.
//! Compiled only for this crate's tests or with the `testing` feature.
//!
//! `MemoryStore` follows the DynamoDB adapter's observable behaviour: lists are
//! scoped to one agency, newest first, archived tasks are left out unless asked
//! for, steps come back ordered by `order` then name, and writes are
//! conditional on the version read.

use crate::domain::limits::DEFAULT_PAGE_SIZE;
use crate::domain::{AgencyId, StepStatus, Task, TaskId, TaskStatus, TaskStep};
use crate::error::{AppError, FieldErrors};
use crate::ports::{
    AttachmentStorage, IdempotencyRecord, InsertOutcome, Page, TaskQuery, TaskStore,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

type TaskKey = (AgencyId, TaskId);

/// A `TaskStore` held in process memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// When set, the next `get` fails as if DynamoDB were unreachable (once).
    pub refuse_next_get: std::sync::atomic::AtomicBool,
    /// When set, the next `replace` fails with this error instead of writing (once).
    pub fail_next_replace: Mutex<Option<AppError>>,
    /// The `openTasks` ceiling, as the DynamoDB adapter's `with_open_task_limit`.
    pub open_task_limit: Mutex<Option<u64>>,
    /// Reads of tasks and steps so far (`get`, `get_step`, `steps`): each is a request on AWS.
    pub reads: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    tasks: BTreeMap<TaskKey, Task>,
    steps: HashMap<TaskKey, Vec<TaskStep>>,
    records: HashMap<(AgencyId, String), IdempotencyRecord>,
    tokens: HashMap<(AgencyId, TaskId, String), String>,
    /// Open tasks per agency, moved by the same writes that open and close them.
    open_tasks: HashMap<AgencyId, u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every task of every agency, for assertions.
    pub fn all_tasks(&self) -> Vec<Task> {
        self.lock().tasks.values().cloned().collect()
    }

    /// The agency's open tasks, as counted.
    pub fn open_tasks(&self, agency: &AgencyId) -> u64 {
        self.lock().open_tasks.get(agency).copied().unwrap_or(0)
    }

    /// Moves the agency's open-task count from `before` (None: no task yet) to `after`
    /// (None: gone), or refuses an opening past the ceiling. Nothing is counted on a refusal.
    fn count_open(
        &self,
        state: &mut State,
        before: Option<&Task>,
        after: Option<&Task>,
    ) -> Result<(), AppError> {
        let was_open = before.is_some_and(Task::counts_as_open);
        let is_open = after.is_some_and(Task::counts_as_open);
        let Some(agency) = before.or(after).map(|t| t.agency_id.clone()) else {
            return Ok(());
        };
        let count = state.open_tasks.entry(agency).or_default();
        match (was_open, is_open) {
            (false, true) => {
                let limit = self
                    .open_task_limit
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or(u64::MAX);
                if *count >= limit {
                    return Err(crate::service::quotas::open_tasks_refused(limit));
                }
                *count += 1;
            }
            (true, false) => *count = count.saturating_sub(1),
            _ => {}
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not hide later failures.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn invalid_cursor() -> AppError {
    let mut errors = FieldErrors::new();
    errors.add(
        "cursor",
        "is not a cursor returned by this API for this query",
    );
    AppError::Validation(errors)
}

fn matches(task: &Task, query: &TaskQuery) -> bool {
    let status_ok = match query.status {
        Some(status) => task.status == status,
        None => query.include_archived || task.status != TaskStatus::Archived,
    };
    status_ok
        && query.priority.is_none_or(|p| task.priority == p)
        && query.task_type.is_none_or(|t| task.task_type == t)
        && query
            .assignee
            .as_ref()
            .is_none_or(|a| task.assigned_to.as_ref() == Some(a))
        // Like the DynamoDB filter, a task without a deadline is never "due before".
        && query
            .due_before
            .is_none_or(|before| task.due_at.is_some_and(|due| due < before))
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn insert(
        &self,
        task: &Task,
        steps: &[TaskStep],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<InsertOutcome, AppError> {
        let mut state = self.lock();
        let task_key = (task.agency_id.clone(), task.id);
        // Check everything before writing anything: the insert is all or nothing.
        if let Some(record) = idempotency {
            let key = (task.agency_id.clone(), record.key.clone());
            if let Some(previous) = state.records.get(&key) {
                return Ok(InsertOutcome::AlreadyDone(previous.clone()));
            }
        }
        if state.tasks.contains_key(&task_key) {
            return Err(AppError::internal(format!(
                "task {} already exists",
                task.id
            )));
        }
        self.count_open(&mut state, None, Some(task))?;
        if let Some(record) = idempotency {
            let key = (task.agency_id.clone(), record.key.clone());
            state.records.insert(key, record.clone());
        }
        let mut steps = steps.to_vec();
        steps.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        state.steps.insert(task_key.clone(), steps);
        state.tasks.insert(task_key, task.clone());
        Ok(InsertOutcome::Inserted)
    }

    async fn get(&self, agency: &AgencyId, id: TaskId) -> Result<Option<Task>, AppError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self
            .refuse_next_get
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AppError::Unavailable("dynamodb:GetItem refused".into()));
        }
        Ok(self.lock().tasks.get(&(agency.clone(), id)).cloned())
    }

    async fn replace(&self, task: &Task, expected_version: u64) -> Result<(), AppError> {
        let injected = self
            .fail_next_replace
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(err) = injected {
            return Err(err);
        }
        let mut state = self.lock();
        let key = (task.agency_id.clone(), task.id);
        let current = state
            .tasks
            .get(&key)
            .cloned()
            .ok_or(AppError::NotFound { what: "task" })?;
        if current.version != expected_version {
            return Err(AppError::VersionConflict {
                expected: expected_version,
                current: current.version,
            });
        }
        self.count_open(&mut state, Some(&current), Some(task))?;
        state.tasks.insert(key, task.clone());
        Ok(())
    }

    async fn delete(&self, agency: &AgencyId, id: TaskId) -> Result<bool, AppError> {
        let mut state = self.lock();
        let key = (agency.clone(), id);
        state.steps.remove(&key);
        let removed = state.tasks.remove(&key);
        self.count_open(&mut state, removed.as_ref(), None)?;
        Ok(removed.is_some())
    }

    /// Newest first (ULIDs sort by creation time). The cursor is the id of the
    /// last task returned; a limit of 0 means the default page size.
    async fn list(&self, agency: &AgencyId, query: &TaskQuery) -> Result<Page<Task>, AppError> {
        let after = match &query.cursor {
            Some(cursor) => Some(TaskId::parse(cursor).map_err(|_| invalid_cursor())?),
            None => None,
        };
        let limit = match query.limit {
            0 => DEFAULT_PAGE_SIZE,
            n => n,
        };
        let state = self.lock();
        let matching = state
            .tasks
            .iter()
            .rev()
            .filter(|((a, id), _)| a == agency && after.is_none_or(|after| *id < after))
            .map(|(_, task)| task)
            .filter(|task| matches(task, query));
        // Like the DynamoDB store: `limit` items, or fewer when more would pass the byte budget.
        let mut items: Vec<Task> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for task in matching {
            let size = crate::domain::limits::page_item_bytes(task);
            if items.len() == limit
                || (!items.is_empty() && bytes + size > crate::domain::limits::MAX_PAGE_BYTES)
            {
                more = true;
                break;
            }
            bytes += size;
            items.push(task.clone());
        }
        let next_cursor = match items.last() {
            Some(last) if more => Some(last.id.to_string()),
            _ => None,
        };
        Ok(Page { items, next_cursor })
    }

    async fn steps(&self, agency: &AgencyId, id: TaskId) -> Result<Vec<TaskStep>, AppError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut steps = self
            .lock()
            .steps
            .get(&(agency.clone(), id))
            .cloned()
            .unwrap_or_default();
        // As DynamoDB returns them: by sort key, `STEP#<name>`.
        steps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(steps)
    }

    async fn get_step(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<TaskStep>, AppError> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self
            .lock()
            .steps
            .get(&(agency.clone(), id))
            .and_then(|steps| steps.iter().find(|s| s.name == step).cloned()))
    }

    async fn replace_step(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        read_status: StepStatus,
    ) -> Result<bool, AppError> {
        let mut state = self.lock();
        let steps = state
            .steps
            .entry((agency.clone(), step.task_id))
            .or_default();
        match steps.iter_mut().find(|s| s.name == step.name) {
            Some(existing) if existing.status == read_status => {
                *existing = step.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn replace_step_run(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        run: u32,
    ) -> Result<bool, AppError> {
        let mut state = self.lock();
        let steps = state
            .steps
            .entry((agency.clone(), step.task_id))
            .or_default();
        match steps.iter_mut().find(|s| s.name == step.name) {
            Some(existing)
                if existing.status == StepStatus::Running && existing.attempts == run =>
            {
                *existing = step.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn set_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
        token: &str,
    ) -> Result<(), AppError> {
        self.lock()
            .tokens
            .insert((agency.clone(), id, step.to_owned()), token.to_owned());
        Ok(())
    }

    async fn step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<String>, AppError> {
        Ok(self
            .lock()
            .tokens
            .get(&(agency.clone(), id, step.to_owned()))
            .cloned())
    }

    async fn clear_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<(), AppError> {
        self.lock()
            .tokens
            .remove(&(agency.clone(), id, step.to_owned()));
        Ok(())
    }

    async fn idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, AppError> {
        Ok(self
            .lock()
            .records
            .get(&(agency.clone(), key.to_owned()))
            .cloned())
    }

    async fn forget_idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<(), AppError> {
        self.lock()
            .records
            .remove(&(agency.clone(), key.to_owned()));
        Ok(())
    }
}

/// Presigns nothing: returns `https://uploads.example/{key}` (`downloads.example` to read).
#[derive(Debug, Clone, Copy, Default)]
pub struct FakeUrls;

#[async_trait]
impl AttachmentStorage for FakeUrls {
    async fn presign_upload(
        &self,
        key: &str,
        _content_type: &str,
        _expires_in: Duration,
    ) -> Result<String, AppError> {
        Ok(format!("https://uploads.example/{key}"))
    }

    async fn presign_download(
        &self,
        key: &str,
        _file_name: &str,
        _expires_in: Duration,
    ) -> Result<String, AppError> {
        Ok(format!("https://downloads.example/{key}"))
    }
}

/// Records every dispatch instead of sending it.
#[derive(Debug, Default)]
pub struct RecordingDispatcher {
    pub sent: Mutex<Vec<crate::domain::DispatchMessage>>,
}

#[async_trait]
impl crate::ports::Dispatcher for RecordingDispatcher {
    async fn dispatch(
        &self,
        message: &crate::domain::DispatchMessage,
        _delay: Duration,
    ) -> Result<(), AppError> {
        self.sent
            .lock()
            .expect("not poisoned")
            .push(message.clone());
        Ok(())
    }

    fn queue_url(&self, tier: crate::domain::Priority) -> Option<String> {
        Some(format!("memory://queue/{tier}"))
    }

    async fn depth(
        &self,
        _tier: crate::domain::Priority,
    ) -> Result<crate::ports::QueueDepth, AppError> {
        Ok(crate::ports::QueueDepth::default())
    }
}

/// The configuration of in-memory services: a 30 s lease, the default quotas, caps and windows,
/// and `memory://` names for everything else.
pub fn test_config() -> crate::config::Config {
    crate::config::Config::from_lookup(|key| match key {
        "LEASE_SECONDS" => Some("30".into()),
        "AGING_FRACTION" => Some("0.5".into()),
        // Quotas keep their defaults.
        quota if quota.starts_with("QUOTA_") => None,
        // The default caps, windows and fair share (a memory URL is neither).
        "AGENCY_IN_FLIGHT_CAPS" | "AGENCY_DISPATCH_WINDOWS" | "FAIR_SHARE" => None,
        other => Some(format!("memory://{other}")),
    })
    .expect("complete test config")
}

/// Agents in process memory, with the same capacity rules as the DynamoDB adapter.
#[derive(Debug, Default)]
pub struct MemoryAgents {
    agents: Mutex<BTreeMap<(AgencyId, String), crate::domain::Agent>>,
    /// When set, every agent a `stale` scan lists heartbeats right after the scan: the race
    /// between the sweeper's scan and its offline write.
    pub heartbeat_after_scan: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl crate::ports::AgentStore for MemoryAgents {
    async fn heartbeat(
        &self,
        agency: &AgencyId,
        id: &crate::domain::UserId,
        capabilities: &[String],
        capacity: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::domain::Agent, AppError> {
        let mut agents = self.agents.lock().expect("not poisoned");
        let agent = agents
            .entry((agency.clone(), id.to_string()))
            .or_insert_with(|| crate::domain::Agent {
                id: id.clone(),
                agency_id: agency.clone(),
                capabilities: Vec::new(),
                capacity,
                active_tasks: 0,
                status: crate::domain::AgentStatus::Online,
                last_heartbeat_at: now,
                registered_at: now,
            });
        agent.capabilities = capabilities.to_vec();
        agent.capacity = capacity;
        agent.status = crate::domain::AgentStatus::Online;
        agent.last_heartbeat_at = now;
        Ok(agent.clone())
    }

    async fn get(
        &self,
        agency: &AgencyId,
        id: &crate::domain::UserId,
    ) -> Result<Option<crate::domain::Agent>, AppError> {
        let agents = self.agents.lock().expect("not poisoned");
        Ok(agents.get(&(agency.clone(), id.to_string())).cloned())
    }

    async fn page(
        &self,
        agency: &AgencyId,
        after: Option<&crate::domain::UserId>,
        limit: usize,
    ) -> Result<Page<crate::domain::Agent>, AppError> {
        use crate::domain::limits::{page_item_bytes, MAX_PAGE_BYTES};
        let agents = self.agents.lock().expect("not poisoned");
        let mut items: Vec<crate::domain::Agent> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        // Keyed by (agency, id): id order within an agency, as GSI1 sorts agents.
        for agent in agents
            .iter()
            .filter(|((a, id), _)| {
                a == agency && after.is_none_or(|after| id.as_str() > after.as_str())
            })
            .map(|(_, agent)| agent)
        {
            let size = page_item_bytes(agent);
            if items.len() == limit || (!items.is_empty() && bytes + size > MAX_PAGE_BYTES) {
                more = true;
                break;
            }
            bytes += size;
            items.push(agent.clone());
        }
        let next_cursor = items.last().filter(|_| more).map(|a| a.id.to_string());
        Ok(Page { items, next_cursor })
    }

    async fn list(&self, agency: &AgencyId) -> Result<Vec<crate::domain::Agent>, AppError> {
        let agents = self.agents.lock().expect("not poisoned");
        Ok(agents
            .values()
            .filter(|a| &a.agency_id == agency)
            .cloned()
            .collect())
    }

    async fn reserve(
        &self,
        agency: &AgencyId,
        id: &crate::domain::UserId,
    ) -> Result<bool, AppError> {
        let mut agents = self.agents.lock().expect("not poisoned");
        match agents.get_mut(&(agency.clone(), id.to_string())) {
            Some(a)
                if a.status == crate::domain::AgentStatus::Online
                    && a.active_tasks < a.capacity =>
            {
                a.active_tasks += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, agency: &AgencyId, id: &crate::domain::UserId) -> Result<(), AppError> {
        let mut agents = self.agents.lock().expect("not poisoned");
        if let Some(a) = agents.get_mut(&(agency.clone(), id.to_string())) {
            a.active_tasks = a.active_tasks.saturating_sub(1);
        }
        Ok(())
    }

    async fn stale(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::domain::Agent>, AppError> {
        let mut agents = self.agents.lock().expect("not poisoned");
        let stale: Vec<crate::domain::Agent> = agents
            .values()
            .filter(|a| {
                a.status == crate::domain::AgentStatus::Online && a.last_heartbeat_at < before
            })
            .cloned()
            .collect();
        if self
            .heartbeat_after_scan
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            for agent in agents.values_mut() {
                agent.last_heartbeat_at = chrono::Utc::now();
            }
        }
        Ok(stale)
    }

    async fn mark_offline(
        &self,
        agency: &AgencyId,
        id: &crate::domain::UserId,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, AppError> {
        let mut agents = self.agents.lock().expect("not poisoned");
        match agents.get_mut(&(agency.clone(), id.to_string())) {
            Some(a)
                if a.last_heartbeat_at < before
                    && a.status == crate::domain::AgentStatus::Online =>
            {
                a.status = crate::domain::AgentStatus::Offline;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// One page of index entries in the index's order (time, agency, id), after `after`.
fn index_page(
    entries: impl Iterator<Item = crate::ports::WaitingTask>,
    after: Option<&crate::ports::WaitingTask>,
    limit: usize,
) -> Vec<crate::ports::WaitingTask> {
    let key = |w: &crate::ports::WaitingTask| (w.since, w.agency.to_string(), w.id.to_string());
    let mut page: Vec<_> = entries
        .filter(|w| after.is_none_or(|a| key(w) > key(a)))
        .collect();
    page.sort_by_key(key);
    page.truncate(limit);
    page
}

/// Scheduling scans over a `MemoryStore`.
#[derive(Debug)]
pub struct MemoryIndex {
    pub store: std::sync::Arc<MemoryStore>,
    pub breaches: Mutex<Vec<BreachRecord>>,
}

/// A recorded SLA breach: tier, task, when.
pub type BreachRecord = (
    crate::domain::Priority,
    TaskId,
    chrono::DateTime<chrono::Utc>,
);

#[async_trait]
impl crate::ports::SchedulingIndex for MemoryIndex {
    async fn waiting(
        &self,
        tier: crate::domain::Priority,
        breached: bool,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&crate::ports::WaitingTask>,
        limit: usize,
    ) -> Result<Vec<crate::ports::WaitingTask>, AppError> {
        let entries = self
            .store
            .all_tasks()
            .into_iter()
            .filter(|t| {
                t.priority == tier
                    && matches!(t.status, TaskStatus::Pending | TaskStatus::Queued)
                    && t.waits_breached_at_top() == breached
            })
            .map(|t| crate::ports::WaitingTask {
                since: t.queued_at.unwrap_or(t.updated_at),
                agency: t.agency_id,
                id: t.id,
            })
            .filter(|w| w.since < before);
        Ok(index_page(entries, after, limit))
    }

    async fn due_before(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&crate::ports::WaitingTask>,
        limit: usize,
    ) -> Result<Vec<crate::ports::WaitingTask>, AppError> {
        let entries = self.store.all_tasks().into_iter().filter_map(|t| {
            let since = t.escalation_due_at().filter(|at| *at <= before)?;
            Some(crate::ports::WaitingTask {
                since,
                agency: t.agency_id,
                id: t.id,
            })
        });
        Ok(index_page(entries, after, limit))
    }

    async fn record_breach(
        &self,
        tier: crate::domain::Priority,
        task: &crate::ports::WaitingTask,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), AppError> {
        self.breaches
            .lock()
            .expect("not poisoned")
            .push((tier, task.id, at));
        Ok(())
    }

    async fn breaches_between(
        &self,
        tier: crate::domain::Priority,
        from: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, AppError> {
        let breaches = self.breaches.lock().expect("not poisoned");
        Ok(breaches
            .iter()
            .filter(|(t, _, at)| *t == tier && (from..=until).contains(at))
            .count() as u64)
    }

    async fn agency_waiting(
        &self,
        tier: crate::domain::Priority,
        agency: &crate::domain::AgencyId,
        limit: usize,
    ) -> Result<crate::ports::AgencyWaiting, AppError> {
        let mut waiting = crate::ports::AgencyWaiting {
            count: 0,
            oldest: None,
            exact: true,
        };
        let far = chrono::Utc::now() + chrono::Duration::days(365 * 100);
        for breached in [false, true] {
            // Like the table: one page of the tier's partition, then the agency's share of it.
            let page = self.waiting(tier, breached, far, None, limit + 1).await?;
            waiting.exact &= page.len() <= limit;
            let mine: Vec<_> = page
                .iter()
                .take(limit)
                .filter(|w| &w.agency == agency)
                .collect();
            waiting.count += mine.len() as u64;
            if let Some(first) = mine.first() {
                waiting.oldest = Some(waiting.oldest.map_or(first.since, |o| o.min(first.since)));
            }
        }
        Ok(waiting)
    }

    async fn agency_breaches_between(
        &self,
        tier: crate::domain::Priority,
        agency: &crate::domain::AgencyId,
        from: chrono::DateTime<chrono::Utc>,
        until: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<crate::ports::Bounded, AppError> {
        let tasks = self.store.all_tasks();
        let breaches = self.breaches.lock().expect("not poisoned");
        let in_range: Vec<_> = breaches
            .iter()
            .filter(|(t, _, at)| *t == tier && (from..=until).contains(at))
            .collect();
        let count = in_range
            .iter()
            .take(limit)
            .filter(|(_, id, _)| tasks.iter().any(|t| t.id == *id && &t.agency_id == agency))
            .count() as u64;
        Ok(crate::ports::Bounded {
            count,
            exact: in_range.len() <= limit,
        })
    }

    async fn agency_in_flight(
        &self,
        agency: &crate::domain::AgencyId,
        limit: usize,
    ) -> Result<
        (
            std::collections::BTreeMap<crate::domain::Priority, u64>,
            bool,
        ),
        AppError,
    > {
        let mut tasks: Vec<_> = self
            .store
            .all_tasks()
            .into_iter()
            .filter(|t| &t.agency_id == agency)
            .collect();
        tasks.sort_by_key(|t| std::cmp::Reverse(t.id.to_string()));
        let mut per_tier = std::collections::BTreeMap::new();
        for task in tasks.iter().take(limit) {
            if task.status == TaskStatus::InProgress && task.executor.is_some() {
                *per_tier.entry(task.priority).or_insert(0) += 1;
            }
        }
        Ok((per_tier, tasks.len() <= limit))
    }
}

/// Everything in memory: the store, fake presigned URLs, recorded dispatches, agents.
pub struct MemoryWorld {
    pub store: std::sync::Arc<MemoryStore>,
    pub dispatcher: std::sync::Arc<RecordingDispatcher>,
    pub agents: std::sync::Arc<MemoryAgents>,
    pub index: std::sync::Arc<MemoryIndex>,
    pub orchestrator: std::sync::Arc<RecordingOrchestrator>,
    pub batches: std::sync::Arc<MemoryBatches>,
    pub objects: std::sync::Arc<MemoryObjects>,
    pub preparations: std::sync::Arc<MemoryPreparations>,
}

impl MemoryWorld {
    pub fn new() -> Self {
        let store = std::sync::Arc::new(MemoryStore::default());
        Self {
            index: std::sync::Arc::new(MemoryIndex {
                store: store.clone(),
                breaches: Mutex::default(),
            }),
            batches: std::sync::Arc::new(MemoryBatches {
                tasks: store.clone(),
                ..Default::default()
            }),
            store,
            dispatcher: std::sync::Arc::default(),
            agents: std::sync::Arc::default(),
            orchestrator: std::sync::Arc::default(),
            objects: std::sync::Arc::default(),
            preparations: std::sync::Arc::default(),
        }
    }

    /// Runs the queued batch preparations, and the continuations they queue, until none is
    /// left; answers each pass's outcome in order.
    pub async fn run_preparations(
        &self,
        preparer: &crate::service::BatchPreparer,
    ) -> Vec<Result<crate::service::Prepared, AppError>> {
        self.run_preparations_until(preparer, || {
            std::time::Instant::now() + std::time::Duration::from_secs(600)
        })
        .await
    }

    /// [`MemoryWorld::run_preparations`], each pass stopping at `stop_at()`.
    pub async fn run_preparations_until(
        &self,
        preparer: &crate::service::BatchPreparer,
        stop_at: impl Fn() -> std::time::Instant,
    ) -> Vec<Result<crate::service::Prepared, AppError>> {
        let mut outcomes = Vec::new();
        loop {
            let requests = self.preparations.take();
            if requests.is_empty() {
                return outcomes;
            }
            assert!(outcomes.len() < 10_000, "preparations never end");
            for request in requests {
                outcomes.push(preparer.prepare(&request, stop_at()).await);
            }
        }
    }

    pub fn ports(&self) -> crate::service::Ports {
        crate::service::Ports {
            store: self.store.clone(),
            attachments: std::sync::Arc::new(FakeUrls),
            dispatcher: self.dispatcher.clone(),
            agents: self.agents.clone(),
            orchestrator: self.orchestrator.clone(),
            batches: self.batches.clone(),
            objects: self.objects.clone(),
            batch_orchestrator: self.orchestrator.clone(),
            preparations: self.preparations.clone(),
        }
    }

    /// Services with the built-in executors, a 30 s lease and aging at half the SLA.
    pub fn services(&self) -> crate::services::Services {
        self.services_with(crate::executors::ExecutorRegistry::builtin())
    }

    /// Services with these executors, a 30 s lease and aging at half the SLA.
    pub fn services_with(
        &self,
        executors: crate::executors::ExecutorRegistry,
    ) -> crate::services::Services {
        crate::services::Services::from_ports(
            self.ports(),
            self.index.clone(),
            executors,
            &test_config(),
        )
    }
}

impl Default for MemoryWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// Records chain callbacks instead of calling Step Functions.
#[derive(Debug, Default)]
pub struct RecordingOrchestrator {
    pub started: Mutex<Vec<(String, serde_json::Value)>>,
    pub stopped: Mutex<Vec<String>>,
    /// (token, "success" | error name, output or cause)
    pub answers: Mutex<Vec<(String, String, String)>>,
    /// When set, `start` fails as if Step Functions were unreachable.
    pub refuse_starts: std::sync::atomic::AtomicBool,
    /// When set, `start` starts the execution but answers an error (a lost reply).
    pub lose_start_replies: std::sync::atomic::AtomicBool,
    /// When set, `describe` fails as if Step Functions were unreachable.
    pub refuse_describes: std::sync::atomic::AtomicBool,
    /// Every execution started, by name, with its status (tests may close one).
    pub executions: Mutex<HashMap<String, crate::ports::ExecutionStatus>>,
    /// Tokens heartbeats were sent for, in order.
    pub heartbeats: Mutex<Vec<String>>,
    /// Tokens Step Functions no longer holds (timed out, answered): a heartbeat says so.
    pub closed: Mutex<std::collections::HashSet<String>>,
    /// The next this many heartbeats say their token is unknown, as moto's do for a token
    /// whose message was sent a moment before its heartbeat was registered.
    pub unregistered_beats: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl crate::ports::Orchestrator for RecordingOrchestrator {
    async fn start(&self, name: &str, input: &serde_json::Value) -> Result<String, AppError> {
        if self.refuse_starts.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AppError::Unavailable(
                "states:StartExecution refused".into(),
            ));
        }
        // Names are unique per state machine, closed executions included.
        {
            let mut executions = self.executions.lock().expect("not poisoned");
            if executions.contains_key(name) {
                return Err(AppError::Internal(format!(
                    "states:StartExecution: ExecutionAlreadyExists: {name}"
                )));
            }
            executions.insert(name.to_owned(), crate::ports::ExecutionStatus::Running);
        }
        self.started
            .lock()
            .expect("not poisoned")
            .push((name.to_owned(), input.clone()));
        if self
            .lose_start_replies
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AppError::Unavailable(
                "states:StartExecution: timed out".into(),
            ));
        }
        Ok(self.execution_arn(name))
    }

    async fn describe(
        &self,
        name: &str,
    ) -> Result<Option<crate::ports::ExecutionStatus>, AppError> {
        if self
            .refuse_describes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AppError::Unavailable(
                "states:DescribeExecution refused".into(),
            ));
        }
        Ok(self
            .executions
            .lock()
            .expect("not poisoned")
            .get(name)
            .copied())
    }

    fn execution_arn(&self, name: &str) -> String {
        format!("arn:aws:states:us-east-1:123456789012:execution:chain:{name}")
    }

    async fn stop(&self, execution_arn: &str, _cause: &str) -> Result<(), AppError> {
        let name = execution_arn.rsplit(':').next().unwrap_or_default();
        if let Some(status) = self.executions.lock().expect("not poisoned").get_mut(name) {
            *status = crate::ports::ExecutionStatus::Aborted;
        }
        self.stopped
            .lock()
            .expect("not poisoned")
            .push(execution_arn.to_owned());
        Ok(())
    }

    async fn succeed(&self, token: &str, output: &serde_json::Value) -> Result<bool, AppError> {
        self.answers.lock().expect("not poisoned").push((
            token.into(),
            "success".into(),
            output.to_string(),
        ));
        Ok(true)
    }

    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<bool, AppError> {
        self.answers
            .lock()
            .expect("not poisoned")
            .push((token.into(), error.into(), cause.into()));
        Ok(true)
    }

    async fn heartbeat(&self, token: &str) -> Result<bool, AppError> {
        self.heartbeats
            .lock()
            .expect("not poisoned")
            .push(token.to_owned());
        let unregistered = self.unregistered_beats.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |left| left.checked_sub(1),
        );
        if unregistered.is_ok() {
            return Ok(false);
        }
        Ok(!self.closed.lock().expect("not poisoned").contains(token))
    }
}

/// (task, round, chunk)
type ChunkKey = (TaskKey, u32, u32);
/// Body and user metadata.
type StoredObject = (Vec<u8>, HashMap<String, String>);

/// Batches in process memory (counters summed per round like the DynamoDB adapter).
/// One chunk's record: its current attempt, counters and the items counted.
#[derive(Debug, Default)]
struct MemoryChunk {
    attempt: String,
    counts: crate::domain::ChunkCounts,
    done: crate::domain::ChunkDone,
}

#[derive(Debug, Default)]
pub struct MemoryBatches {
    jobs: Mutex<BTreeMap<TaskKey, crate::domain::BatchJob>>,
    chunks: Mutex<HashMap<ChunkKey, MemoryChunk>>,
    failures: Mutex<BTreeMap<(TaskKey, u64), String>>,
    dedupe: Mutex<HashMap<String, TaskId>>,
    pub tasks: std::sync::Arc<MemoryStore>,
    /// When set, the next `put` fails as if DynamoDB were unreachable (once).
    pub refuse_next_put: std::sync::atomic::AtomicBool,
    /// Failure records deleted so far (each one a DynamoDB delete on AWS).
    pub cleared: std::sync::atomic::AtomicUsize,
    /// Batch items per agency and UTC day, as the DynamoDB adapter's `with_daily_item_limit`.
    pub daily_item_limit: Mutex<Option<u64>>,
    /// Items counted per (agency, UTC day).
    pub daily_items: Mutex<HashMap<(AgencyId, String), u64>>,
}

impl MemoryBatches {
    /// `put_if`'s condition and write under one lock: the stored batch is replaced only while
    /// it is still in `status` and `round`.
    fn replace_if(
        &self,
        batch: &crate::domain::BatchJob,
        status: crate::domain::BatchStatus,
        round: u32,
    ) -> bool {
        let mut jobs = self.jobs.lock().expect("not poisoned");
        let key = (batch.agency_id.clone(), batch.id);
        let current = jobs
            .get(&key)
            .is_some_and(|stored| stored.status == status && stored.round == round);
        if current {
            jobs.insert(key, batch.clone());
        }
        current
    }
}

#[async_trait]
impl crate::ports::BatchStore for MemoryBatches {
    async fn create(
        &self,
        task: &Task,
        batch: &crate::domain::BatchJob,
        dedupe_key: Option<&str>,
    ) -> Result<crate::ports::BatchCreated, AppError> {
        // Checked and recorded under one lock, as the adapter's transaction does.
        {
            let mut seen = self.dedupe.lock().expect("not poisoned");
            if let Some(first) = dedupe_key.and_then(|key| seen.get(key)) {
                return Ok(crate::ports::BatchCreated::Duplicate(*first));
            }
            let limit = *self.daily_item_limit.lock().expect("not poisoned");
            if let Some(limit) =
                limit.filter(|_| batch.status != crate::domain::BatchStatus::Failed)
            {
                let now = chrono::Utc::now();
                let key = (
                    batch.agency_id.clone(),
                    crate::service::quotas::quota_day(now),
                );
                let mut counted = self.daily_items.lock().expect("not poisoned");
                let used = counted.get(&key).copied().unwrap_or(0);
                if used.saturating_add(batch.total_items) > limit {
                    return Err(crate::service::quotas::batch_items_refused(limit, now));
                }
                counted.insert(key, used + batch.total_items);
            }
            if let Some(key) = dedupe_key {
                seen.insert(key.to_owned(), batch.id);
            }
        }
        self.tasks.insert(task, &[], None).await?;
        self.jobs
            .lock()
            .expect("not poisoned")
            .insert((batch.agency_id.clone(), batch.id), batch.clone());
        Ok(crate::ports::BatchCreated::New)
    }
    async fn get(
        &self,
        agency: &AgencyId,
        id: TaskId,
    ) -> Result<Option<crate::domain::BatchJob>, AppError> {
        Ok(self
            .jobs
            .lock()
            .expect("not poisoned")
            .get(&(agency.clone(), id))
            .cloned())
    }
    async fn put(&self, batch: &crate::domain::BatchJob) -> Result<(), AppError> {
        if self
            .refuse_next_put
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AppError::Unavailable("dynamodb:PutItem refused".into()));
        }
        self.jobs
            .lock()
            .expect("not poisoned")
            .insert((batch.agency_id.clone(), batch.id), batch.clone());
        Ok(())
    }
    async fn put_if(
        &self,
        batch: &crate::domain::BatchJob,
        status: crate::domain::BatchStatus,
        round: u32,
    ) -> Result<bool, AppError> {
        if self
            .refuse_next_put
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AppError::Unavailable("dynamodb:PutItem refused".into()));
        }
        Ok(self.replace_if(batch, status, round))
    }
    async fn put_if_charging(
        &self,
        batch: &crate::domain::BatchJob,
        status: crate::domain::BatchStatus,
        round: u32,
    ) -> Result<bool, AppError> {
        let limit = *self.daily_item_limit.lock().expect("not poisoned");
        let now = chrono::Utc::now();
        let day = (
            batch.agency_id.clone(),
            crate::service::quotas::quota_day(now),
        );
        let mut counted = self.daily_items.lock().expect("not poisoned");
        let used = counted.get(&day).copied().unwrap_or(0);
        if let Some(limit) = limit.filter(|limit| used.saturating_add(batch.total_items) > *limit) {
            return Err(crate::service::quotas::batch_items_refused(limit, now));
        }
        let written = self.replace_if(batch, status, round);
        if written && limit.is_some() {
            counted.insert(day, used + batch.total_items);
        }
        Ok(written)
    }
    async fn pending_before(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<crate::domain::BatchJob>, AppError> {
        let mut pending: Vec<crate::domain::BatchJob> = self
            .jobs
            .lock()
            .expect("not poisoned")
            .values()
            .filter(|b| {
                b.status == crate::domain::BatchStatus::Pending && b.pending_since() < cutoff
            })
            .cloned()
            .collect();
        pending.sort_by_key(|b| b.pending_since());
        pending.truncate(limit);
        Ok(pending)
    }
    async fn start_chunk(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
    ) -> Result<crate::ports::ChunkStart, AppError> {
        let mut chunks = self.chunks.lock().expect("not poisoned");
        let key = ((agency.clone(), id), round, chunk);
        let earlier = chunks.contains_key(&key);
        let entry = chunks.entry(key).or_default();
        entry.attempt = attempt.to_owned();
        Ok(crate::ports::ChunkStart {
            earlier,
            done: entry.done.clone(),
        })
    }
    async fn add_counts(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
        counts: crate::domain::ChunkCounts,
        done: &crate::domain::ChunkDone,
    ) -> Result<bool, AppError> {
        let mut chunks = self.chunks.lock().expect("not poisoned");
        match chunks.get_mut(&((agency.clone(), id), round, chunk)) {
            Some(current) if current.attempt == attempt => {
                current.counts.processed += counts.processed;
                current.counts.success += counts.success;
                current.counts.failed += counts.failed;
                current.done = done.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    async fn round_counts(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
    ) -> Result<crate::domain::ChunkCounts, AppError> {
        let chunks = self.chunks.lock().expect("not poisoned");
        let mut total = crate::domain::ChunkCounts::default();
        for ((key, r, _), chunk) in chunks.iter() {
            if key == &(agency.clone(), id) && *r == round {
                total.processed += chunk.counts.processed;
                total.success += chunk.counts.success;
                total.failed += chunk.counts.failed;
            }
        }
        Ok(total)
    }
    async fn record_failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        failures: &[crate::domain::ItemFailure],
    ) -> Result<(), AppError> {
        let mut all = self.failures.lock().expect("not poisoned");
        for f in failures {
            all.insert(((agency.clone(), id), f.index), f.error.clone());
        }
        Ok(())
    }
    async fn clear_failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        indexes: &[u64],
    ) -> Result<(), AppError> {
        let mut all = self.failures.lock().expect("not poisoned");
        for index in indexes {
            all.remove(&((agency.clone(), id), *index));
        }
        self.cleared
            .fetch_add(indexes.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
    async fn failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<crate::domain::ItemFailure>, AppError> {
        let after: Option<u64> = cursor.and_then(|c| c.parse().ok());
        let all = self.failures.lock().expect("not poisoned");
        let items: Vec<_> = all
            .iter()
            .filter(|((key, index), _)| {
                key == &(agency.clone(), id) && after.is_none_or(|a| *index > a)
            })
            .take(limit)
            .map(|((_, index), error)| crate::domain::ItemFailure {
                index: *index,
                error: error.clone(),
            })
            .collect();
        let next_cursor = (items.len() == limit)
            .then(|| items.last().map(|f| f.index.to_string()))
            .flatten();
        Ok(Page { items, next_cursor })
    }
    async fn agency_known(&self, agency: &AgencyId) -> Result<bool, AppError> {
        Ok(self
            .tasks
            .all_tasks()
            .iter()
            .any(|t| &t.agency_id == agency))
    }
}

/// Objects in process memory.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    pub objects: Mutex<HashMap<String, StoredObject>>,
    /// How many times each key was written.
    pub puts: Mutex<HashMap<String, u32>>,
}

impl MemoryObjects {
    /// How many times `key` was written.
    pub fn puts_of(&self, key: &str) -> u32 {
        let puts = self.puts.lock().expect("not poisoned");
        puts.get(key).copied().unwrap_or(0)
    }
}

/// Preparation requests, recorded in order; a test runs them with the preparer.
#[derive(Debug, Default)]
pub struct MemoryPreparations {
    pub requests: Mutex<Vec<crate::domain::PrepareBatch>>,
    /// When set, requests fail as if SQS were unreachable.
    pub refuse: std::sync::atomic::AtomicBool,
}

impl MemoryPreparations {
    /// The requests not yet taken, oldest first.
    pub fn take(&self) -> Vec<crate::domain::PrepareBatch> {
        std::mem::take(&mut *self.requests.lock().expect("not poisoned"))
    }
}

#[async_trait]
impl crate::ports::Preparations for MemoryPreparations {
    async fn request(&self, request: &crate::domain::PrepareBatch) -> Result<(), AppError> {
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AppError::Unavailable("sqs:SendMessage refused".into()));
        }
        let mut requests = self.requests.lock().expect("not poisoned");
        requests.push(request.clone());
        Ok(())
    }
}

#[async_trait]
impl crate::ports::ObjectStore for MemoryObjects {
    fn bucket(&self) -> &str {
        "memory-bucket"
    }
    async fn put(&self, key: &str, body: Vec<u8>, _content_type: &str) -> Result<(), AppError> {
        self.objects
            .lock()
            .expect("not poisoned")
            .insert(key.to_owned(), (body, HashMap::new()));
        *self
            .puts
            .lock()
            .expect("not poisoned")
            .entry(key.to_owned())
            .or_default() += 1;
        Ok(())
    }
    /// Hands the object out in pieces of at most 7 bytes, as a network stream may.
    async fn open(&self, key: &str, max_bytes: u64) -> Result<crate::ports::ObjectBody, AppError> {
        let body = self
            .objects
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|(body, _)| body.clone())
            .ok_or(AppError::NotFound { what: "object" })?;
        if body.len() as u64 > max_bytes {
            return Err(AppError::Conflict(format!(
                "the file is {} bytes; the limit is {max_bytes}",
                body.len()
            )));
        }
        let size = body.len() as u64;
        let pieces: Vec<Result<Vec<u8>, AppError>> =
            body.chunks(7).map(|piece| Ok(piece.to_vec())).collect();
        Ok(crate::ports::ObjectBody {
            size,
            chunks: Box::pin(futures::stream::iter(pieces)),
        })
    }
    async fn size(&self, key: &str) -> Result<Option<u64>, AppError> {
        let objects = self.objects.lock().expect("not poisoned");
        Ok(objects.get(key).map(|(body, _)| body.len() as u64))
    }
    /// Like the S3 adapter, refuses an object larger than `max_bytes`.
    async fn get(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, AppError> {
        let body = self
            .objects
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|(body, _)| body.clone())
            .ok_or_else(|| AppError::internal(format!("no object {key}")))?;
        if body.len() > max_bytes {
            return Err(AppError::Conflict(format!(
                "the file is {} bytes; the limit is {max_bytes}",
                body.len()
            )));
        }
        Ok(body)
    }
    async fn metadata(&self, key: &str) -> Result<HashMap<String, String>, AppError> {
        Ok(self
            .objects
            .lock()
            .expect("not poisoned")
            .get(key)
            .map(|(_, m)| m.clone())
            .unwrap_or_default())
    }
    async fn presign_get(&self, key: &str, _expires_in: Duration) -> Result<String, AppError> {
        Ok(format!("https://downloads.example/{key}"))
    }
    async fn presign_put(
        &self,
        key: &str,
        _content_type: &str,
        _expires_in: Duration,
    ) -> Result<String, AppError> {
        Ok(format!("https://uploads.example/{key}"))
    }
}

/// Request buckets in process memory, with the DynamoDB adapter's conditions.
#[derive(Debug, Default)]
pub struct MemoryBuckets {
    tat: Mutex<HashMap<AgencyId, u64>>,
    /// The tokens each admit asked for, in order (refused ones included).
    asked: Mutex<Vec<u64>>,
}

impl MemoryBuckets {
    /// The tokens each admit asked for, in order.
    pub fn admits(&self) -> Vec<u64> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl crate::ports::RequestBuckets for MemoryBuckets {
    async fn admit(
        &self,
        agency: &AgencyId,
        now_us: u64,
        interval_us: u64,
        tolerance_us: u64,
        tokens: u64,
    ) -> Result<Result<(), u64>, AppError> {
        self.asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tokens);
        let mut tats = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let tat = tats.get(agency).copied().unwrap_or(0);
        let extra = interval_us.saturating_mul(tokens.saturating_sub(1));
        if tat.max(now_us).saturating_add(extra) > now_us.saturating_add(tolerance_us) {
            return Ok(Err(tat));
        }
        tats.insert(
            agency.clone(),
            tat.max(now_us)
                .saturating_add(interval_us.saturating_mul(tokens)),
        );
        Ok(Ok(()))
    }
}

mod event_bus;
mod fair_share;
mod schedules;
pub use event_bus::{BusFault, MemoryEventBus};
pub use fair_share::{MemorySlots, MemoryWindow};
pub use schedules::{sample_schedule, MemoryScheduleStore, MemorySchedules, RecordingTrigger};
