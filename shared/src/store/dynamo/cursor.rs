//! Opaque paging cursors: the DynamoDB LastEvaluatedKey, base64url-encoded.
//! A cursor is only accepted for the partition it was issued for, so a forged
//! cursor cannot read another agency's index partition.

use crate::error::{AppError, FieldErrors};
use aws_sdk_dynamodb::types::AttributeValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::{BTreeMap, HashMap};

pub fn encode(key: &HashMap<String, AttributeValue>) -> String {
    let plain: BTreeMap<&str, &str> = key
        .iter()
        .filter_map(|(k, v)| v.as_s().ok().map(|s| (k.as_str(), s.as_str())))
        .collect();
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&plain).unwrap_or_default())
}

/// Decodes a cursor, requiring exactly `allowed` attributes and `partition_attr == partition`.
pub fn decode(
    cursor: &str,
    allowed: &[&str],
    partition_attr: &str,
    partition: &str,
) -> Result<HashMap<String, AttributeValue>, AppError> {
    let invalid = || {
        let mut errors = FieldErrors::new();
        errors.add(
            "cursor",
            "is not a cursor returned by this API for this query",
        );
        AppError::Validation(errors)
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let plain: BTreeMap<String, String> = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    let keys_match = plain.len() == allowed.len() && allowed.iter().all(|k| plain.contains_key(*k));
    if !keys_match || plain.get(partition_attr).map(String::as_str) != Some(partition) {
        return Err(invalid());
    }
    Ok(plain
        .into_iter()
        .map(|(k, v)| (k, AttributeValue::S(v)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("PK".to_owned(), AttributeValue::S("x".into())),
            ("GSI1PK".to_owned(), AttributeValue::S(p.into())),
        ])
    }

    #[test]
    fn round_trips_for_its_own_partition_only() {
        let cursor = encode(&key("AGENCY#a"));
        let allowed = ["PK", "GSI1PK"];
        assert_eq!(
            decode(&cursor, &allowed, "GSI1PK", "AGENCY#a").unwrap(),
            key("AGENCY#a")
        );
        assert!(decode(&cursor, &allowed, "GSI1PK", "AGENCY#b").is_err());
        assert!(decode("garbage!", &allowed, "GSI1PK", "AGENCY#a").is_err());
    }
}
