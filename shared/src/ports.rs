//! The small traits the domain needs from the outside world. AWS adapters in
//! `store` implement them; unit tests use in-memory fakes.

use crate::domain::schedule::{Schedule, ScheduleRun};
use crate::domain::ScheduleId;
use crate::domain::{
    AgencyId, DispatchMessage, Priority, StepStatus, Task, TaskId, TaskStatus, TaskStep, TaskType,
    UserId,
};
use crate::error::AppError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Filters and paging for an agency's task list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub priority: Option<Priority>,
    pub task_type: Option<TaskType>,
    pub assignee: Option<UserId>,
    pub due_before: Option<DateTime<Utc>>,
    pub include_archived: bool,
    pub limit: usize,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The stored outcome of a POST carrying an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    /// Caller-supplied key (scoped to the agency by the store).
    pub key: String,
    /// Fingerprint of the request, so reusing a key for a different request is caught.
    pub request_hash: String,
    /// The response body first returned.
    pub response: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    Inserted,
    /// The idempotency key was already used; here is what it produced.
    AlreadyDone(IdempotencyRecord),
}

#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Writes a new task, its steps and (optionally) its idempotency record atomically.
    async fn insert(
        &self,
        task: &Task,
        steps: &[TaskStep],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<InsertOutcome, AppError>;

    async fn get(&self, agency: &AgencyId, id: TaskId) -> Result<Option<Task>, AppError>;

    /// Overwrites the task if its stored version is still `expected_version`;
    /// otherwise fails with `AppError::VersionConflict`.
    async fn replace(&self, task: &Task, expected_version: u64) -> Result<(), AppError>;

    /// Removes the task and everything stored under it. False when it did not exist.
    async fn delete(&self, agency: &AgencyId, id: TaskId) -> Result<bool, AppError>;

    async fn list(&self, agency: &AgencyId, query: &TaskQuery) -> Result<Page<Task>, AppError>;

    async fn steps(&self, agency: &AgencyId, id: TaskId) -> Result<Vec<TaskStep>, AppError>;

    async fn idempotency_record(
        &self,
        agency: &AgencyId,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, AppError>;

    /// Frees an idempotency key whose request was undone, so a retry runs afresh.
    async fn forget_idempotency_record(&self, agency: &AgencyId, key: &str)
        -> Result<(), AppError>;

    async fn get_step(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<TaskStep>, AppError>;

    /// Overwrites a step's record if its stored status is still `read_status` (the status
    /// it had when the caller read it); false when another writer changed it first. Every
    /// step write is guarded: a worker, a timeout and a stopping chain can race on one step.
    async fn replace_step(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        read_status: StepStatus,
    ) -> Result<bool, AppError>;

    /// Records the outcome of run `run` (the step's `attempts` when the run claimed it): writes
    /// only if the stored step is still `running` under that run. False when it was settled
    /// (timeout, stop) or claimed by a later run meanwhile, so a stale run never overwrites.
    async fn replace_step_run(
        &self,
        agency: &AgencyId,
        step: &TaskStep,
        run: u32,
    ) -> Result<bool, AppError>;

    /// The callback token a waiting (manual) step resumes its chain with.
    async fn set_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
        token: &str,
    ) -> Result<(), AppError>;

    async fn step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<Option<String>, AppError>;

    /// Forgets a waiting step's token once its chain has been answered.
    async fn clear_step_token(
        &self,
        agency: &AgencyId,
        id: TaskId,
        step: &str,
    ) -> Result<(), AppError>;
}

/// Where attachments live: hands out short-lived, single-object upload and download URLs.
#[async_trait]
pub trait AttachmentStorage: Send + Sync {
    async fn presign_upload(
        &self,
        key: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<String, AppError>;

    /// A GET URL for one object that a browser saves as `file_name`.
    async fn presign_download(
        &self,
        key: &str,
        file_name: &str,
        expires_in: Duration,
    ) -> Result<String, AppError>;
}

/// Puts work on the tier queues and reports their depth.
#[async_trait]
pub trait Dispatcher: Send + Sync {
    /// Sends one run of a task to its tier's queue, visible after `delay`.
    async fn dispatch(
        &self,
        message: &crate::domain::DispatchMessage,
        delay: Duration,
    ) -> Result<(), AppError>;

    /// The URL of a tier's queue (chains dispatch their steps to it).
    fn queue_url(&self, tier: Priority) -> Option<String>;

    /// Messages waiting and in flight on a tier's queue, and on its DLQ.
    async fn depth(&self, tier: Priority) -> Result<QueueDepth, AppError>;
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub waiting: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
}

/// Agents and their capacity. Capacity counters change only through
/// conditional updates, so concurrent assignments never overload an agent.
#[async_trait]
pub trait AgentStore: Send + Sync {
    /// Registers or heartbeats: sets capabilities and capacity, marks online, keeps the load.
    async fn heartbeat(
        &self,
        agency: &AgencyId,
        id: &UserId,
        capabilities: &[String],
        capacity: u32,
        now: DateTime<Utc>,
    ) -> Result<crate::domain::Agent, AppError>;

    async fn get(
        &self,
        agency: &AgencyId,
        id: &UserId,
    ) -> Result<Option<crate::domain::Agent>, AppError>;

    async fn list(&self, agency: &AgencyId) -> Result<Vec<crate::domain::Agent>, AppError>;

    /// One page of an agency's agents in id order, after the agent `after`: at most `limit`,
    /// fewer when more would pass the page byte budget. `next_cursor` (the last agent's id)
    /// is set when more follow.
    async fn page(
        &self,
        agency: &AgencyId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Page<crate::domain::Agent>, AppError>;

    /// Takes one unit of capacity if the agent is online and below capacity.
    async fn reserve(&self, agency: &AgencyId, id: &UserId) -> Result<bool, AppError>;

    /// Gives one unit back (never below zero).
    async fn release(&self, agency: &AgencyId, id: &UserId) -> Result<(), AppError>;

    /// Online agents whose last heartbeat is older than `before`, across agencies.
    async fn stale(&self, before: DateTime<Utc>) -> Result<Vec<crate::domain::Agent>, AppError>;

    /// Marks the agent offline if it is online and its last heartbeat is still older than
    /// `before`; false when a heartbeat arrived meanwhile (the agent is alive and keeps its
    /// work) or another sweep marked it first (that sweep reassigns its work).
    async fn mark_offline(
        &self,
        agency: &AgencyId,
        id: &UserId,
        before: DateTime<Utc>,
    ) -> Result<bool, AppError>;
}

/// A task waiting for a worker, as the aging and deadline scans see it.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingTask {
    pub agency: AgencyId,
    pub id: TaskId,
    pub since: DateTime<Utc>,
}

/// Cross-agency scans for the sweeper, and SLA breach records.
#[async_trait]
pub trait SchedulingIndex: Send + Sync {
    /// Tasks waiting on a tier since before `before`, oldest first, resuming after the entry
    /// `after` (the last one of the previous page). With `breached`, the waiting work whose
    /// breach is recorded and whose tier can rise no further ([`Task::waits_breached_at_top`]),
    /// which the index keeps apart; without, all other waiting work.
    ///
    /// [`Task::waits_breached_at_top`]: crate::domain::Task::waits_breached_at_top
    async fn waiting(
        &self,
        tier: Priority,
        breached: bool,
        before: DateTime<Utc>,
        after: Option<&WaitingTask>,
        limit: usize,
    ) -> Result<Vec<WaitingTask>, AppError>;

    /// Open tasks whose deadline escalation is due at or before `before`
    /// ([`Task::escalation_due_at`], which `since` holds), earliest first, resuming after
    /// `after`. Escalated tasks are no longer listed.
    ///
    /// [`Task::escalation_due_at`]: crate::domain::Task::escalation_due_at
    async fn due_before(
        &self,
        before: DateTime<Utc>,
        after: Option<&WaitingTask>,
        limit: usize,
    ) -> Result<Vec<WaitingTask>, AppError>;

    async fn record_breach(
        &self,
        tier: Priority,
        task: &WaitingTask,
        at: DateTime<Utc>,
    ) -> Result<(), AppError>;

    /// Breaches recorded from `from` up to and including `until`.
    async fn breaches_between(
        &self,
        tier: Priority,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<u64, AppError>;

    // One agency's figures (`GET /api/queues` for a member). The indexes are keyed by tier, not
    // agency, so each reads one bounded page and says whether that page held everything.

    /// The agency's waiting work on a tier (both of its partitions), reading at most `limit`
    /// index entries of each.
    async fn agency_waiting(
        &self,
        tier: Priority,
        agency: &AgencyId,
        limit: usize,
    ) -> Result<AgencyWaiting, AppError>;

    /// The agency's breaches on a tier recorded from `from` up to and including `until`,
    /// reading at most `limit` breach records.
    async fn agency_breaches_between(
        &self,
        tier: Priority,
        agency: &AgencyId,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Bounded, AppError>;

    /// The agency's automated tasks a worker holds now (`in_progress` with an executor), per
    /// tier, among its `limit` newest tasks.
    async fn agency_in_flight(
        &self,
        agency: &AgencyId,
        limit: usize,
    ) -> Result<(std::collections::BTreeMap<Priority, u64>, bool), AppError>;
}

/// A count read from one bounded page: `exact` is false when the page did not hold everything
/// (the count is then a lower bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounded {
    pub count: u64,
    pub exact: bool,
}

/// An agency's waiting work on a tier, from one bounded page per index partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgencyWaiting {
    pub count: u64,
    /// Since when the oldest one seen has waited.
    pub oldest: Option<DateTime<Utc>>,
    /// False when a page did not hold the whole partition: `count` is a lower bound, and an
    /// older entry of the agency's may lie beyond the page.
    pub exact: bool,
}

/// Where an execution is, as DescribeExecution reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
    PendingRedrive,
}

impl ExecutionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Aborted => "ABORTED",
            Self::PendingRedrive => "PENDING_REDRIVE",
        }
    }
}

