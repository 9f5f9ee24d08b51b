//! DynamoDB capacity units as on-demand tables bill them, computed from items in the wire
//! format (`{"S": "..."}`, `{"N": "..."}`, ...), because the emulator reports no real figures:
//! moto answers `ReturnConsumedCapacity` with a constant.
//!
//! The rules (AWS Developer Guide, "DynamoDB item sizes and formats", "Read and write
//! operations", "Global secondary indexes: write capacity units", "Transactions: capacity
//! management"):
//! - an item's size is the sum of its attribute names' and values' sizes; a string is its UTF-8
//!   bytes, a number about one byte per two significant digits plus one, a binary its raw bytes,
//!   a boolean or null one byte; a list or map 3 bytes plus one byte and the size of each
//!   element (a map element's name counts);
//! - a write costs one unit per started KB (1,024 bytes) of the larger of the item before and
//!   after it; a delete the deleted item's size; a write whose condition fails still costs the
//!   item's size if it exists, else one unit; a transaction costs twice (prepare and commit);
//! - every global secondary index whose keys the item has, before or after, costs one write of
//!   its entry (table keys, index keys, projected attributes) per started KB: a put when the
//!   entry appears, a delete when it goes, both when an index key changes, one when only
//!   projected attributes change, none when the entry is unchanged;
//! - a read costs one unit per started 4 KB when strongly consistent, half when eventually
//!   consistent; a Query sums the sizes it reads before rounding, a batch rounds each item; a
//!   read that finds nothing still costs the minimum.

use serde_json::{Map, Value};

/// An item in the DynamoDB JSON wire format: attribute name → typed value.
pub type Item = Map<String, Value>;

const WRITE_UNIT_BYTES: usize = 1024;
const READ_UNIT_BYTES: usize = 4096;

/// Bytes of one attribute value (without its name).
pub fn value_size(value: &Value) -> usize {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        "N" => inner.as_str().map_or(0, number_size),
        "B" => inner.as_str().map_or(0, base64_len),
        "BOOL" | "NULL" => 1,
        "SS" => each_str(inner).map(str::len).sum(),
        "NS" => each_str(inner).map(number_size).sum(),
        "BS" => each_str(inner).map(base64_len).sum(),
        "L" => {
            3 + inner
                .as_array()
                .map_or(0, |l| l.iter().map(|e| 1 + value_size(e)).sum())
        }
        "M" => {
            3 + inner.as_object().map_or(0, |m| {
                m.iter()
                    .map(|(name, e)| 1 + name.len() + value_size(e))
                    .sum()
            })
        }
        _ => 0,
    }
}

fn each_str(list: &Value) -> impl Iterator<Item = &str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// A number's stored size: one byte per two significant digits, plus one.
pub fn number_size(number: &str) -> usize {
    let mantissa = number
        .trim_start_matches(['-', '+'])
        .split(['e', 'E'])
        .next()
        .unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// Raw bytes of a base64 string, without decoding it.
fn base64_len(encoded: &str) -> usize {
    let encoded = encoded.trim_end();
    let padding = encoded.bytes().rev().take_while(|b| *b == b'=').count();
    (encoded.len() / 4 * 3
        + match encoded.len() % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        })
    .saturating_sub(padding)
}

/// Bytes of an item: every attribute's name and value.
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

/// Write units for `bytes` (at least one).
pub fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(WRITE_UNIT_BYTES).max(1) as f64
}

