//! JSON reader: a top-level array of objects, or an object holding one under `"data"`.
//! The whole file is parsed at once (JSON arrays cannot be streamed line by line).

use std::path::Path;
use std::sync::Arc;

use super::error::DataError;
use super::row::{json_type_name, FileRows, Location, Pos, Row};

pub fn open(path: &Path) -> Result<FileRows, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text = bytes
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(&bytes);
    let value: serde_json::Value = serde_json::from_slice(text)
        .map_err(|e| DataError::format(path, format!("invalid JSON: {e}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut m) => match m.remove("data") {
            Some(serde_json::Value::Array(items)) => items,
            _ => {
                return Err(DataError::format(
                    path,
                    "expected a JSON array of objects (or an object with a \"data\" array)",
                ))
            }
        },
        v => {
            return Err(DataError::format(
                path,
                format!(
                    "expected a JSON array of objects, got {}",
                    json_type_name(&v)
                ),
            ))
        }
    };
    let file: Arc<str> = path.display().to_string().into();
    let f2 = file.clone();
    let rows = items.into_iter().enumerate().map(move |(i, v)| {
        let loc = Location {
            file: f2.clone(),
            pos: Pos::Index(i as u64),
        };
        match v {
            serde_json::Value::Object(fields) => Ok(Row { loc, fields }),
            v => Err(DataError::row(
                loc,
                format!("expected a JSON object, got {}", json_type_name(&v)),
            )),
        }
    });
    Ok(FileRows {
        file,
        columns: None,
        rows: Box::new(rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{collect, write};

    #[test]
    fn reads_arrays_and_data_objects() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "a.json",
            br#"[{"a": "x", "b": {"c": 1}}, 3, {"a": null}]"#,
        );
        let f = p.display().to_string();
        assert_eq!(
            collect(open(&p).unwrap()),
            vec![
                Ok((format!("{f}#0"), r#"{"a":"x","b":{"c":1}}"#.to_string())),
                Err(format!("{f}#1: expected a JSON object, got a number")),
                Ok((format!("{f}#2"), r#"{"a":null}"#.to_string())),
            ]
        );
        let p = write(
            &dir,
            "b.json",
            "{\"version\": 1, \"data\": [{\"问\": \"答\"}]}".as_bytes(),
        );
        let f = p.display().to_string();
        assert_eq!(
            collect(open(&p).unwrap()),
            vec![Ok((format!("{f}#0"), r#"{"问":"答"}"#.to_string()))]
        );
        let p = write(&dir, "c.json", b"\"text\"");
        assert_eq!(
            open(&p).err().unwrap().to_string(),
            format!(
                "{}: expected a JSON array of objects, got a string",
                p.display()
            )
        );
    }
}