/// What [`Orchestrator::start_resolved`] found.
#[derive(Debug)]
pub enum StartOutcome {
    /// The execution runs: started now, or by an earlier try of the same start.
    Started,
    /// An execution of that name had already run to its end: nothing runs now.
    Closed(ExecutionStatus),
    /// No execution of that name exists: the start did not happen.
    NotStarted(AppError),
}

/// The Step Functions side of chains: start and stop executions, and answer
/// the callbacks the chain definition waits on.
#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Starts a chain execution named `name`; returns its ARN. Any error (including
    /// ExecutionAlreadyExists) may hide a start that happened: see [`Self::start_resolved`].
    async fn start(&self, name: &str, input: &serde_json::Value) -> Result<String, AppError>;
    /// The status of the execution named `name`; None when there is none.
    async fn describe(&self, name: &str) -> Result<Option<ExecutionStatus>, AppError>;
    /// Starts `name` and resolves an ambiguous answer (a timeout, an error after the request
    /// may have landed, ExecutionAlreadyExists) by describing that deterministic name, so a
    /// caller neither undoes a running execution nor takes a closed one for started. An Err
    /// means neither the start nor the describe gave an answer: it may be running.
    async fn start_resolved(
        &self,
        name: &str,
        input: &serde_json::Value,
    ) -> Result<StartOutcome, AppError> {
        let start_err = match self.start(name, input).await {
            Ok(_) => return Ok(StartOutcome::Started),
            Err(err) => err,
        };
        match self.describe(name).await {
            Ok(Some(ExecutionStatus::Running)) => Ok(StartOutcome::Started),
            Ok(Some(closed)) => Ok(StartOutcome::Closed(closed)),
            Ok(None) => Ok(StartOutcome::NotStarted(start_err)),
            Err(describe_err) => {
                tracing::error!(execution = name, error = %describe_err, start_error = %start_err, "the start failed and the execution could not be described; it may be running");
                Err(start_err)
            }
        }
    }
    /// The ARN the execution named `name` has (or will have once started).
    fn execution_arn(&self, name: &str) -> String;
    async fn stop(&self, execution_arn: &str, cause: &str) -> Result<(), AppError>;
    /// False when the token is no longer valid (timed out, stopped, already answered).
    async fn succeed(&self, token: &str, output: &serde_json::Value) -> Result<bool, AppError>;
    async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<bool, AppError>;
    async fn heartbeat(&self, token: &str) -> Result<bool, AppError>;
}

