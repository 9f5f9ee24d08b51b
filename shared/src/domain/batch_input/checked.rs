//! A reader that checks an input file while it streams past: its size, its UTF-8, a leading
//! byte-order mark, and (for JSON) how deep it nests. The parsers read through it, so a bad
//! file fails with the same message however it is read, whole or from S3 in pieces.

use super::{MAX_DEPTH, MAX_INPUT_BYTES};
use std::io::{self, Read};

/// A problem with the file itself, carried through `io::Error` to the parser that read it.
#[derive(Debug)]
pub(super) struct InputProblem(pub String);

impl std::fmt::Display for InputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputProblem {}

/// The message of a reader error: the problem the checks found, or the I/O error itself.
pub(super) fn problem_of(err: &io::Error) -> String {
    match err.get_ref().and_then(|e| e.downcast_ref::<InputProblem>()) {
        Some(problem) => problem.0.clone(),
        None => format!("reading the file failed: {err}"),
    }
}

fn fail(problem: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, InputProblem(problem))
}

pub(super) struct CheckedReader<R> {
    inner: R,
    /// Bytes handed out so far, the byte-order mark excluded.
    offset: u64,
    /// Whether the first bytes were looked at for a byte-order mark.
    started: bool,
    /// Bytes read ahead while looking for the mark, not yet handed out.
    lookahead: Vec<u8>,
    /// The start of a UTF-8 sequence split across two reads.
    partial: Vec<u8>,
    /// Nesting of JSON arrays and objects, when checked.
    json: Option<JsonDepth>,
}

#[derive(Default)]
struct JsonDepth {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl<R: Read> CheckedReader<R> {
    /// `json_depth`: refuse JSON nested deeper than [`MAX_DEPTH`] (plus the outer array).
    pub(super) fn new(inner: R, json_depth: bool) -> Self {
        Self {
            inner,
            offset: 0,
            started: false,
            lookahead: Vec::new(),
            partial: Vec::new(),
            json: json_depth.then(JsonDepth::default),
        }
    }

    /// Reads the first three bytes (or fewer, at the end) and drops a UTF-8 byte-order mark.
    fn start(&mut self) -> io::Result<()> {
        self.started = true;
        let mut head = [0u8; 3];
        let mut filled = 0;
        while filled < head.len() {
            match self.inner.read(&mut head[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if head[..filled] != [0xEF, 0xBB, 0xBF] {
            self.lookahead.extend_from_slice(&head[..filled]);
        }
        Ok(())
    }

    fn check(&mut self, bytes: &[u8]) -> io::Result<()> {
        let start = self.offset - self.partial.len() as u64;
        let mut text = std::mem::take(&mut self.partial);
        text.extend_from_slice(bytes);
        if let Err(e) = std::str::from_utf8(&text) {
            match e.error_len() {
                // A sequence cut by the read: its rest comes next time.
                None if text.len() - e.valid_up_to() < 4 && !bytes.is_empty() => {
                    self.partial = text[e.valid_up_to()..].to_vec();
                }
                _ => {
                    return Err(fail(format!(
                        "the file is not valid UTF-8 (first bad byte at offset {})",
                        start + e.valid_up_to() as u64
                    )))
                }
            }
        }
        if let Some(json) = &mut self.json {
            for &byte in bytes {
                if json.in_string {
                    match (json.escaped, byte) {
                        (true, _) => json.escaped = false,
                        (false, b'\\') => json.escaped = true,
                        (false, b'"') => json.in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match byte {
                    b'"' => json.in_string = true,
                    b'[' | b'{' => {
                        json.depth += 1;
                        if json.depth > MAX_DEPTH + 1 {
                            return Err(fail(format!("JSON nests deeper than {MAX_DEPTH} levels")));
                        }
                    }
                    b']' | b'}' => json.depth = json.depth.saturating_sub(1),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for CheckedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.started {
            self.start()?;
        }
        let n = if self.lookahead.is_empty() {
            self.inner.read(buf)?
        } else {
            let n = self.lookahead.len().min(buf.len());
            buf[..n].copy_from_slice(&self.lookahead[..n]);
            self.lookahead.drain(..n);
            n
        };
        if n == 0 && !self.partial.is_empty() {
            // The file ends inside a sequence.
            self.check(&[])?;
        }
        self.check(&buf[..n])?;
        self.offset += n as u64;
        if self.offset > MAX_INPUT_BYTES as u64 {
            return Err(fail(format!(
                "the file is more than {MAX_INPUT_BYTES} bytes, the limit"
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, the worst case for sequences split across reads.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.is_empty()) {
                (Some((first, rest)), false) => {
                    buf[0] = *first;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    fn read_all(bytes: &[u8], json: bool) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        CheckedReader::new(Trickle(bytes), json)
            .read_to_end(&mut out)
            .map_err(|e| problem_of(&e))?;
        Ok(out)
    }

    #[test]
    fn multibyte_text_split_across_reads_passes_and_the_mark_is_dropped() {
        let text = "\u{feff}[\"naïve — 日本 🎉\"]";
        assert_eq!(
            read_all(text.as_bytes(), true).unwrap(),
            "[\"naïve — 日本 🎉\"]".as_bytes()
        );
    }

    #[test]
    fn bad_utf8_names_its_offset_even_at_the_very_end() {
        assert_eq!(
            read_all(b"ab\xffcd", false).unwrap_err(),
            "the file is not valid UTF-8 (first bad byte at offset 2)"
        );
        // The first two bytes of a three-byte sequence, then the end of the file.
        assert_eq!(
            read_all(b"abc\xe6\x97", false).unwrap_err(),
            "the file is not valid UTF-8 (first bad byte at offset 3)"
        );
    }

    #[test]
    fn depth_counts_outside_strings_only() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 2), "]".repeat(MAX_DEPTH + 2));
        assert!(read_all(deep.as_bytes(), true)
            .unwrap_err()
            .contains("deeper"));
        assert!(read_all(deep.as_bytes(), false).is_ok());
        let quoted = format!("[\"{}\"]", "[".repeat(100));
        assert!(read_all(quoted.as_bytes(), true).is_ok());
    }
}
