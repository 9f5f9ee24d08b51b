//! State-change events: which table writes become EventBridge events, and what they say.
//!
//! The table's stream gives each write of an item as an old and a new image. A task, step or
//! batch item whose `status` differs between the two (or that was just inserted) becomes one
//! event; everything else (other item kinds, writes that keep the status, deletions) becomes
//! none. The detail is small and fixed: ids, status, timings and a capped error, never a
//! result, input or metadata (ARCHITECTURE "Limits and capacity").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `source` of every event.
pub const SOURCE: &str = "taskflow";

/// An error message is cut to this many characters (at most 4 KiB of UTF-8).
pub const MAX_ERROR_CHARS: usize = 1024;

/// Sequence numbers are padded to this many digits (DynamoDB's are 21 to 40), so that string
/// order is stream order.
const SEQUENCE_DIGITS: usize = 40;

/// One stream record, as the publisher needs it.
#[derive(Debug, Clone, Default)]
pub struct StreamChange {
    /// The record's `SequenceNumber`: the same on every delivery of the record.
    pub sequence: String,
    /// The record's `ApproximateCreationDateTime`.
    pub at: DateTime<Utc>,
    pub old: Option<serde_dynamo::Item>,
    pub new: Option<serde_dynamo::Item>,
}

/// What changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Task,
    Step,
    Batch,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Task => "Task",
            Kind::Step => "Step",
            Kind::Batch => "Batch",
        }
    }
}

/// One event for the bus: its `detail-type` and its detail.
#[derive(Debug, Clone, PartialEq)]
pub struct StateEvent {
    pub detail_type: String,
    pub detail: EventDetail,
}

/// The detail of every state-change event (README "State-change events").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    /// Stable across redeliveries of the same write: consumers deduplicate on it.
    pub event_id: String,
    pub kind: Kind,
    pub agency_id: String,
    pub task_id: String,
    /// The step's name (step events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The batch's id and round (batch events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    pub status: String,
    /// None when the item was created in `status`.
    pub previous_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// The task's version after the write (tasks only; it rises with every write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The write's position in the table's stream, 40 digits: per item, a later write has a
    /// larger one. Order a task's, step's or batch's events by it.
    pub sequence: String,
    /// When the write happened (a task's `updatedAt`, else the stream record's time).
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// At most [`MAX_ERROR_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A batch's item counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_items: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_items: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_items: Option<u64>,
}

/// The attributes an image is read for; every other attribute (results, inputs, metadata) is
/// skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Image {
    #[serde(rename = "PK", default)]
    pk: String,
    #[serde(rename = "SK", default)]
    sk: String,
    entity: Option<String>,
    status: Option<String>,
    priority: Option<String>,
    #[serde(rename = "type")]
    task_type: Option<String>,
    version: Option<u64>,
    attempts: Option<u32>,
    round: Option<u32>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    error: Option<String>,
    total_items: Option<u64>,
    success_items: Option<u64>,
    failed_items: Option<u64>,
}

impl Image {
    fn read(item: &serde_dynamo::Item) -> Result<Image, String> {
        serde_dynamo::from_item(item.clone()).map_err(|e| e.to_string())
    }

    fn kind(&self) -> Option<Kind> {
        match (self.entity.as_deref(), self.sk.as_str()) {
            (Some("task"), "TASK") => Some(Kind::Task),
            (Some("step"), sk) if sk.starts_with("STEP#") => Some(Kind::Step),
            (Some("batch"), "BATCH") => Some(Kind::Batch),
            _ => None,
        }
    }

    /// `AGENCY#<agency>#TASK#<id>`: ids cannot contain `#` (domain/ids.rs).
    fn agency_and_task(&self) -> Option<(&str, &str)> {
        let rest = self.pk.strip_prefix("AGENCY#")?;
        let (agency, id) = rest.split_once("#TASK#")?;
        (!agency.is_empty() && !id.is_empty() && !id.contains('#')).then_some((agency, id))
    }
}

/// Why a record could not be read (it is skipped and logged: a record that can never be read
/// must not hold up the stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// The events one stream record stands for: none, or one.
pub fn events_for(change: &StreamChange) -> Result<Vec<StateEvent>, Unreadable> {
    let Some(new_item) = &change.new else {
        return Ok(Vec::new()); // a deletion is not a status change
    };
    let new = Image::read(new_item).map_err(Unreadable)?;
    let Some(kind) = new.kind() else {
        return Ok(Vec::new());
    };
    let Some(status) = new.status.clone() else {
        return Ok(Vec::new());
    };
    let previous_status = match &change.old {
        Some(old) => {
            let old = Image::read(old).map_err(Unreadable)?;
            if old.status.as_deref() == Some(status.as_str()) {
                return Ok(Vec::new());
            }
            old.status
        }
        None => None,
    };
    let (agency, task) = new
        .agency_and_task()
        .ok_or_else(|| Unreadable(format!("unexpected key {}", new.pk)))?;
    let sequence = padded_sequence(&change.sequence);
    let step = (kind == Kind::Step).then(|| new.sk["STEP#".len()..].to_owned());
    let event_id = match &step {
        Some(name) => format!("step:{task}:{name}:{sequence}"),
        None => format!("{}:{task}:{sequence}", kind_name(kind)),
    };
    let detail_type = format!("{} {}", kind.title(), status_title(&status));
    let detail = EventDetail {
        event_id,
        kind,
        agency_id: agency.to_owned(),
        task_id: task.to_owned(),
        step,
        batch_id: (kind == Kind::Batch).then(|| task.to_owned()),
        round: if kind == Kind::Batch { new.round } else { None },
        status,
        previous_status,
        priority: new.priority,
        task_type: if kind == Kind::Task {
            new.task_type
        } else {
            None
        },
        version: if kind == Kind::Task {
            new.version
        } else {
            None
        },
        sequence,
        occurred_at: match kind {
            Kind::Task => new.updated_at.unwrap_or(change.at),
            _ => change.at,
        },
        created_at: new.created_at,
        started_at: new.started_at,
        completed_at: new.completed_at,
        attempts: if kind == Kind::Batch {
            None
        } else {
            new.attempts
        },
        error: new.error.map(|e| cap_error(&e)),
        total_items: new.total_items,
        success_items: new.success_items,
        failed_items: new.failed_items,
    };
    Ok(vec![StateEvent {
        detail_type,
        detail,
    }])
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Task => "task",
        Kind::Step => "step",
        Kind::Batch => "batch",
    }
}

/// `in_progress` → `In Progress`.
pub fn status_title(status: &str) -> String {
    status
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn padded_sequence(sequence: &str) -> String {
    let digits: String = sequence.chars().filter(char::is_ascii_digit).collect();
    format!("{digits:0>SEQUENCE_DIGITS$}")
}

/// The first [`MAX_ERROR_CHARS`] characters, marked when cut.
pub fn cap_error(error: &str) -> String {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => format!("{}…", &error[..end]),
        None => error.to_owned(),
    }
}