/// What [`BatchStore::create`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCreated {
    New,
    /// The dedupe key was used before, by this batch; nothing was written.
    Duplicate(TaskId),
}

/// Batch jobs, their per-chunk counters and their failed items.
/// What [`BatchStore::start_chunk`] found of earlier attempts of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkStart {
    /// An earlier attempt had started (it may have recorded failures).
    pub earlier: bool,
    /// Items (positions in the chunk file) whose outcome earlier attempts counted.
    pub done: crate::domain::ChunkDone,
}

#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Writes the batch's task and job together. With `dedupe_key`, a second
    /// create for the same key writes nothing and names the first batch.
    async fn create(
        &self,
        task: &Task,
        batch: &crate::domain::BatchJob,
        dedupe_key: Option<&str>,
    ) -> Result<BatchCreated, AppError>;

    async fn get(
        &self,
        agency: &AgencyId,
        id: TaskId,
    ) -> Result<Option<crate::domain::BatchJob>, AppError>;

    async fn put(&self, batch: &crate::domain::BatchJob) -> Result<(), AppError>;
    /// Writes the batch only if the stored one is still in `status` and `round` (what the
    /// writer read): false when another writer got there first, a cancel above all, which
    /// a finalizer or a starting round must never overwrite.
    async fn put_if(
        &self,
        batch: &crate::domain::BatchJob,
        status: crate::domain::BatchStatus,
        round: u32,
    ) -> Result<bool, AppError>;

    /// [`BatchStore::put_if`], charging the batch's `total_items` to its agency's daily
    /// batch-item quota in the same transaction: `QuotaExceeded` (and nothing written) when
    /// today's quota has no room. For batches whose item count is known only once prepared.
    async fn put_if_charging(
        &self,
        batch: &crate::domain::BatchJob,
        status: crate::domain::BatchStatus,
        round: u32,
    ) -> Result<bool, AppError>;

    /// Batches still `pending` whose last progress ([`BatchJob::pending_since`]) is before
    /// `cutoff`, oldest first, at most `limit`: preparations that stalled (for the sweeper).
    ///
    /// [`BatchJob::pending_since`]: crate::domain::BatchJob::pending_since
    async fn pending_before(
        &self,
        cutoff: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<crate::domain::BatchJob>, AppError>;

    /// Makes `attempt` the chunk's current one (later counts must carry it), keeping what
    /// earlier attempts counted: the items in [`ChunkStart::done`] are not to run again.
    async fn start_chunk(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
    ) -> Result<ChunkStart, AppError>;

    /// Adds to a chunk's counters and sets its done items (all of them, these counts' included)
    /// if `attempt` is still the chunk's current one.
    #[allow(clippy::too_many_arguments)]
    async fn add_counts(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
        chunk: u32,
        attempt: &str,
        counts: crate::domain::ChunkCounts,
        done: &crate::domain::ChunkDone,
    ) -> Result<bool, AppError>;

    /// Sum of the chunk counters of one round.
    async fn round_counts(
        &self,
        agency: &AgencyId,
        id: TaskId,
        round: u32,
    ) -> Result<crate::domain::ChunkCounts, AppError>;

    async fn record_failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        failures: &[crate::domain::ItemFailure],
    ) -> Result<(), AppError>;

    async fn clear_failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        indexes: &[u64],
    ) -> Result<(), AppError>;

    /// Failed items in index order, paged by an opaque cursor.
    async fn failures(
        &self,
        agency: &AgencyId,
        id: TaskId,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page<crate::domain::ItemFailure>, AppError>;

    /// Whether this agency has any data here (tasks or agents).
    async fn agency_known(&self, agency: &AgencyId) -> Result<bool, AppError>;
}