/// Read units for `bytes` read in one request (at least the minimum).
pub fn read_units(bytes: usize, strongly_consistent: bool) -> f64 {
    let units = bytes.div_ceil(READ_UNIT_BYTES).max(1) as f64;
    if strongly_consistent {
        units
    } else {
        units / 2.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    KeysOnly,
    Include(Vec<String>),
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexSchema {
    pub name: String,
    pub hash_key: String,
    pub range_key: Option<String>,
    pub projection: Projection,
}

/// A table's keys and global secondary indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub hash_key: String,
    pub range_key: Option<String>,
    pub indexes: Vec<IndexSchema>,
}

fn key_schema(value: &Value) -> Option<(String, Option<String>)> {
    let keys = value.as_array()?;
    let named = |kind: &str| {
        keys.iter()
            .find(|k| k["KeyType"] == kind)
            .and_then(|k| k["AttributeName"].as_str())
            .map(str::to_owned)
    };
    Some((named("HASH")?, named("RANGE")))
}

impl TableSchema {
    /// From a `DescribeTable` answer's `Table`, or the `Properties` of an
    /// `AWS::DynamoDB::Table` in a template (the two share these field names).
    pub fn parse(table: &Value) -> Option<TableSchema> {
        let (hash_key, range_key) = key_schema(&table["KeySchema"])?;
        let indexes = table["GlobalSecondaryIndexes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|index| {
                let (hash_key, range_key) = key_schema(&index["KeySchema"])?;
                let projection = match index["Projection"]["ProjectionType"].as_str() {
                    Some("KEYS_ONLY") => Projection::KeysOnly,
                    Some("INCLUDE") => Projection::Include(
                        index["Projection"]["NonKeyAttributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect(),
                    ),
                    _ => Projection::All,
                };
                Some(IndexSchema {
                    name: index["IndexName"].as_str()?.to_owned(),
                    hash_key,
                    range_key,
                    projection,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(TableSchema {
            hash_key,
            range_key,
            indexes,
        })
    }

    /// The item's primary key attributes.
    pub fn key_of(&self, item: &Item) -> Option<Item> {
        let mut key = Item::new();
        for name in std::iter::once(&self.hash_key).chain(&self.range_key) {
            key.insert(name.clone(), item.get(name)?.clone());
        }
        Some(key)
    }

    pub fn index(&self, name: &str) -> Option<&IndexSchema> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// The item's entry in `index`, if it has the index's keys (sparse indexes hold only
    /// the items that do).
    pub fn index_entry(&self, index: &IndexSchema, item: &Item) -> Option<Item> {
        let mut entry = Item::new();
        for name in std::iter::once(&index.hash_key).chain(&index.range_key) {
            entry.insert(name.clone(), item.get(name)?.clone());
        }
        for name in std::iter::once(&self.hash_key).chain(&self.range_key) {
            if let Some(value) = item.get(name) {
                entry.insert(name.clone(), value.clone());
            }
        }
        match &index.projection {
            Projection::KeysOnly => {}
            Projection::Include(names) => {
                for name in names {
                    if let Some(value) = item.get(name) {
                        entry.insert(name.clone(), value.clone());
                    }
                }
            }
            Projection::All => entry.clone_from(item),
        }
        Some(entry)
    }

    /// Write units a table write costs `index`, from the item before and after it.
    pub fn index_write_units(
        &self,
        index: &IndexSchema,
        before: Option<&Item>,
        after: Option<&Item>,
    ) -> f64 {
        let before = before.and_then(|i| self.index_entry(index, i));
        let after = after.and_then(|i| self.index_entry(index, i));
        match (before, after) {
            (None, None) => 0.0,
            (Some(gone), None) => write_units(item_size(&gone)),
            (None, Some(new)) => write_units(item_size(&new)),
            (Some(old), Some(new)) => {
                let key_changed = std::iter::once(&index.hash_key)
                    .chain(&index.range_key)
                    .any(|k| old.get(k) != new.get(k));
                if key_changed {
                    write_units(item_size(&old)) + write_units(item_size(&new))
                } else if old == new {
                    0.0
                } else {
                    write_units(item_size(&old).max(item_size(&new)))
                }
            }
        }
    }
}

/// What a table write was asked to do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WriteKind<'a> {
    /// `PutItem` (or a transaction's `Put`, or a batch's `PutRequest`) of this item.
    Put(&'a Item),
    Update,
    Delete,
    /// A transaction's `ConditionCheck`: read and checked, not written.
    ConditionCheck,
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Its condition failed (alone, or its transaction was cancelled): still billed.
    ConditionFailed,
    /// Refused before any work (validation, throttling): not billed.
    Rejected,
}

/// Write units of one table write (base table only; see [`TableSchema::index_write_units`]).
pub fn table_write_units(
    kind: WriteKind,
    before: Option<&Item>,
    after: Option<&Item>,
    outcome: Outcome,
    transactional: bool,
) -> f64 {
    let size = |item: Option<&Item>| item.map_or(0, item_size);
    let units = match (outcome, kind) {
        (Outcome::Rejected, _) => 0.0,
        (Outcome::ConditionFailed, WriteKind::Put(new)) if before.is_some() => {
            write_units(size(before).max(item_size(new)))
        }
        (Outcome::ConditionFailed, _) if before.is_some() => write_units(size(before)),
        (Outcome::ConditionFailed, _) => 1.0,
        (Outcome::Applied, WriteKind::Delete | WriteKind::ConditionCheck) => {
            write_units(size(before))
        }
        (Outcome::Applied, WriteKind::Put(_) | WriteKind::Update) => {
            write_units(size(before).max(size(after)))
        }
    };
    if transactional {
        2.0 * units
    } else {
        units
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> Item {
        value.as_object().expect("an object").clone()
    }

    #[test]
    fn scalar_sizes_follow_the_documented_rules() {
        // Strings: UTF-8 bytes of the name plus the value.
        assert_eq!(item_size(&item(json!({"a": {"S": "hello"}}))), 1 + 5);
        assert_eq!(item_size(&item(json!({"é": {"S": "€"}}))), 2 + 3);
        // Numbers: one byte per two significant digits, plus one; zeros at either end trimmed.
        assert_eq!(number_size("12345"), 3 + 1);
        assert_eq!(number_size("-12"), 1 + 1);
        assert_eq!(number_size("100"), 1 + 1);
        assert_eq!(number_size("0.00120"), 1 + 1);
        assert_eq!(number_size("1.5E+50"), 1 + 1);
        assert_eq!(number_size("0"), 1);
        assert_eq!(number_size("1736000000000"), 2 + 1);
        assert_eq!(number_size("1736000000123"), 7 + 1);
        // Binary: raw bytes, not the base64 text.
        assert_eq!(value_size(&json!({"B": "aGVsbG8="})), 5);
        assert_eq!(value_size(&json!({"B": "aGk="})), 2);
        assert_eq!(value_size(&json!({"B": "YWJj"})), 3);
        // Boolean and null: one byte.
        assert_eq!(item_size(&item(json!({"ok": {"BOOL": true}}))), 2 + 1);
        assert_eq!(item_size(&item(json!({"x": {"NULL": true}}))), 1 + 1);
        // Sets: the sum of their elements.
        assert_eq!(value_size(&json!({"SS": ["a", "bc"]})), 3);
        assert_eq!(value_size(&json!({"NS": ["1", "1234"]})), 2 + 3);
    }

    #[test]
    fn lists_and_maps_cost_three_bytes_plus_one_per_element() {
        assert_eq!(item_size(&item(json!({"l": {"L": []}}))), 1 + 3);
        assert_eq!(item_size(&item(json!({"m": {"M": {}}}))), 1 + 3);
        // ["ab", "c"]: 3 + (1 + 2) + (1 + 1).
        assert_eq!(
            item_size(&item(json!({"l": {"L": [{"S": "ab"}, {"S": "c"}]}}))),
            1 + 3 + 3 + 2
        );
        // {"a": "x"}: 3 + (1 + name 1 + value 1); nesting adds up.
        assert_eq!(
            item_size(&item(json!({"m": {"M": {"a": {"S": "x"}}}}))),
            1 + 3 + 3
        );
        assert_eq!(
            value_size(&json!({"M": {"in": {"M": {"a": {"N": "7"}}}}})),
            3 + (1 + 2 + (3 + (1 + 1 + 2)))
        );
    }

    #[test]
    fn units_round_up_per_kilobyte_written_and_four_kilobytes_read() {
        assert_eq!(write_units(0), 1.0);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(0, true), 1.0);
        assert_eq!(read_units(4096, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(4097, false), 1.0);
        assert_eq!(read_units(10, false), 0.5);
    }

    fn tasks_table() -> TableSchema {
        TableSchema::parse(&json!({
            "KeySchema": [
                {"AttributeName": "PK", "KeyType": "HASH"},
                {"AttributeName": "SK", "KeyType": "RANGE"}
            ],
            "GlobalSecondaryIndexes": [
                {"IndexName": "GSI1", "KeySchema": [
                    {"AttributeName": "GSI1PK", "KeyType": "HASH"},
                    {"AttributeName": "GSI1SK", "KeyType": "RANGE"}],
                 "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["priority"]}},
                {"IndexName": "GSI3", "KeySchema": [
                    {"AttributeName": "GSI3PK", "KeyType": "HASH"},
                    {"AttributeName": "GSI3SK", "KeyType": "RANGE"}],
                 "Projection": {"ProjectionType": "KEYS_ONLY"}},
                {"IndexName": "ALL", "KeySchema": [{"AttributeName": "A", "KeyType": "HASH"}],
                 "Projection": {"ProjectionType": "ALL"}}
            ]
        }))
        .expect("a schema")
    }

    fn task(extra: Value) -> Item {
        let mut task = item(json!({
            "PK": {"S": "AGENCY#a#TASK#1"}, "SK": {"S": "TASK"},
            "GSI1PK": {"S": "AGENCY#a"}, "GSI1SK": {"S": "1"},
            "priority": {"S": "high"}, "status": {"S": "pending"}
        }));
        task.extend(item(extra));
        task
    }

    #[test]
    fn the_template_table_parses_with_its_four_indexes() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let template = local_stack::template::Template::load(&repo.join("template.yaml")).unwrap();
        let table = template.resource("TasksTable").expect("TasksTable");
        let schema = TableSchema::parse(&serde_json::to_value(&table.properties).unwrap())
            .expect("a schema");
        assert_eq!(
            (schema.hash_key.as_str(), schema.range_key.as_deref()),
            ("PK", Some("SK"))
        );
        let names: Vec<&str> = schema.indexes.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["GSI1", "GSI2", "GSI3", "GSI4"]);
        assert!(matches!(&schema.index("GSI1").unwrap().projection,
            Projection::Include(a) if a.contains(&"priority".to_owned())));
        assert_eq!(
            schema.index("GSI3").unwrap().projection,
            Projection::KeysOnly
        );
    }

    #[test]
    fn index_entries_hold_the_keys_and_the_projection() {
        let table = tasks_table();
        let t = task(json!({}));
        let gsi1 = table.index_entry(table.index("GSI1").unwrap(), &t).unwrap();
        let keys: Vec<&str> = gsi1.keys().map(String::as_str).collect();
        assert_eq!(keys, ["GSI1PK", "GSI1SK", "PK", "SK", "priority"]);
        // A sparse index holds only items with its keys.
        assert!(table
            .index_entry(table.index("GSI3").unwrap(), &t)
            .is_none());
        let all = table.index_entry(table.index("ALL").unwrap(), &task(json!({"A": {"S": "x"}})));
        assert_eq!(all.unwrap().len(), 7);
    }

    #[test]
    fn index_writes_follow_what_the_write_did_to_each_entry() {
        let table = tasks_table();
        let (gsi1, gsi3) = (table.index("GSI1").unwrap(), table.index("GSI3").unwrap());
        let pending = task(json!({"GSI3PK": {"S": "TIER#high#0"}, "GSI3SK": {"S": "t1"}}));
        // A new item: one put in each index whose keys it has.
        assert_eq!(table.index_write_units(gsi1, None, Some(&pending)), 1.0);
        assert_eq!(table.index_write_units(gsi3, None, Some(&pending)), 1.0);
        // A change to an attribute no index holds: nothing.
        let mut running = pending.clone();
        running.insert("status".into(), json!({"S": "running"}));
        assert_eq!(
            table.index_write_units(gsi1, Some(&pending), Some(&running)),
            0.0
        );
        assert_eq!(
            table.index_write_units(gsi3, Some(&pending), Some(&running)),
            0.0
        );
        // A projected attribute changes: one write.
        let mut critical = pending.clone();
        critical.insert("priority".into(), json!({"S": "critical"}));
        assert_eq!(
            table.index_write_units(gsi1, Some(&pending), Some(&critical)),
            1.0
        );
        // An index key changes: a delete and a put.
        let mut requeued = pending.clone();
        requeued.insert("GSI3SK".into(), json!({"S": "t2"}));
        assert_eq!(
            table.index_write_units(gsi3, Some(&pending), Some(&requeued)),
            2.0
        );
        // The key goes: one delete.
        let mut started = pending.clone();
        started.remove("GSI3PK");
        assert_eq!(
            table.index_write_units(gsi3, Some(&pending), Some(&started)),
            1.0
        );
        assert_eq!(table.index_write_units(gsi3, Some(&started), None), 0.0);
        // An entry over 1 KB costs a unit per started KB.
        let mut big = task(json!({}));
        big.insert("priority".into(), json!({"S": "p".repeat(1500)}));
        assert_eq!(table.index_write_units(gsi1, None, Some(&big)), 2.0);
    }

    #[test]
    fn table_writes_bill_the_larger_image_and_failed_conditions() {
        let small = task(json!({}));
        let mut large = small.clone();
        large.insert("result".into(), json!({"S": "r".repeat(1500)}));
        let put = WriteKind::Put(&large);
        assert_eq!(
            table_write_units(put, None, Some(&large), Outcome::Applied, false),
            2.0
        );
        // Replacing a large item with a small one still bills the larger.
        let shrink = WriteKind::Put(&small);
        assert_eq!(
            table_write_units(shrink, Some(&large), Some(&small), Outcome::Applied, false),
            2.0
        );
        assert_eq!(
            table_write_units(
                WriteKind::Update,
                Some(&small),
                Some(&large),
                Outcome::Applied,
                false
            ),
            2.0
        );
        assert_eq!(
            table_write_units(
                WriteKind::Delete,
                Some(&large),
                None,
                Outcome::Applied,
                false
            ),
            2.0
        );
        // A failed condition bills the existing item, or one unit for a missing one.
        assert_eq!(
            table_write_units(
                put,
                Some(&small),
                Some(&small),
                Outcome::ConditionFailed,
                false
            ),
            2.0
        );
        assert_eq!(
            table_write_units(
                WriteKind::Update,
                None,
                None,
                Outcome::ConditionFailed,
                false
            ),
            1.0
        );
        assert_eq!(
            table_write_units(put, None, None, Outcome::Rejected, false),
            0.0
        );
        // Transactions: twice.
        assert_eq!(
            table_write_units(put, None, Some(&large), Outcome::Applied, true),
            4.0
        );
        assert_eq!(
            table_write_units(
                WriteKind::ConditionCheck,
                Some(&small),
                Some(&small),
                Outcome::Applied,
                true
            ),
            2.0
        );
    }
}
