//! Property tests for the domain parsers, the step-graph (DAG) check and the
//! wave planner: random input never panics, and whatever parses obeys the
//! documented limits. Case counts stay modest so the suite runs in seconds.

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Value};
use shared::domain::batch_input::{parse_items, InputFormat, MAX_DEPTH, MAX_ITEMS};
use shared::domain::chain::{waves, OnFailure, StepConfig};
use shared::domain::execution::MAX_BACKOFF;
use shared::domain::limits::{
    MAX_ATTEMPTS, MAX_BASE_DELAY_SECONDS, MAX_DESCRIPTION_CHARS, MAX_ID_CHARS, MAX_METADATA_BYTES,
    MAX_METADATA_KEYS, MAX_PAGE_SIZE, MAX_STEPS, MAX_TITLE_CHARS,
};
use shared::domain::{
    AgencyId, BatchStatus, Description, Metadata, Priority, RetryPolicy, Role, TaskStatus,
    TaskType, Title, UserId,
};
use shared::service::input::parse_task_query;
use shared::service::{AssignInput, AttachmentInput, CompleteInput, NewTaskInput, TaskPatch};
use shared::AppError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::str::FromStr;
use std::time::Duration;

const CASES: u32 = 128;

// ---------------------------------------------------------------- strategies

/// Any character, with the ones parsers care about (whitespace, control
/// characters, separators, multi-byte) made likely.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>(),
        2 => select(vec![
            ' ', '\t', '\n', '\r', '\u{0}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}',
            '\u{2028}', '\u{feff}', '#', '/', '"', '\\', ',', ':', 'é', '日',
        ]),
        3 => proptest::char::range('a', 'z'),
    ]
}

fn text(max_chars: usize) -> impl Strategy<Value = String> {
    vec(tricky_char(), 0..=max_chars).prop_map(|chars| chars.into_iter().collect())
}

/// Object keys: mostly the fields the parsers know, so random bodies reach past
/// the "unknown field" check.
fn key() -> impl Strategy<Value = String> {
    const KNOWN: &[&str] = &[
        "title",
        "description",
        "type",
        "priority",
        "assignedTo",
        "dueAt",
        "metadata",
        "steps",
        "executor",
        "input",
        "retry",
        "autoDispatch",
        "requiredCapability",
        "name",
        "dependsOn",
        "order",
        "config",
        "assignee",
        "auto",
        "result",
        "error",
        "fileName",
        "contentType",
        "maxAttempts",
        "baseDelaySeconds",
        "timeoutSeconds",
        "heartbeatSeconds",
        "onFailure",
        "",
    ];
    prop_oneof![
        3 => select(KNOWN).prop_map(str::to_owned),
        1 => text(6),
    ]
}

