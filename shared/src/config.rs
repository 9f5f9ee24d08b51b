//! Function configuration, read once per cold start from environment variables
//! (the ones template.yaml sets). Locally the host supplies the same variables.

use crate::error::AppError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub table_name: String,
    pub attachments_bucket: String,
}

impl Config {
    pub fn from_env() -> Result<Self, AppError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads configuration through `lookup`, so in-process hosts can give each
    /// function its own environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, AppError> {
        let required = |key: &str| {
            lookup(key)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| AppError::internal(format!("environment variable {key} is not set")))
        };
        Ok(Self {
            table_name: required("TABLE_NAME")?,
            attachments_bucket: required("ATTACHMENTS_BUCKET")?,
        })
    }
}
