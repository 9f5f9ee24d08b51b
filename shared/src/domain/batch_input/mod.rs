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

mod checked;

use checked::{problem_of, CheckedReader};
use std::io::{BufRead, BufReader, Read};

/// Parses a whole input file into items.
pub fn parse_items(bytes: &[u8], format: InputFormat) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    read_items(bytes, format, |item| {
        items.push(item);
        true
    })?;
    Ok(items)
}

/// Reads an input file item by item, as it streams in, handing each item to `on_item` in file
/// order; `on_item` answers false to stop early. Answers how many items were handed over.
/// Memory stays at one item (plus the reader's buffer) whatever the file's size, and every
/// problem names where it is, as [`parse_items`] does for a whole file.
pub fn read_items(
    reader: impl Read,
    format: InputFormat,
    mut on_item: impl FnMut(Value) -> bool,
) -> Result<u64, String> {
    let mut count = 0u64;
    let mut stopped = false;
    let mut accept = |item: Value| -> Result<bool, String> {
        count += 1;
        if count > MAX_ITEMS as u64 {
            return Err(format!(
                "the file holds more than {MAX_ITEMS} items, the limit"
            ));
        }
        stopped = !on_item(item);
        Ok(!stopped)
    };
    let reader = CheckedReader::new(reader, format == InputFormat::Json);
    match format {
        InputFormat::Json => read_json_array(reader, &mut accept),
        InputFormat::JsonLines => read_json_lines(reader, &mut accept),
        InputFormat::Csv => read_csv(reader, &mut accept),
    }?;
    if count == 0 {
        return Err("the file holds no items".into());
    }
    Ok(count)
}

/// What a format reader hands each item to: `Ok(false)` stops the read.
type Accept<'a> = dyn FnMut(Value) -> Result<bool, String> + 'a;

fn read_json_array(reader: impl Read, accept: &mut Accept<'_>) -> Result<(), String> {
    struct Items<'a, 'b> {
        accept: &'a mut Accept<'b>,
        /// A problem of an item (too big, too many), reported instead of serde's wrapper.
        problem: Option<String>,
        stopped: bool,
    }
    impl<'de> serde::de::Visitor<'de> for &mut Items<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of items")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let mut index = 0usize;
            while let Some(item) = seq.next_element::<Value>()? {
                if let Err(e) = check_item_size(&item) {
                    self.problem = Some(format!("item {index}: {e}"));
                    return Err(serde::de::Error::custom("item refused"));
                }
                match (self.accept)(item) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.stopped = true;
                        return Err(serde::de::Error::custom("stopped"));
                    }
                    Err(problem) => {
                        self.problem = Some(problem);
                        return Err(serde::de::Error::custom("item refused"));
                    }
                }
                index += 1;
            }
            Ok(())
        }
    }
    let mut items = Items {
        accept,
        problem: None,
        stopped: false,
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let result = serde::Deserializer::deserialize_seq(&mut de, &mut items).and_then(|()| de.end());
    match result {
        Ok(()) => Ok(()),
        Err(_) if items.stopped => Ok(()),
        Err(_) if items.problem.is_some() => Err(items.problem.unwrap_or_default()),
        Err(e) if e.is_io() => Err(std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(problem_of)
            .unwrap_or_else(|| e.to_string())),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err("a .json batch file must hold a JSON array of items".into())
        }
        Err(e) => Err(format!(
            "invalid JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        )),
    }
}

fn read_json_lines(reader: impl Read, accept: &mut Accept<'_>) -> Result<(), String> {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    for n in 1.. {
        line.clear();
        // At most one byte over the limit is read, enough to tell the line is too long.
        let read = (&mut reader)
            .take(MAX_ITEM_BYTES as u64 + 2)
            .read_until(b'\n', &mut line)
            .map_err(|e| problem_of(&e))?;
        if read == 0 {
            return Ok(());
        }
        let text = std::str::from_utf8(&line).map_err(|e| format!("line {n}: {e}"))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if text.len() > MAX_ITEM_BYTES {
            return Err(format!(
                "line {n}: more than {MAX_ITEM_BYTES} bytes; an item may have at most {MAX_ITEM_BYTES}"
            ));
        }
        if !depth_ok(text) {
            return Err(format!(
                "line {n}: JSON nests deeper than {MAX_DEPTH} levels"
            ));
        }
        let item =
            serde_json::from_str(text).map_err(|e| format!("line {n}: invalid JSON: {e}"))?;
        if !accept(item)? {
            return Ok(());
        }
    }
    Ok(())
}

/// CSV with a header row; each row becomes an object of strings.
fn read_csv(reader: impl Read, accept: &mut Accept<'_>) -> Result<(), String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let csv_problem = |e: csv::Error, row: Option<u64>| match (e.kind(), row) {
        (csv::ErrorKind::Io(io), _) => problem_of(io),
        (
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            },
            _,
        ) => format!(
            "row {}: {len} fields, but the header has {expected_len}",
            row.unwrap_or(0)
        ),
        (_, Some(row)) => format!("row {row}: {e}"),
        (_, None) => format!("CSV header: {e}"),
    };
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| csv_problem(e, None))?
        .iter()
        .map(str::to_owned)
        .collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err("CSV needs a header row naming the columns".into());
    }
    let mut record = csv::StringRecord::new();
    for row in 2u64.. {
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => return Err(csv_problem(e, Some(row))),
        }
        let object: Map<String, Value> = headers
            .iter()
            .cloned()
            .zip(record.iter().map(|f| Value::String(f.to_owned())))
            .collect();
        let item = Value::Object(object);
        check_item_size(&item).map_err(|e| format!("row {row}: {e}"))?;
        if !accept(item)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether a JSON text nests at most [`MAX_DEPTH`] levels (plus one), counted outside strings.
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

    /// Hands out at most three bytes per read, as a network stream may.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_file_read_in_pieces_gives_the_same_items_and_can_stop_early() {
        let inputs: [(&[u8], InputFormat); 3] = [
            (
                "[{\"n\": \"é1\"}, {\"n\": \"é2\"}, {\"n\": \"é3\"}]".as_bytes(),
                InputFormat::Json,
            ),
            (
                "{\"n\": \"é1\"}\n{\"n\": \"é2\"}\n{\"n\": \"é3\"}".as_bytes(),
                InputFormat::JsonLines,
            ),
            ("n\né1\né2\né3\n".as_bytes(), InputFormat::Csv),
        ];
        for (bytes, format) in inputs {
            let whole = parse_items(bytes, format).unwrap();
            assert_eq!(whole.len(), 3, "{format:?}");
            let mut streamed = Vec::new();
            let count = read_items(Dribble(bytes), format, |item| {
                streamed.push(item);
                true
            })
            .unwrap();
            assert_eq!((count, &streamed), (3, &whole), "{format:?}");
            let mut first_two = Vec::new();
            read_items(Dribble(bytes), format, |item| {
                first_two.push(item);
                first_two.len() < 2
            })
            .unwrap();
            assert_eq!(first_two, whole[..2], "{format:?}");
        }
    }

    #[test]
    fn too_many_items_stop_the_read_at_the_limit() {
        let mut handed = 0u64;
        let lines = std::iter::repeat_n(&b"1\n"[..], MAX_ITEMS + 5)
            .flatten()
            .copied();
        let file: Vec<u8> = lines.collect();
        let err = read_items(&file[..], InputFormat::JsonLines, |_| {
            handed += 1;
            true
        })
        .unwrap_err();
        assert_eq!(
            err,
            format!("the file holds more than {MAX_ITEMS} items, the limit")
        );
        assert_eq!(handed, MAX_ITEMS as u64);
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