/// An object's bytes as they arrive, in pieces, with its size known up front.
pub struct ObjectBody {
    pub size: u64,
    pub chunks: futures::stream::BoxStream<'static, Result<Vec<u8>, AppError>>,
}

/// Objects in the batch bucket.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    fn bucket(&self) -> &str;
    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), AppError>;
    async fn get(&self, key: &str, max_bytes: usize) -> Result<Vec<u8>, AppError>;
    /// Streams an object of at most `max_bytes` (a larger one is a `Conflict` naming its
    /// size; a missing one `NotFound`), so reading it needs no more memory than a piece.
    async fn open(&self, key: &str, max_bytes: u64) -> Result<ObjectBody, AppError>;
    /// The object's size, or None when there is no object at `key`.
    async fn size(&self, key: &str) -> Result<Option<u64>, AppError>;
    /// User metadata (`x-amz-meta-*`, without the prefix).
    async fn metadata(
        &self,
        key: &str,
    ) -> Result<std::collections::HashMap<String, String>, AppError>;
    async fn presign_get(&self, key: &str, expires_in: Duration) -> Result<String, AppError>;
    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        expires_in: Duration,
    ) -> Result<String, AppError>;
}

/// The batch preparer's queue: preparation runs there, out of the request path.
#[async_trait]
pub trait Preparations: Send + Sync {
    /// Asks for the pending batch's round to be prepared (or its preparation to go on).
    async fn request(&self, request: &crate::domain::PrepareBatch) -> Result<(), AppError>;
}