/// Arbitrary JSON of bounded depth and size (floats only finite ones, as JSON has no others).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e9f64..1.0e9).prop_map(Value::from),
        text(24).prop_map(Value::String),
        select(vec![
            "multi_step",
            "simple",
            "high",
            "echo",
            "manual",
            "a",
            "b",
            "2026-01-31T17:00:00Z",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            btree_map(key(), inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Small JSON values (no floats, which need not survive a text round trip exactly).
fn small_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        text(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(text(6), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value for `field` that is usually valid, or anything at all.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let valid: BoxedStrategy<Value> = match field {
        "title" => prop_oneof![4 => "[A-Za-z0-9 ]{0,30}", 1 => text(30)]
            .prop_map(Value::from)
            .boxed(),
        "description" => text(40).prop_map(Value::from).boxed(),
        "type" => select(vec!["simple", "multi_step", "batch", "bogus"])
            .prop_map(Value::from)
            .boxed(),
        "priority" => select(vec![
            "critical",
            "high",
            "normal",
            "low",
            "background",
            "urgent",
        ])
        .prop_map(Value::from)
        .boxed(),
        "dueAt" => select(vec![
            "2030-01-31T17:00:00Z",
            "2030-01-31T17:00:00+02:00",
            "tomorrow",
        ])
        .prop_map(Value::from)
        .boxed(),
        "metadata" => btree_map("[a-z]{1,4}", small_json(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
            .boxed(),
        "executor" => select(vec!["echo", "http", "sleep", "manual", "nope"])
            .prop_map(|kind| json!({"type": kind}))
            .boxed(),
        "retry" => prop_oneof![
            4 => (1u32..=10, 0u32..=900),
            1 => (0u32..=12, 0u32..=1000),
        ]
        .prop_map(|(m, b)| json!({"maxAttempts": m, "baseDelaySeconds": b}))
        .boxed(),
        "autoDispatch" => any::<bool>().prop_map(Value::Bool).boxed(),
        "assignedTo" | "requiredCapability" => prop_oneof![
            6 => "[a-z0-9_:.-]{1,12}",
            1 => "[a-z0-9_:.#-]{0,12}",
        ]
        .prop_map(Value::from)
        .boxed(),
        _ => small_json().boxed(),
    };
    prop_oneof![8 => valid, 1 => json_value()].boxed()
}

/// A step object over a small pool of names, so names clash and dependencies
/// often resolve (or not).
fn step_value() -> impl Strategy<Value = Value> {
    let name = select(vec!["a", "b", "c", "d", "e"]);
    (
        name.clone(),
        proptest::option::of(vec(name, 0..3)),
        proptest::option::of(step_config()),
    )
        .prop_map(|(name, deps, config)| {
            let mut step = json!({ "name": name });
            if let Some(deps) = deps {
                step["dependsOn"] = json!(deps);
            }
            if let Some(config) = config {
                step["config"] = config;
            }
            step
        })
}

fn step_config() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        Just(json!({"executor": {"type": "manual"}, "assignee": "u1"})),
        Just(json!({"retry": {"maxAttempts": 3}, "onFailure": "continue"})),
        json_value(),
    ]
}

/// Steps with unique names whose dependencies point only at earlier steps.
fn acyclic_steps() -> impl Strategy<Value = Value> {
    proptest::sample::subsequence(vec!["a", "b", "c", "d", "e", "f"], 1..=6)
        .prop_flat_map(|names| {
            let n = names.len();
            (
                Just(names),
                vec(vec(proptest::bool::weighted(0.4), n), n),
                vec(proptest::option::of(step_config()), n),
            )
        })
        .prop_map(|(names, matrix, configs)| {
            let steps: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let deps: Vec<&str> =
                        (0..i).filter(|&j| matrix[i][j]).map(|j| names[j]).collect();
                    let mut step = json!({"name": name, "dependsOn": deps});
                    if let Some(config) = &configs[i] {
                        step["config"] = config.clone();
                    }
                    step
                })
                .collect();
            Value::Array(steps)
        })
}

/// A create-task body: a type with fitting (or not) steps, and any subset of
/// the other fields, each usually valid.
fn task_body() -> impl Strategy<Value = Value> {
    const FIELDS: &[&str] = &[
        "title",
        "description",
        "priority",
        "assignedTo",
        "dueAt",
        "metadata",
        "executor",
        "input",
        "retry",
        "autoDispatch",
        "requiredCapability",
    ];
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = FIELDS
        .iter()
        .map(|f| {
            let presence = if *f == "title" { 0.95 } else { 0.3 };
            proptest::option::weighted(
                presence,
                field_value(f).prop_map(move |v| ((*f).to_owned(), v)),
            )
            .boxed()
        })
        .collect();
    let shape = prop_oneof![
        3 => Just((None, None)),
        2 => Just((Some(json!("simple")), None)),
        4 => acyclic_steps().prop_map(|steps| (Some(json!("multi_step")), Some(steps))),
        1 => (
            proptest::option::of(field_value("type")),
            proptest::option::of(prop_oneof![vec(step_value(), 0..6).prop_map(Value::Array), json_value()]),
        ),
    ];
    (fields, shape).prop_map(|(pairs, (task_type, steps))| {
        let mut body: Map<String, Value> = pairs.into_iter().flatten().collect();
        if let Some(t) = task_type {
            body.insert("type".into(), t);
        }
        if let Some(s) = steps {
            body.insert("steps".into(), s);
        }
        Value::Object(body)
    })
}

/// A random DAG in topological order: `deps[i]` holds only indices below `i`.
/// `order` is the (shuffled) order the steps appear in the request.
#[derive(Debug, Clone)]
struct Dag {
    names: Vec<String>,
    deps: Vec<Vec<usize>>,
    order: Vec<usize>,
}

fn dag(sizes: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Dag> {
    sizes.prop_flat_map(|n| {
        (
            btree_set("[a-z][a-z0-9_.-]{0,6}", n..=n)
                .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                .prop_shuffle(),
            vec(vec(proptest::bool::weighted(0.3), n), n),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        )
            .prop_map(|(names, matrix, order)| {
                let deps = matrix
                    .iter()
                    .enumerate()
                    .map(|(i, row)| (0..i).filter(|&j| row[j]).collect())
                    .collect();
                Dag { names, deps, order }
            })
    })
}

impl Dag {
    fn body(&self) -> Value {
        let steps: Vec<Value> = self
            .order
            .iter()
            .map(|&i| {
                let deps: Vec<&str> = self.deps[i]
                    .iter()
                    .map(|&j| self.names[j].as_str())
                    .collect();
                json!({"name": self.names[i], "dependsOn": deps})
            })
            .collect();
        json!({"title": "chain", "type": "multi_step", "steps": steps})
    }

    /// Indices that depend on `i`, directly or not.
    fn dependents(&self, i: usize) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        let mut todo = vec![i];
        while let Some(x) = todo.pop() {
            for (k, deps) in self.deps.iter().enumerate() {
                if deps.contains(&x) && found.insert(k) {
                    todo.push(k);
                }
            }
        }
        found
    }
}

// ---------------------------------------------------------------- helpers

fn title_ok(raw: &str) -> bool {
    let trimmed = raw.trim();
    (1..=MAX_TITLE_CHARS).contains(&trimmed.chars().count())
        && !trimmed.chars().any(char::is_control)
}

fn id_ok(raw: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&raw.chars().count())
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c))
}

