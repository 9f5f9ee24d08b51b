//! Batch inputs in JSON (an array), JSON Lines and CSV, normalized into one
//! list of JSON items. Every problem is reported with where it is, so a
//! malformed file fails its batch clearly before anything runs.

use serde_json::{Map, Value};

/// Largest input file a batch accepts.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;
pub const MAX_ITEMS: usize = 1_000_000;
/// Largest single item (a JSONL line, a CSV row, an array element), serialized.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;
/// JSON nested deeper than this is refused (it could exhaust a parser's stack).
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Json,
    JsonLines,
    Csv,
}

impl InputFormat {
    /// From a file name's extension.
    pub fn from_name(name: &str) -> Option<InputFormat> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            Some(InputFormat::Json)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(InputFormat::JsonLines)
        } else if lower.ends_with(".csv") {
            Some(InputFormat::Csv)
        } else {
            None
        }
    }
}

/// Parses a whole input file into items.
pub fn parse_items(bytes: &[u8], format: InputFormat) -> Result<Vec<Value>, String> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "the file is {} bytes; the limit is {MAX_INPUT_BYTES}",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not valid UTF-8 (first bad byte at offset {})",
            e.valid_up_to()
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let items = match format {
        InputFormat::Json => parse_json_array(text)?,
        InputFormat::JsonLines => parse_json_lines(text)?,
        InputFormat::Csv => parse_csv(text)?,
    };
    if items.is_empty() {
        return Err("the file holds no items".into());
    }
    if items.len() > MAX_ITEMS {
        return Err(format!(
            "the file holds {} items; the limit is {MAX_ITEMS}",
            items.len()
        ));
    }
    Ok(items)
}

fn depth_ok(text: &str) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth > MAX_DEPTH + 1 {
                    return false;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

fn parse_json_array(text: &str) -> Result<Vec<Value>, String> {
    if !depth_ok(text) {
        return Err(format!("JSON nests deeper than {MAX_DEPTH} levels"));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_item_size(item).map_err(|e| format!("item {i}: {e}"))?;
            }
            Ok(items)
        }
        Ok(_) => Err("a .json batch file must hold a JSON array of items".into()),
        Err(e) => Err(format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        )),
    }
}

fn parse_json_lines(text: &str) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_ITEM_BYTES {
            return Err(format!(
                "line {}: {} bytes; an item may have at most {MAX_ITEM_BYTES}",
                n + 1,
                line.len()
            ));
        }
        if !depth_ok(line) {
            return Err(format!(
                "line {}: JSON nests deeper than {MAX_DEPTH} levels",
                n + 1
            ));
        }
        let item =
            serde_json::from_str(line).map_err(|e| format!("line {}: invalid JSON: {e}", n + 1))?;
        items.push(item);
        if items.len() > MAX_ITEMS {
            return Err(format!("more than {MAX_ITEMS} items"));
        }
    }
    Ok(items)
}

/// CSV with a header row; each row becomes an object of strings.
fn parse_csv(text: &str) -> Result<Vec<Value>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("CSV header: {e}"))?
        .iter()
        .map(str::to_owned)
        .collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err("CSV needs a header row naming the columns".into());
    }
    let mut items = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => {
                format!(
                    "row {}: {len} fields, but the header has {expected_len}",
                    n + 2
                )
            }
            _ => format!("row {}: {e}", n + 2),
        })?;
        let object: Map<String, Value> = headers
            .iter()
            .cloned()
            .zip(record.iter().map(|f| Value::String(f.to_owned())))
            .collect();
        let item = Value::Object(object);
        check_item_size(&item).map_err(|e| format!("row {}: {e}", n + 2))?;
        items.push(item);
        if items.len() > MAX_ITEMS {
            return Err(format!("more than {MAX_ITEMS} items"));
        }
    }
    Ok(items)
}

fn check_item_size(item: &Value) -> Result<(), String> {
    let size = serde_json::to_vec(item)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_ITEM_BYTES {
        Err(format!(
            "{size} bytes; an item may have at most {MAX_ITEM_BYTES}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_three_formats_normalize_to_the_same_items() {
        let json = parse_items(
            br#"[{"sku": "a", "qty": "1"}, {"sku": "b", "qty": "2"}]"#,
            InputFormat::Json,
        )
        .unwrap();
        let jsonl = parse_items(
            b"{\"sku\": \"a\", \"qty\": \"1\"}\n\n{\"sku\": \"b\", \"qty\": \"2\"}\n",
            InputFormat::JsonLines,
        )
        .unwrap();
        let csv = parse_items(b"sku,qty\na,1\nb,2\n", InputFormat::Csv).unwrap();
        assert_eq!(
            json,
            vec![
                json!({"sku": "a", "qty": "1"}),
                json!({"sku": "b", "qty": "2"})
            ]
        );
        assert_eq!(json, jsonl);
        assert_eq!(json, csv);
    }

    #[test]
    fn hostile_inputs_fail_with_where_and_why() {
        assert!(parse_items(b"[1, 2", InputFormat::Json)
            .unwrap_err()
            .contains("invalid JSON at line 1"));
        assert!(parse_items(b"{\"a\": 1}", InputFormat::Json)
            .unwrap_err()
            .contains("JSON array"));
        assert_eq!(
            parse_items(b"{}\nnot json\n", InputFormat::JsonLines)
                .unwrap_err()
                .split(':')
                .next(),
            Some("line 2")
        );
        assert_eq!(
            parse_items(b"a,b\n1,2\n3\n", InputFormat::Csv).unwrap_err(),
            "row 3: 1 fields, but the header has 2"
        );
        assert!(parse_items(&[b'[', 0xff, b']'], InputFormat::Json)
            .unwrap_err()
            .contains("UTF-8"));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_items(deep.as_bytes(), InputFormat::Json)
            .unwrap_err()
            .contains("deeper"));
        let huge = format!("{{\"x\": \"{}\"}}\n", "y".repeat(MAX_ITEM_BYTES));
        assert!(parse_items(huge.as_bytes(), InputFormat::JsonLines)
            .unwrap_err()
            .starts_with("line 1"));
        assert_eq!(
            parse_items(b"[]", InputFormat::Json).unwrap_err(),
            "the file holds no items"
        );
    }

    #[test]
    fn formats_come_from_extensions() {
        assert_eq!(InputFormat::from_name("orders.CSV"), Some(InputFormat::Csv));
        assert_eq!(
            InputFormat::from_name("a.jsonl"),
            Some(InputFormat::JsonLines)
        );
        assert_eq!(InputFormat::from_name("a.xml"), None);
    }
}