/// Per-agency request buckets (GCRA, the token bucket kept as one timestamp), shared by
/// every API instance. Times are microseconds since the Unix epoch.
#[async_trait]
pub trait RequestBuckets: Send + Sync {
    /// Admits `tokens` requests at once (GCRA, `tokens` ≥ 1): when the agency's theoretical
    /// arrival time `tat` leaves room for them, `max(tat, now) + (tokens − 1) × interval ≤
    /// now + tolerance`, moves it to `max(tat, now) + tokens × interval` in one conditional
    /// write; otherwise answers `Err(tat)` and writes nothing.
    async fn admit(
        &self,
        agency: &crate::domain::AgencyId,
        now_us: u64,
        interval_us: u64,
        tolerance_us: u64,
        tokens: u64,
    ) -> Result<Result<(), u64>, AppError>;
}

/// Per-agency slots of in-flight work on each tier (the fair-share cap), kept as leases: a
/// slot names its holder (the run: a task's id, a chain step's `<task>#<step>`, a lane of a
/// chain segment's `<task>@lane<k>`, a batch chunk's `<batch>#<round>#<chunk>`) and expires with the run's lease, so a worker
/// that dies between taking and giving back a slot leaks nothing for longer than the lease.
/// The count is the number of live holders, never a separate number that could drift.
#[async_trait]
pub trait InFlightSlots: Send + Sync {
    /// Takes (or renews) `holder`'s slot on `tier` until `until`. With `cap`, only while the
    /// agency holds fewer than `cap` live slots (a holder renewing its own always may), after
    /// reclaiming slots whose lease expired before `now`. False: the agency is at its cap.
    async fn acquire(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
        until: DateTime<Utc>,
        cap: Option<u32>,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError>;

    /// Gives `holder`'s slot back. Idempotent: releasing a slot not held does nothing.
    async fn release(
        &self,
        agency: &AgencyId,
        tier: Priority,
        holder: &str,
    ) -> Result<(), AppError>;

    /// The agency's live slots on `tier` at `now` (expired ones not counted).
    async fn held(
        &self,
        agency: &AgencyId,
        tier: Priority,
        now: DateTime<Utc>,
    ) -> Result<u32, AppError>;

    /// Records that `agency` has work waiting on `tier` (it was just dispatched or delivered).
    async fn stamp_demand(
        &self,
        tier: Priority,
        agency: &AgencyId,
        now: DateTime<Utc>,
    ) -> Result<(), AppError>;

    /// Whether an agency other than `agency` stamped demand on `tier` at or after `since`.
    async fn others_waiting(
        &self,
        tier: Priority,
        agency: &AgencyId,
        since: DateTime<Utc>,
    ) -> Result<bool, AppError>;
}

/// The dispatch window of fair share (`service::pacing`): per agency and tier, the task runs
/// sent to the tier's queue and not yet started, each a lease named by its task id, and the
/// dispatches parked in the table while the window was full. The count is the number of live
/// places, never a separate number that could drift.
#[async_trait]
pub trait DispatchWindow: Send + Sync {
    /// Takes `task`'s place in the agency's window on `tier` until `until`, while fewer than
    /// `size` live places are taken, after reclaiming places whose lease ended before `now`.
    /// A place the task already holds is renewed for a [`Entry::Dispatch`] and refused for a
    /// [`Entry::Refill`].
    #[allow(clippy::too_many_arguments)]
    async fn enter(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
        until: DateTime<Utc>,
        size: u32,
        now: DateTime<Utc>,
        entry: Entry,
    ) -> Result<Placement, AppError>;