fn validation_fields(err: &AppError) -> Option<BTreeMap<String, String>> {
    match err {
        AppError::Validation(fields) => {
            Some(fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        _ => None,
    }
}

/// `raw` parses iff it is one of the set's names, into the member with that name,
/// and serde agrees with `FromStr`.
fn check_closed_set<T>(
    all: &[T],
    name: fn(T) -> &'static str,
    raw: &str,
) -> Result<(), TestCaseError>
where
    T: FromStr<Err = String> + serde::de::DeserializeOwned + Copy + PartialEq + Debug,
{
    for member in all {
        prop_assert_eq!(name(*member).parse::<T>(), Ok(*member));
    }
    let expected = all.iter().copied().find(|m| name(*m) == raw);
    match raw.parse::<T>() {
        Ok(parsed) => prop_assert_eq!(Some(parsed), expected),
        Err(problem) => {
            prop_assert_eq!(expected, None);
            // The error lists the choices.
            for member in all {
                prop_assert!(problem.contains(name(*member)), "{}", problem);
            }
        }
    }
    prop_assert_eq!(serde_json::from_value::<T>(json!(raw)).ok(), expected);
    Ok(())
}

fn all_enum_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    names.extend(Priority::ALL.iter().map(|p| p.as_str()));
    names.extend(TaskStatus::ALL.iter().map(|s| s.as_str()));
    names.extend(TaskType::ALL.iter().map(|t| t.as_str()));
    names.extend(Role::ALL.iter().map(|r| r.as_str()));
    names.extend(OnFailure::ALL.iter().map(|o| o.as_str()));
    names.extend(BatchStatus::ALL.iter().map(|b| b.as_str()));
    names
}

const QUERY_KEYS: &[&str] = &[
    "status",
    "priority",
    "type",
    "assignee",
    "dueBefore",
    "includeArchived",
    "limit",
    "cursor",
];

fn query_params() -> impl Strategy<Value = HashMap<String, String>> {
    fn value_for(key: &'static str) -> BoxedStrategy<String> {
        let valid: BoxedStrategy<String> = match key {
            "status" => select(vec!["pending", "archived", "in_progress", "done"]).prop_map(str::to_owned).boxed(),
            "priority" => select(vec!["critical", "low", "urgent"]).prop_map(str::to_owned).boxed(),
            "type" => select(vec!["simple", "multi_step", "batch", "other"]).prop_map(str::to_owned).boxed(),
            "assignee" => prop_oneof![5 => "[a-z0-9@._:-]{1,10}", 1 => Just("user#1".to_owned())].boxed(),
            "dueBefore" => select(vec!["2026-01-31T17:00:00Z", "2026-01-31", "yesterday"]).prop_map(str::to_owned).boxed(),
            "includeArchived" => select(vec!["true", "false", "yes"]).prop_map(str::to_owned).boxed(),
            "limit" => prop_oneof![
                4 => (1usize..=MAX_PAGE_SIZE).prop_map(|n| n.to_string()),
                1 => select(vec!["0", "101", "-1", "1e2", " 5", ""]).prop_map(str::to_owned),
                1 => "[0-9]{1,25}",
            ]
            .boxed(),
            _ => prop_oneof![5 => "[A-Za-z0-9_-]{1,40}", 1 => Just(String::new()), 1 => "c{2040,2060}"].boxed(),
        };
        prop_oneof![6 => valid, 1 => text(30)].boxed()
    }
    let known: Vec<BoxedStrategy<Option<(String, String)>>> = QUERY_KEYS
        .iter()
        .map(|k| {
            proptest::option::weighted(0.3, value_for(k).prop_map(move |v| ((*k).to_owned(), v)))
                .boxed()
        })
        .collect();
    let unknown = proptest::option::weighted(
        0.15,
        (
            prop_oneof![
                select(vec!["sort", "hard", "Limit", ""]).prop_map(str::to_owned),
                text(8)
            ],
            text(10),
        ),
    );
    (known, unknown)
        .prop_map(|(known, unknown)| known.into_iter().flatten().chain(unknown).collect())
}

fn formats() -> impl Strategy<Value = InputFormat> {
    select(vec![
        InputFormat::Json,
        InputFormat::JsonLines,
        InputFormat::Csv,
    ])
}

/// Bytes that look like JSON, JSON Lines or CSV often enough to reach past the
/// first character, with invalid UTF-8 and a BOM among the pieces.
fn structured_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"[",
        b"]",
        b"{",
        b"}",
        b"\"",
        b",",
        b":",
        b"1",
        b"-0.5e3",
        b"\"a\"",
        b"null",
        b"true",
        b"\n",
        b"\r\n",
        b"\\",
        b"\\u00",
        b" ",
        b"a",
        b"x,y",
        "é".as_bytes(),
        b"\xff",
        b"\xc3",
        "\u{feff}".as_bytes(),
    ];
    vec(select(pieces), 0..200).prop_map(|parts| parts.concat())
}

