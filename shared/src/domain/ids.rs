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
                Self(ulid::Ulid::new())
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
    fn task_ids_round_trip_and_reject_garbage() {
        let id = TaskId::generate();
        assert_eq!(TaskId::parse(&id.to_string()), Ok(id));
        assert!(TaskId::parse("not-a-ulid").is_err());
    }
}
