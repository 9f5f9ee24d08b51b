//! Validated task fields. Each type can only hold a legal value, so code that
//! has a `Title` never needs to check its length again.

use super::limits::{
    MAX_DESCRIPTION_CHARS, MAX_METADATA_BYTES, MAX_METADATA_KEYS, MAX_TITLE_CHARS,
};
use serde::{Deserialize, Serialize};

/// Defines a closed set of lowercase string values with parsing that names the allowed ones.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(try_from = "String", into = "&'static str")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = String;
            fn from_str(value: &str) -> Result<Self, String> {
                match value {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "'{}' is not a valid {}; expected one of: {}",
                        other,
                        $what,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                value.parse()
            }
        }

        impl From<$name> for &'static str {
            fn from(value: $name) -> &'static str {
                value.as_str()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// Scheduling tier. Each tier has its own queue and SLA (PRD §9).
    #[derive(Default)]
    Priority, "priority" {
        Critical => "critical",
        High => "high",
        #[default]
        Normal => "normal",
        Low => "low",
        Background => "background",
    }
);

impl Priority {
    /// Target time from queued to started, per PRD §9. Background is best effort.
    pub fn sla(self) -> Option<std::time::Duration> {
        use std::time::Duration;
        match self {
            Priority::Critical => Some(Duration::from_secs(60)),
            Priority::High => Some(Duration::from_secs(5 * 60)),
            Priority::Normal => Some(Duration::from_secs(30 * 60)),
            Priority::Low => Some(Duration::from_secs(2 * 60 * 60)),
            Priority::Background => None,
        }
    }
}

impl Priority {
    /// One tier more urgent; critical stays critical.
    pub fn promoted(self) -> Priority {
        match self {
            Priority::Critical | Priority::High => Priority::Critical,
            Priority::Normal => Priority::High,
            Priority::Low => Priority::Normal,
            Priority::Background => Priority::Low,
        }
    }

    /// How long work may wait before the sweeper moves it up: a fraction of the
    /// SLA (background, which has none, ages as if its SLA were 4 hours).
    pub fn aging_threshold(self, fraction: f64) -> std::time::Duration {
        let sla = self
            .sla()
            .unwrap_or(std::time::Duration::from_secs(4 * 60 * 60));
        sla.mul_f64(fraction.clamp(0.0, 1.0))
    }
}

string_enum!(
    /// What kind of work a task describes.
    #[derive(Default)]
    TaskType, "task type" {
        #[default]
        Simple => "simple",
        MultiStep => "multi_step",
        Batch => "batch",
    }
);

/// 1–200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Title(String);

impl Title {
    pub fn parse(value: &str) -> Result<Self, String> {
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            return Err("must not be empty".into());
        }
        if chars > MAX_TITLE_CHARS {
            return Err(format!(
                "must be at most {MAX_TITLE_CHARS} characters (got {chars})"
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Title {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<Title> for String {
    fn from(value: Title) -> String {
        value.0
    }
}

/// Free text, at most 10,000 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Description(String);

impl Description {
    pub fn parse(value: &str) -> Result<Self, String> {
        let chars = value.chars().count();
        if chars > MAX_DESCRIPTION_CHARS {
            return Err(format!(
                "must be at most {MAX_DESCRIPTION_CHARS} characters (got {chars})"
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Description {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Self::parse(&value)
    }
}

impl From<Description> for String {
    fn from(value: Description) -> String {
        value.0
    }
}

/// A JSON object of at most 100 keys and 16 KiB serialized.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct Metadata(serde_json::Map<String, serde_json::Value>);

impl Metadata {
    pub fn parse(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(map) = value else {
            return Err("must be a JSON object".into());
        };
        if map.len() > MAX_METADATA_KEYS {
            return Err(format!("must have at most {MAX_METADATA_KEYS} keys"));
        }
        if map.keys().any(|k| k.is_empty()) {
            return Err("keys must not be empty".into());
        }
        super::storable::check_object(&map)?;
        let size = serde_json::to_vec(&map)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_METADATA_BYTES {
            return Err(format!(
                "must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})"
            ));
        }
        Ok(Self(map))
    }

    pub fn as_map(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.0
    }
}

impl TryFrom<serde_json::Value> for Metadata {
    type Error = String;
    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        Self::parse(value)
    }
}

impl From<Metadata> for serde_json::Value {
    fn from(value: Metadata) -> serde_json::Value {
        serde_json::Value::Object(value.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn priority_parses_every_tier_and_names_the_choices_on_error() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(*p));
        }
        let err = "urgent".parse::<Priority>().unwrap_err();
        assert!(
            err.contains("critical, high, normal, low, background"),
            "{err}"
        );
    }

    #[test]
    fn title_bounds() {
        assert!(Title::parse("").is_err());
        assert!(Title::parse("   ").is_err());
        assert_eq!(Title::parse("  Ship it ").unwrap().as_str(), "Ship it");
        assert!(Title::parse(&"x".repeat(200)).is_ok());
        assert!(Title::parse(&"x".repeat(201)).is_err());
        // Counted in characters, not bytes.
        assert!(Title::parse(&"é".repeat(200)).is_ok());
    }

    #[test]
    fn metadata_must_be_a_bounded_object() {
        assert!(Metadata::parse(json!({"team": "ops"})).is_ok());
        assert!(Metadata::parse(json!([1, 2])).is_err());
        assert!(Metadata::parse(json!({"blob": "x".repeat(MAX_METADATA_BYTES)})).is_err());
    }

    #[test]
    fn sla_is_ordered_by_tier() {
        assert!(Priority::Critical.sla() < Priority::High.sla());
        assert_eq!(Priority::Background.sla(), None);
    }
}