/// A well-formed input file of `items` in `format` (CSV: one column holding each item's JSON).
fn valid_file(format: InputFormat, items: &[Value]) -> Vec<u8> {
    match format {
        InputFormat::Json => serde_json::to_vec(items).unwrap(),
        InputFormat::JsonLines => items
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes(),
        InputFormat::Csv => std::iter::once("item,n".to_owned())
            .chain(
                items
                    .iter()
                    .map(|v| format!("{},1", csv_field(&v.to_string()))),
            )
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes(),
    }
}

/// Byte edits: (where, byte, 0 = replace | 1 = insert | 2 = delete).
fn edits() -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    vec(
        (
            any::<Index>(),
            prop_oneof![select(b"[]{}\",:\n\r\\ 1a".to_vec()), any::<u8>()],
            0u8..3,
        ),
        0..4,
    )
}

fn apply(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)]) -> Vec<u8> {
    for (at, byte, kind) in edits {
        match (kind, bytes.is_empty()) {
            (1, _) | (_, true) => {
                let i = at.index(bytes.len() + 1);
                bytes.insert(i, *byte)
            }
            (0, false) => {
                let i = at.index(bytes.len());
                bytes[i] = *byte
            }
            _ => {
                let i = at.index(bytes.len());
                bytes.remove(i);
            }
        }
    }
    bytes
}

/// Bracket nesting `levels` deep (true = array, false = object), with `1` inside.
fn nested(levels: &[bool]) -> String {
    let mut open = String::new();
    let mut close = String::new();
    for &array in levels {
        if array {
            open.push('[');
            close.insert(0, ']');
        } else {
            open.push_str("{\"k\":");
            close.insert(0, '}');
        }
    }
    format!("{open}1{close}")
}