    /// Frees `task`'s place (its run started, or its message was dropped). Idempotent. Answers
    /// how the window was left.
    async fn leave(
        &self,
        agency: &AgencyId,
        tier: Priority,
        task: TaskId,
    ) -> Result<WindowState, AppError>;

    /// Keeps a dispatch that found the window full until a place frees, and marks the window
    /// as having parked work (in that order, so a mark never hides nothing). Idempotent.
    async fn park(&self, message: &DispatchMessage) -> Result<(), AppError>;

    /// The agency's oldest parked dispatches on `tier`, at most `limit`.
    async fn parked(
        &self,
        agency: &AgencyId,
        tier: Priority,
        limit: usize,
    ) -> Result<Vec<DispatchMessage>, AppError>;

    /// Forgets a parked dispatch once it was sent. Idempotent.
    async fn unpark(&self, agency: &AgencyId, tier: Priority, task: TaskId)
        -> Result<(), AppError>;

    /// Clears the parked mark, only if it is still `mark` (a later park keeps it set).
    async fn clear_parked_mark(
        &self,
        agency: &AgencyId,
        tier: Priority,
        mark: &str,
    ) -> Result<(), AppError>;
}

/// Who takes a place in a dispatch window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A dispatch of the task (the API, the sweeper): a place it already holds is renewed.
    Dispatch,
    /// A parked dispatch about to be sent: only while nobody holds its place, so that of two
    /// refills that read the same parked dispatch, exactly one sends it.
    Refill,
}

/// What a [`DispatchWindow::enter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Entered,
    /// `size` live places are taken.
    Full,
    /// A refill found the task's place taken (another refill is sending it).
    Held,
}

/// A window as a [`DispatchWindow::leave`] left it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowState {
    /// Places still taken (expired leases included until reclaimed).
    pub taken: u32,
    /// Set while dispatches may be parked: the mark the latest park wrote.
    pub parked_mark: Option<String>,
}

/// One event for the stack's event bus (its source is always `taskflow`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEntry {
    pub detail_type: String,
    /// The detail as JSON text.
    pub detail: String,
}

/// The stack's EventBridge bus. PutEvents can fail per entry: the answer has one slot per
/// entry sent, `None` where it was accepted and the error code where it was not.
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn put(&self, entries: &[BusEntry]) -> Result<Vec<Option<String>>, AppError>;
}

/// Schedules in the single table, always addressed with the caller's agency.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule if the agency has fewer than `limit` (else a 429 naming the quota).
    async fn create(&self, schedule: &Schedule, limit: u32) -> Result<(), AppError>;
    async fn get(&self, agency: &AgencyId, id: ScheduleId) -> Result<Option<Schedule>, AppError>;
    /// The agency's schedules without their templates, oldest first (at most the quota's limit).
    async fn list(&self, agency: &AgencyId) -> Result<Vec<Schedule>, AppError>;
    /// Writes `schedule` if the stored one still has version `expected` (else a 409).
    async fn replace(&self, schedule: &Schedule, expected: u64) -> Result<(), AppError>;
    /// Removes the schedule (and its count) if it still has version `expected`.
    async fn delete(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        expected: u64,
    ) -> Result<(), AppError>;
    /// Records a firing, keyed by its scheduled time (a repeat overwrites it).
    async fn record_run(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        run: &ScheduleRun,
    ) -> Result<(), AppError>;
    /// The latest `limit` runs, newest scheduled time first.
    async fn runs(
        &self,
        agency: &AgencyId,
        id: ScheduleId,
        limit: usize,
    ) -> Result<Vec<ScheduleRun>, AppError>;
}

/// What fires schedules: EventBridge Scheduler on AWS (one schedule per schedule).
#[async_trait]
pub trait ScheduleTrigger: Send + Sync {
    /// Creates or updates the trigger to match `schedule` (expression, zone, dates, state).
    async fn put(&self, schedule: &Schedule) -> Result<(), AppError>;
    /// Removes the trigger; one already gone is not an error.
    async fn delete(&self, agency: &AgencyId, id: ScheduleId) -> Result<(), AppError>;
}
