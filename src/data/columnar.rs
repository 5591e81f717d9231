//! Parquet and Arrow IPC readers (HF `save_to_disk` shards are Arrow IPC *stream* files).
//! Record batches are read one at a time and turned into rows with `arrow_json::value_at`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

use super::arrow_json::value_at;
use super::error::DataError;
use super::row::{Fields, FileRows, Location, Pos, Row};

const BATCH_ROWS: usize = 1024;

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>>>;

/// Runs a third-party reader call; a panic in it (arrow and parquet panic on some corrupt
/// files) becomes a format error for `path`.
fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, DataError>,
) -> Result<T, DataError> {
    crate::util::catch_panic(f).unwrap_or_else(|msg| {
        Err(DataError::format(
            path,
            format!("{what}: corrupt file ({msg})"),
        ))
    })
}

pub fn open_parquet(path: &Path) -> Result<FileRows, DataError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let perr = |e: parquet::errors::ParquetError| DataError::format(path, format!("parquet: {e}"));
    guarded(path, "parquet", || {
        let builder = ParquetRecordBatchReaderBuilder::try_new(f).map_err(perr)?;
        let schema = builder.schema().clone();
        let reader = builder.with_batch_size(BATCH_ROWS).build().map_err(perr)?;
        Ok(batch_rows(path, schema, Box::new(reader)))
    })
}

/// The column names of a Parquet file (reads only the footer).
pub fn parquet_columns(path: &Path) -> Result<Vec<String>, DataError> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    guarded(path, "parquet", || {
        let builder = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| DataError::format(path, format!("parquet: {e}")))?;
        Ok(names(builder.schema()))
    })
}

/// Opens an Arrow IPC file, stream format or file format (`ARROW1` magic).
pub fn open_arrow(path: &Path) -> Result<FileRows, DataError> {
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut magic = [0u8; 6];
    let is_file_format = f.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    let f = File::open(path).map_err(|e| DataError::io(path, e))?;
    guarded(path, "arrow", || open_arrow_reader(path, f, is_file_format))
}

fn open_arrow_reader(path: &Path, f: File, is_file_format: bool) -> Result<FileRows, DataError> {
    let aerr = |e: ArrowError| DataError::format(path, format!("arrow: {e}"));
    if is_file_format {
        let r = arrow_ipc::reader::FileReader::try_new(BufReader::new(f), None).map_err(aerr)?;
        let schema = r.schema();
        Ok(batch_rows(path, schema, Box::new(r)))
    } else {
        let r = arrow_ipc::reader::StreamReader::try_new(BufReader::new(f), None).map_err(aerr)?;
        let schema = r.schema();
        Ok(batch_rows(path, schema, Box::new(r)))
    }
}

fn names(schema: &SchemaRef) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

fn batch_rows(path: &Path, schema: SchemaRef, batches: Batches) -> FileRows {
    let file: Arc<str> = path.display().to_string().into();
    let columns = names(&schema);
    FileRows {
        file: file.clone(),
        columns: Some(columns.clone()),
        rows: Box::new(BatchRows {
            file,
            path: path.to_path_buf(),
            columns,
            batches,
            cur: None,
            pos: 0,
            row: 0,
            done: false,
        }),
    }
}

struct BatchRows {
    file: Arc<str>,
    path: PathBuf,
    columns: Vec<String>,
    batches: Batches,
    cur: Option<RecordBatch>,
    /// Next row inside `cur`.
    pos: usize,
    /// Next row index in the file.
    row: u64,
    /// A broken batch was reported: the file ends there.
    done: bool,
}

impl Iterator for BatchRows {
    type Item = Result<Row, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = &self.cur {
                if self.pos < b.num_rows() {
                    let loc = Location {
                        file: self.file.clone(),
                        pos: Pos::Index(self.row),
                    };
                    let mut fields = Fields::new();
                    for (name, col) in self.columns.iter().zip(b.columns()) {
                        let at = crate::util::catch_panic(|| value_at(col.as_ref(), self.pos));
                        match at.unwrap_or_else(|p| Err(format!("corrupt file ({p})"))) {
                            Ok(v) => {
                                fields.insert(name.clone(), v);
                            }
                            Err(msg) => {
                                self.pos += 1;
                                self.row += 1;
                                return Some(Err(DataError::row(
                                    loc,
                                    format!("column '{name}': {msg}"),
                                )));
                            }
                        }
                    }
                    self.pos += 1;
                    self.row += 1;
                    return Some(Ok(Row { loc, fields }));
                }
            }
            if self.done {
                return None;
            }
            let next = crate::util::catch_panic(|| self.batches.next());
            let next = next
                .unwrap_or_else(|p| Some(Err(ArrowError::IpcError(format!("corrupt file ({p})")))));
            match next? {
                Ok(b) => {
                    self.cur = Some(b);
                    self.pos = 0;
                }
                Err(e) => {
                    // A broken batch ends the file: later rows cannot be located.
                    self.cur = None;
                    self.done = true;
                    return Some(Err(DataError::format(&self.path, format!("arrow: {e}"))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{collect, fixture};

    #[test]
    fn parquet_values() {
        let p = fixture("advertise.parquet");
        let f = p.display().to_string();
        let fr = open_parquet(&p).unwrap();
        assert_eq!(
            fr.columns.clone().unwrap(),
            ["content", "summary", "id", "weight", "ids", "meta"]
        );
        assert_eq!(parquet_columns(&p).unwrap(), fr.columns.clone().unwrap());
        let rows: Vec<_> = collect(fr).into_iter().map(Result::unwrap).collect();
        assert_eq!(
            rows,
            vec![
                (format!("{f}#0"), r#"{"content":"类型#裤*版型#宽松","summary":"宽松的阔腿裤这两年真的吸粉不少。","id":1,"weight":0.1,"ids":[1,2],"meta":{"k":"x","v":1}}"#.to_string()),
                (format!("{f}#1"), r#"{"content":"类型#裙*颜色#红色","summary":"红色的连衣裙很显气质。","id":2,"weight":2.5,"ids":[],"meta":{"k":"y","v":null}}"#.to_string()),
                (format!("{f}#2"), r#"{"content":"类型#上衣*风格#简约","summary":null,"id":3,"weight":-1.0,"ids":null,"meta":null}"#.to_string()),
            ]
        );
    }

    #[test]
    fn arrow_stream_conversations_and_scalars() {
        let p = fixture("conv_disk/data-00000-of-00001.arrow");
        let f = p.display().to_string();
        let rows: Vec<_> = collect(open_arrow(&p).unwrap())
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            rows,
            vec![
                (format!("{f}#0"), r#"{"conversations":[{"role":"user","content":"类型#上衣*材质#牛仔布*颜色#白色"},{"role":"assistant","content":"简约而不简单的牛仔外套，白色的衣身十分百搭。"}],"score":0.5,"ok":true,"n":1,"tags":["a","b"],"note":null}"#.to_string()),
                (format!("{f}#1"), r#"{"conversations":[{"role":"system","content":"你是一个助手"},{"role":"user","content":"你好"},{"role":"assistant","content":"你好，有什么可以帮你？"}],"score":1.25,"ok":false,"n":-3,"tags":[],"note":"第二"}"#.to_string()),
            ]
        );
    }

    #[test]
    fn broken_arrow_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::data::testutil::write(&dir, "x.arrow", b"not arrow at all");
        let e = open_arrow(&p).err().unwrap().to_string();
        assert!(e.starts_with(&format!("{}: arrow: ", p.display())), "{e}");
    }
}
