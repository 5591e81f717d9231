//! CSV reader: a header row, RFC 4180 quoting, a configurable delimiter, UTF-8 BOM stripped,
//! streamed record by record. Values are strings; empty cells become null when
//! `empty_as_null` (what pandas, and so `load_dataset("csv")`, does).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use super::error::DataError;
use super::row::{FileRows, Location, Pos, Row};

#[derive(Clone, Copy, Debug)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub empty_as_null: bool,
}

fn csv_err(path: &Path, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line());
    match (e.into_kind(), line) {
        (csv::ErrorKind::Io(io), _) => DataError::io(path, io),
        (kind, Some(l)) => DataError::row(format!("{}:{l}", path.display()), format!("{kind:?}")),
        (kind, None) => DataError::format(path, format!("{kind:?}")),
    }
}

/// Opens the file and reads its header row (no data rows are read yet).
pub fn open(path: &Path, opts: CsvOptions) -> Result<FileRows, DataError> {
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(opts.delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::new(f));
    let mut header = csv::ByteRecord::new();
    if !rdr
        .read_byte_record(&mut header)
        .map_err(|e| csv_err(path, e))?
    {
        return Err(DataError::format(path, "the CSV file has no header row"));
    }
    let mut columns = Vec::with_capacity(header.len());
    for (k, h) in header.iter().enumerate() {
        let h = if k == 0 {
            h.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(h)
        } else {
            h
        };
        let name = std::str::from_utf8(h).map_err(|_| {
            DataError::format(path, format!("header column {} is not valid UTF-8", k + 1))
        })?;
        // Rows are maps by column name: a second column of the same name would silently
        // replace the first.
        if let Some(first) = columns.iter().position(|c| c == name) {
            return Err(DataError::row(
                format!("{}:1", path.display()),
                format!(
                    "the header names column '{name}' twice (columns {} and {}): rename one",
                    first + 1,
                    k + 1
                ),
            ));
        }
        columns.push(name.to_string());
    }
    let file: Arc<str> = path.display().to_string().into();
    let rows = CsvRows {
        file: file.clone(),
        path: path.to_path_buf(),
        rdr,
        columns: columns.clone(),
        opts,
        rec: csv::ByteRecord::new(),
    };
    Ok(FileRows {
        file,
        columns: Some(columns),
        rows: Box::new(rows),
    })
}

struct CsvRows {
    file: Arc<str>,
    path: std::path::PathBuf,
    rdr: csv::Reader<BufReader<File>>,
    columns: Vec<String>,
    opts: CsvOptions,
    rec: csv::ByteRecord,
}

impl Iterator for CsvRows {
    type Item = Result<Row, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rdr.read_byte_record(&mut self.rec) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => return Some(Err(csv_err(&self.path, e))),
        }
        let line = self.rec.position().map_or(0, |p| p.line());
        let loc = Location {
            file: self.file.clone(),
            pos: Pos::Line(line),
        };
        if self.rec.len() != self.columns.len() {
            return Some(Err(DataError::row(
                loc,
                format!(
                    "expected {} fields (as in the header), found {}",
                    self.columns.len(),
                    self.rec.len()
                ),
            )));
        }
        let mut fields = super::row::Fields::new();
        for (name, cell) in self.columns.iter().zip(self.rec.iter()) {
            let value = match std::str::from_utf8(cell) {
                Err(_) => {
                    return Some(Err(DataError::row(
                        loc,
                        format!("column '{name}' is not valid UTF-8"),
                    )))
                }
                Ok("") if self.opts.empty_as_null => serde_json::Value::Null,
                Ok(s) => serde_json::Value::String(s.to_string()),
            };
            fields.insert(name.clone(), value);
        }
        Some(Ok(Row { loc, fields }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{collect, write};

    const OPTS: CsvOptions = CsvOptions {
        delimiter: b',',
        empty_as_null: true,
    };

    #[test]
    fn header_bom_quoting_nulls_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let text = "\u{feff}label,review\n1,\"距离川沙公路较近,但是公交指示不对\"\n0,\"say \"\"hi\"\"\nsecond line\"\n1,\n0,a,b\n1,好\n";
        let p = write(&dir, "c.csv", text.as_bytes());
        let f = p.display().to_string();
        let fr = open(&p, OPTS).unwrap();
        assert_eq!(
            fr.columns,
            Some(vec!["label".to_string(), "review".to_string()])
        );
        assert_eq!(
            collect(fr),
            vec![
                Ok((
                    format!("{f}:2"),
                    r#"{"label":"1","review":"距离川沙公路较近,但是公交指示不对"}"#.to_string()
                )),
                Ok((
                    format!("{f}:3"),
                    r#"{"label":"0","review":"say \"hi\"\nsecond line"}"#.to_string()
                )),
                Ok((
                    format!("{f}:5"),
                    r#"{"label":"1","review":null}"#.to_string()
                )),
                Err(format!(
                    "{f}:6: expected 2 fields (as in the header), found 3"
                )),
                Ok((
                    format!("{f}:7"),
                    r#"{"label":"1","review":"好"}"#.to_string()
                )),
            ]
        );
    }

    #[test]
    fn duplicate_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "d.csv", b"text,label,text\na,1,b\n");
        let e = open(&p, OPTS).err().expect("duplicate header");
        assert_eq!(
            e.to_string(),
            format!(
                "{}:1: the header names column 'text' twice (columns 1 and 3): rename one",
                p.display()
            )
        );
    }

    #[test]
    fn delimiter_and_empty_strings() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "c.tsv", b"a\tb\nx,y\t\n");
        let opts = CsvOptions {
            delimiter: b'\t',
            empty_as_null: false,
        };
        let f = p.display().to_string();
        assert_eq!(
            collect(open(&p, opts).unwrap()),
            vec![Ok((format!("{f}:2"), r#"{"a":"x,y","b":""}"#.to_string()))]
        );
        let p = write(&dir, "empty.csv", b"");
        assert_eq!(
            open(&p, OPTS).err().unwrap().to_string(),
            format!("{f2}: the CSV file has no header row", f2 = p.display())
        );
    }
}
