//! Identifiers. Agency and user ids become part of DynamoDB keys, so they are
//! restricted to characters that can never forge another key (no `#`).

use super::limits::MAX_ID_CHARS;
use serde::{Deserialize, Serialize};
use std::fmt;

fn check_key_safe(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.chars().count() > MAX_ID_CHARS {
        return Err(format!("{what} must be at most {MAX_ID_CHARS} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ':'))
    {
        return Err(format!(
            "{what} may contain only letters, digits and - _ . @ :"
        ));
    }
    Ok(())
}

macro_rules! key_safe_id {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, String> {
                check_key_safe(value, $what)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

key_safe_id!(AgencyId, "agency id");
key_safe_id!(UserId, "user id");

/// One generator per process: ids made in the same millisecond still sort in the order they
/// were made (a plain `Ulid::new()` draws its random part afresh, so two tasks created in one
/// millisecond could list "newest first" in the wrong order).
static MONOTONIC: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());

fn next_ulid() -> ulid::Ulid {
    let mut generator = MONOTONIC.lock().unwrap_or_else(|e| e.into_inner());
    // Overflow needs 2^80 ids in one millisecond; a fresh id is then still unique.
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

macro_rules! ulid_id {
    ($name:ident) => {
        /// A ULID: unique and sortable by creation time.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(ulid::Ulid);

        impl $name {
            pub fn generate() -> Self {
                Self(next_ulid())
            }

            pub fn parse(value: &str) -> Result<Self, String> {
                ulid::Ulid::from_string(value)
                    .map(Self)
                    .map_err(|_| format!("'{value}' is not a valid id"))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

ulid_id!(TaskId);
ulid_id!(AttachmentId);
ulid_id!(ScheduleId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_safe_ids_reject_separators_and_empty() {
        assert!(AgencyId::parse("acme-1").is_ok());
        assert!(AgencyId::parse("").is_err());
        assert!(AgencyId::parse("a#TASK").is_err());
        assert!(UserId::parse(&"u".repeat(MAX_ID_CHARS + 1)).is_err());
    }

    #[test]
    fn ids_made_in_the_same_millisecond_sort_in_the_order_they_were_made() {
        let ids: Vec<TaskId> = (0..10_000).map(|_| TaskId::generate()).collect();
        // 10,000 ids take a few milliseconds: many share one.
        let same_ms = ids
            .windows(2)
            .filter(|w| w[0].0.timestamp_ms() == w[1].0.timestamp_ms())
            .count();
        assert!(same_ms > 0);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    }

    #[test]
    fn task_ids_round_trip_and_reject_garbage() {
        let id = TaskId::generate();
        assert_eq!(TaskId::parse(&id.to_string()), Ok(id));
        assert!(TaskId::parse("not-a-ulid").is_err());
    }
}
