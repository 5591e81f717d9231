//! JSON Lines reader: one JSON object per line, streamed; blank lines are skipped.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use super::error::DataError;
use super::row::{json_type_name, FileRows, Location, Pos, Row};

pub fn open(path: &Path) -> Result<FileRows, DataError> {
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let file: Arc<str> = path.display().to_string().into();
    let rows = JsonlRows {
        file: file.clone(),
        path: path.to_path_buf(),
        rdr: BufReader::new(f),
        line: 0,
        buf: Vec::new(),
    };
    Ok(FileRows {
        file,
        columns: None,
        rows: Box::new(rows),
    })
}

struct JsonlRows {
    file: Arc<str>,
    path: std::path::PathBuf,
    rdr: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

/// Parses one line (without its newline) into an object; `Ok(None)` for a blank line.
pub fn parse_line(text: &[u8], loc: &Location) -> Result<Option<super::row::Fields>, DataError> {
    let text = text
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(text);
    if text.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(v) => Err(DataError::row(
            loc,
            format!("expected a JSON object, got {}", json_type_name(&v)),
        )),
        Err(e) => Err(DataError::row(
            loc,
            format!(
                "invalid JSON at column {}: {}",
                e.column(),
                strip_position(&e)
            ),
        )),
    }
}

/// serde_json's message without its " at line 1 column N" suffix (we print our own line).
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl Iterator for JsonlRows {
    type Item = Result<Row, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            match self.rdr.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(DataError::io(&self.path, e))),
            }
            self.line += 1;
            let mut text = self.buf.as_slice();
            while let Some((b'\n' | b'\r', rest)) = text.split_last() {
                text = rest;
            }
            let loc = Location {
                file: self.file.clone(),
                pos: Pos::Line(self.line),
            };
            match parse_line(text, &loc) {
                Ok(None) => continue,
                Ok(Some(fields)) => return Some(Ok(Row { loc, fields })),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{collect, write};

    #[test]
    fn reads_lines_skips_blanks_and_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "a.jsonl",
            "\u{feff}{\"instruction\": \"三原色是什么？\", \"n\": 1}\r\n\n  \n{\"x\": [1, 2.5, null]}\n{\"x\": oops}\n[1]\n{\"last\": true}"
                .as_bytes(),
        );
        let f = p.display().to_string();
        let rows = collect(open(&p).unwrap());
        assert_eq!(
            rows,
            vec![
                Ok((
                    format!("{f}:1"),
                    r#"{"instruction":"三原色是什么？","n":1}"#.to_string()
                )),
                Ok((format!("{f}:4"), r#"{"x":[1,2.5,null]}"#.to_string())),
                Err(format!("{f}:5: invalid JSON at column 7: expected value")),
                Err(format!("{f}:6: expected a JSON object, got an array")),
                Ok((format!("{f}:7"), r#"{"last":true}"#.to_string())),
            ]
        );
    }
}