fn csv_field(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn title_accepts_exactly_1_to_200_trimmed_chars_without_control_chars(raw in text(40)) {
        match Title::parse(&raw) {
            Ok(title) => {
                prop_assert!(title_ok(&raw), "accepted {:?}", raw);
                prop_assert_eq!(title.as_str(), raw.trim());
                // Parsing is idempotent, and serde agrees.
                prop_assert_eq!(Title::parse(title.as_str()), Ok(title.clone()));
                prop_assert_eq!(serde_json::from_value::<Title>(json!(raw)).ok(), Some(title));
            }
            Err(_) => {
                prop_assert!(!title_ok(&raw), "refused {:?}", raw);
                prop_assert!(serde_json::from_value::<Title>(json!(raw)).is_err());
            }
        }
    }

    #[test]
    fn title_length_is_counted_in_chars_after_trimming(
        left in "[ \t\n\r]{0,3}",
        right in "[ \t\n\r]{0,3}",
        fill in select(vec!['x', 'é', '日', '-', '🙂']),
        n in 0usize..=210,
        control in proptest::option::of((any::<Index>(), select(vec!['\u{0}', '\u{1}', '\u{7f}', '\u{9f}']))),
    ) {
        let mut body: Vec<char> = std::iter::repeat_n(fill, n).collect();
        let mut has_control = false;
        if let (Some((at, c)), false) = (control, body.is_empty()) {
            body[at.index(n)] = c;
            has_control = true;
        }
        let body: String = body.into_iter().collect();
        let result = Title::parse(&format!("{left}{body}{right}"));
        let expected_ok = (1..=MAX_TITLE_CHARS).contains(&n) && !has_control;
        prop_assert_eq!(result.is_ok(), expected_ok, "n = {}, control = {}", n, has_control);
        if let Ok(title) = result {
            prop_assert_eq!(title.as_str(), body);
        }
    }

    #[test]
    fn description_is_bounded_in_chars(n in (MAX_DESCRIPTION_CHARS - 5)..=(MAX_DESCRIPTION_CHARS + 5), fill in select(vec!['x', 'é', '\n'])) {
        let raw: String = std::iter::repeat_n(fill, n).collect();
        prop_assert_eq!(Description::parse(&raw).is_ok(), n <= MAX_DESCRIPTION_CHARS);
    }

    #[test]
    fn ids_accept_exactly_key_safe_characters(
        raw in prop_oneof![text(20), "[A-Za-z0-9._@:#-]{0,140}"],
    ) {
        let ok = id_ok(&raw);
        prop_assert_eq!(UserId::parse(&raw).is_ok(), ok, "{:?}", raw);
        prop_assert_eq!(AgencyId::parse(&raw).is_ok(), ok, "{:?}", raw);
        if let Ok(id) = UserId::parse(&raw) {
            prop_assert_eq!(id.as_str(), raw.as_str());
            prop_assert!(!id.as_str().contains('#'), "a key separator got through");
        }
    }

    #[test]
    fn closed_sets_round_trip_and_nothing_else_parses(
        raw in prop_oneof![
            3 => select(all_enum_names()).prop_map(str::to_owned),
            1 => select(all_enum_names()).prop_map(|s| s.to_uppercase()),
            1 => select(all_enum_names()).prop_map(|s| format!(" {s}")),
            2 => text(12),
        ],
    ) {
        check_closed_set(Priority::ALL, Priority::as_str, &raw)?;
        check_closed_set(TaskStatus::ALL, TaskStatus::as_str, &raw)?;
        check_closed_set(TaskType::ALL, TaskType::as_str, &raw)?;
        check_closed_set(Role::ALL, Role::as_str, &raw)?;
        check_closed_set(OnFailure::ALL, OnFailure::as_str, &raw)?;
        check_closed_set(BatchStatus::ALL, BatchStatus::as_str, &raw)?;
    }

    #[test]
    fn metadata_is_an_object_of_at_most_100_keys_and_16_kib(
        entries in btree_map(
            prop_oneof![1 => Just(String::new()), 30 => "[a-z0-9_]{1,10}"],
            prop_oneof![
                small_json(),
                (0usize..400).prop_map(|n| Value::String("m".repeat(n))),
            ],
            0..=120,
        ),
        other in json_value(),
    ) {
        let map: Map<String, Value> = entries.into_iter().collect();
        let size = serde_json::to_vec(&map).unwrap().len();
        let object = Value::Object(map);
        let map = object.as_object().unwrap();
        // Nested values must be storable too (their own rules are unit-tested in `storable`).
        let expected_ok = map.len() <= MAX_METADATA_KEYS
            && !map.keys().any(String::is_empty)
            && size <= MAX_METADATA_BYTES
            && shared::domain::storable::check(&object).is_ok();
        let parsed = Metadata::parse(object.clone());
        prop_assert_eq!(parsed.is_ok(), expected_ok, "{} keys, {} bytes", object.as_object().unwrap().len(), size);
        if let Ok(metadata) = parsed {
            prop_assert_eq!(&Value::Object(metadata.as_map().clone()), &object);
        }
        prop_assert_eq!(serde_json::from_value::<Metadata>(object).is_ok(), expected_ok);
        if !other.is_object() {
            prop_assert!(Metadata::parse(other).is_err());
        }
    }

    #[test]
    fn task_query_never_panics_and_names_only_given_parameters(params in query_params()) {
        match parse_task_query(&params) {
            Ok(query) => {
                prop_assert!((1..=MAX_PAGE_SIZE).contains(&query.limit));
                prop_assert!(params.keys().all(|k| QUERY_KEYS.contains(&k.as_str())));
                if let Some(limit) = params.get("limit") {
                    prop_assert_eq!(limit.parse::<usize>().ok(), Some(query.limit));
                }
                if query.status == Some(TaskStatus::Archived) {
                    prop_assert!(query.include_archived);
                }
                if let Some(cursor) = &query.cursor {
                    prop_assert!(!cursor.is_empty() && cursor.len() <= 2048);
                    prop_assert_eq!(params.get("cursor"), Some(cursor));
                }
                prop_assert_eq!(query.status.is_some(), params.contains_key("status"));
                prop_assert_eq!(query.assignee.is_some(), params.contains_key("assignee"));
            }
            Err(err) => {
                let fields = validation_fields(&err);
                prop_assert!(fields.is_some(), "not a validation error: {:?}", err);
                let fields = fields.unwrap();
                prop_assert!(!fields.is_empty());
                for name in fields.keys() {
                    prop_assert!(params.contains_key(name), "error names {:?}, not a given parameter", name);
                }
                for name in params.keys().filter(|k| !QUERY_KEYS.contains(&k.as_str())) {
                    prop_assert!(fields.contains_key(name), "unknown parameter {:?} not named", name);
                }
            }
        }
    }

    #[test]
    fn body_parsers_never_panic_and_valid_tasks_have_valid_titles(
        body in prop_oneof![1 => json_value(), 3 => task_body()],
    ) {
        match NewTaskInput::parse(&body) {
            Ok(input) => {
                let raw = body["title"].as_str();
                prop_assert!(raw.is_some(), "accepted without a string title");
                prop_assert!(title_ok(raw.unwrap()));
                prop_assert_eq!(Title::parse(raw.unwrap()), Ok(input.title.clone()));
                prop_assert_eq!(input.task_type == TaskType::MultiStep, !input.steps.is_empty());
                prop_assert!(input.steps.len() <= MAX_STEPS);
                let names: BTreeSet<&str> = input.steps.iter().map(|s| s.name.as_str()).collect();
                prop_assert_eq!(names.len(), input.steps.len(), "step names are unique");
                for step in &input.steps {
                    for dep in &step.depends_on {
                        prop_assert!(dep != &step.name && names.contains(dep.as_str()));
                    }
                }
                prop_assert!(input.metadata.as_map().len() <= MAX_METADATA_KEYS);
                if let Some(retry) = input.retry {
                    prop_assert!((1..=MAX_ATTEMPTS).contains(&retry.max_attempts));
                    prop_assert!(retry.base_delay_seconds <= MAX_BASE_DELAY_SECONDS);
                }
                // Every step of an accepted DAG gets a wave.
                let planned: usize = waves(input.steps.iter().map(|s| (s.name.as_str(), s.depends_on.as_slice())))
                    .iter()
                    .map(Vec::len)
                    .sum();
                prop_assert_eq!(planned, input.steps.len());
            }
            Err(err) => {
                let fields = validation_fields(&err);
                prop_assert!(fields.is_some_and(|f| !f.is_empty()), "not a validation error: {:?}", err);
            }
        }
        // The other bodies fail with validation errors only, never a panic.
        for err in [
            TaskPatch::parse(&body).err(),
            AssignInput::parse(&body).err(),
            CompleteInput::parse(&body).err(),
            AttachmentInput::parse(&body).err(),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert!(validation_fields(&err).is_some(), "not a validation error: {:?}", err);
        }
        let _ = StepConfig::parse(&body);
        if let Ok(retry) = RetryPolicy::parse(&body) {
            prop_assert!((1..=MAX_ATTEMPTS).contains(&retry.max_attempts));
        }
    }

    #[test]
    fn every_dag_is_accepted_and_its_waves_respect_dependencies(dag in dag(1..=25)) {
        let input = NewTaskInput::parse(&dag.body());
        prop_assert!(input.is_ok(), "a DAG was refused: {:?}", input.err());
        let input = input.unwrap();
        prop_assert_eq!(input.steps.len(), dag.names.len());

        let planned = waves(input.steps.iter().map(|s| (s.name.as_str(), s.depends_on.as_slice())));
        let mut wave_of: HashMap<&str, usize> = HashMap::new();
        for (n, wave) in planned.iter().enumerate() {
            prop_assert!(!wave.is_empty());
            prop_assert!(wave.windows(2).all(|w| w[0] < w[1]), "a wave is sorted: {:?}", wave);
            for name in wave {
                prop_assert!(wave_of.insert(name.as_str(), n).is_none(), "{} planned twice", name);
            }
        }
        prop_assert_eq!(wave_of.len(), dag.names.len(), "every step is planned");
        for (i, deps) in dag.deps.iter().enumerate() {
            let wave = wave_of[dag.names[i].as_str()];
            let earliest = deps
                .iter()
                .map(|&j| wave_of[dag.names[j].as_str()] + 1)
                .max()
                .unwrap_or(0);
            // After all of its dependencies, and no later than it has to be.
            prop_assert_eq!(wave, earliest, "step {} with deps {:?}", &dag.names[i], deps);
        }
    }

    #[test]
    fn a_back_edge_closing_a_cycle_is_refused_naming_the_cycle(mut dag in dag(2..=25), pick in any::<Index>()) {
        // (a, b): b depends on a, directly or not. Make sure there is one.
        let mut pairs: Vec<(usize, usize)> = (0..dag.names.len())
            .flat_map(|a| dag.dependents(a).into_iter().map(move |b| (a, b)))
            .collect();
        if pairs.is_empty() {
            dag.deps[1].push(0);
            pairs.push((0, 1));
        }
        let (a, b) = pairs[pick.index(pairs.len())];
        let expected_stuck: BTreeSet<String> = std::iter::once(a)
            .chain(dag.dependents(a))
            .map(|i| dag.names[i].clone())
            .collect();
        dag.deps[a].push(b);

        let err = NewTaskInput::parse(&dag.body()).expect_err("a cycle must be refused");
        let fields = validation_fields(&err).expect("a validation error");
        prop_assert_eq!(fields.keys().collect::<Vec<_>>(), vec!["steps"], "{:?}", fields);
        let message = &fields["steps"];
        prop_assert!(message.contains("cycle"), "{}", message);
        let listed: BTreeSet<String> = message
            .split_once("among: ")
            .map(|(_, names)| names.split(", ").map(str::to_owned).collect())
            .unwrap_or_default();
        prop_assert!(listed.contains(&dag.names[a]) && listed.contains(&dag.names[b]), "{}", message);
        // Exactly the steps that can never start: the cycle and everything after it.
        prop_assert_eq!(listed, expected_stuck);
    }

    #[test]
    fn a_self_dependency_is_refused_on_that_step(mut dag in dag(1..=10), pick in any::<Index>()) {
        let i = pick.index(dag.names.len());
        dag.deps[i].push(i);
        let position = dag.order.iter().position(|&x| x == i).unwrap();
        let err = NewTaskInput::parse(&dag.body()).expect_err("a self-dependency must be refused");
        let fields = validation_fields(&err).expect("a validation error");
        let field = format!("steps[{position}].dependsOn");
        prop_assert!(fields.contains_key(&field), "{:?}", fields);
    }

    #[test]
    fn batch_parsers_never_panic_on_any_bytes(
        bytes in prop_oneof![vec(any::<u8>(), 0..512), structured_bytes()],
        format in formats(),
    ) {
        match parse_items(&bytes, format) {
            Ok(items) => prop_assert!(!items.is_empty() && items.len() <= MAX_ITEMS),
            Err(problem) => prop_assert!(!problem.is_empty()),
        }
    }

    #[test]
    fn batch_parsers_never_panic_on_damaged_files(
        items in vec(small_json(), 1..8),
        format in formats(),
        edits in edits(),
    ) {
        let file = valid_file(format, &items);
        match parse_items(&apply(file, &edits), format) {
            Ok(parsed) => prop_assert!(!parsed.is_empty() && parsed.len() <= MAX_ITEMS),
            Err(problem) => {
                prop_assert!(!edits.is_empty(), "an undamaged file was refused: {}", problem);
                prop_assert!(!problem.is_empty());
            }
        }
    }

    #[test]
    fn json_arrays_and_lines_give_back_exactly_their_elements(items in vec(small_json(), 0..20), pretty in any::<bool>()) {
        let array = if pretty {
            serde_json::to_string_pretty(&items).unwrap()
        } else {
            serde_json::to_string(&items).unwrap()
        };
        let lines: Vec<String> = items.iter().map(|v| serde_json::to_string(v).unwrap()).collect();
        let lines = lines.join("\n");
        if items.is_empty() {
            prop_assert!(parse_items(array.as_bytes(), InputFormat::Json).is_err());
            prop_assert!(parse_items(lines.as_bytes(), InputFormat::JsonLines).is_err());
        } else {
            prop_assert_eq!(parse_items(array.as_bytes(), InputFormat::Json), Ok(items.clone()));
            prop_assert_eq!(parse_items(lines.as_bytes(), InputFormat::JsonLines), Ok(items));
        }
    }

    #[test]
    fn csv_rows_become_objects_of_their_fields(
        (headers, rows) in btree_set("[a-z]{1,6}", 1..5).prop_flat_map(|headers| {
            let width = headers.len();
            (Just(headers), vec(vec(text(10), width), 1..10))
        }),
        crlf in any::<bool>(),
    ) {
        let headers: Vec<String> = headers.into_iter().collect();
        let newline = if crlf { "\r\n" } else { "\n" };
        let mut file = headers.join(",");
        for row in &rows {
            file.push_str(newline);
            file.push_str(&row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        }
        let expected: Vec<Value> = rows
            .iter()
            .map(|row| Value::Object(headers.iter().cloned().zip(row.iter().map(|f| Value::from(f.as_str()))).collect()))
            .collect();
        prop_assert_eq!(parse_items(file.as_bytes(), InputFormat::Csv), Ok(expected));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused(levels in vec(any::<bool>(), 1..200)) {
        let depth = levels.len();
        // JSON: the top level is the array of items.
        let mut as_array = levels.clone();
        as_array[0] = true;
        let result = parse_items(nested(&as_array).as_bytes(), InputFormat::Json);
        if depth <= MAX_DEPTH + 1 {
            prop_assert!(result.is_ok(), "depth {}: {:?}", depth, result);
        } else {
            prop_assert!(result.unwrap_err().contains("deeper"), "depth {}", depth);
        }
        // JSON Lines: one item per line.
        let result = parse_items(nested(&levels).as_bytes(), InputFormat::JsonLines);
        if depth <= MAX_DEPTH + 1 {
            prop_assert_eq!(result.map(|items| items.len()), Ok(1), "depth {}", depth);
        } else {
            prop_assert!(result.unwrap_err().contains("deeper"), "depth {}", depth);
        }
    }

    #[test]
    fn retry_policy_parse_bounds(max_attempts in 0u32..=12, base in 0u32..=1000) {
        let parsed = RetryPolicy::parse(&json!({"maxAttempts": max_attempts, "baseDelaySeconds": base}));
        let expected_ok = (1..=MAX_ATTEMPTS).contains(&max_attempts) && base <= MAX_BASE_DELAY_SECONDS;
        prop_assert_eq!(parsed.is_ok(), expected_ok);
    }

    #[test]
    fn backoff_never_exceeds_the_cap_and_grows_with_its_ceiling(
        base in prop_oneof![0u32..=MAX_BASE_DELAY_SECONDS, any::<u32>()],
        attempt in prop_oneof![0u32..=30, any::<u32>()],
        unit in prop_oneof![4 => 0.0f64..1.0, 1 => proptest::num::f64::ANY],
        other_unit in 0.0f64..1.0,
    ) {
        let policy = |base_delay_seconds| RetryPolicy { max_attempts: 5, base_delay_seconds };
        let delay = policy(base).backoff(attempt, unit);
        prop_assert!(delay <= MAX_BACKOFF);
        // The ceiling grows with the attempt and with the base; the delay follows it.
        prop_assert!(delay <= policy(base).backoff(attempt.saturating_add(1), unit));
        prop_assert!(delay <= policy(base.saturating_add(1)).backoff(attempt, unit));
        // Full jitter: a larger draw never waits less, and a zero draw waits not at all.
        let (low, high) = if other_unit <= unit { (other_unit, unit) } else { (unit, other_unit) };
        prop_assert!(policy(base).backoff(attempt, low) <= policy(base).backoff(attempt, high));
        prop_assert_eq!(policy(base).backoff(attempt, 0.0), Duration::ZERO);
        prop_assert_eq!(policy(base).backoff(attempt, f64::NAN), Duration::ZERO);
        // A draw of 1 gives the ceiling itself: base × 2^(attempt − 2), capped.
        let exponent = attempt.saturating_sub(2).min(20);
        let ceiling = Duration::from_secs(u64::from(base) << exponent).min(MAX_BACKOFF);
        prop_assert_eq!(policy(base).backoff(attempt, 1.0), ceiling);
    }
}
