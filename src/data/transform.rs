//! Row transformations applied while streaming, in this order: rename columns, select columns,
//! drop rows where a listed column is null or missing (HF `filter(lambda x: x[c] is not None)`).
//! Limit, sample and split need the row count and happen in `load`.

use super::error::DataError;
use super::row::{Fields, Location, Row};

#[derive(Clone, Debug, Default)]
pub struct Transform {
    /// old name -> new name, applied all at once.
    pub rename: Vec<(String, String)>,
    pub select: Option<Vec<String>>,
    pub drop_null: Vec<String>,
}

/// Row error for a column a row lacks, naming the columns it has.
pub fn missing_in_row(loc: &Location, column: &str, fields: &Fields) -> DataError {
    let have: Vec<&str> = fields.keys().map(String::as_str).collect();
    DataError::row(
        loc,
        format!("no column '{column}' (columns: {})", have.join(", ")),
    )
}

impl Transform {
    fn renamed(&self, name: &str) -> String {
        self.rename
            .iter()
            .find(|(old, _)| old == name)
            .map_or_else(|| name.to_string(), |(_, new)| new.clone())
    }

    /// Checks a schema (CSV header, Parquet/Arrow fields) before any row is read: the renamed
    /// and selected columns exist, and so do `required` (after rename and select).
    pub fn check_schema(
        &self,
        file: &str,
        columns: &[String],
        required: &[String],
    ) -> Result<(), DataError> {
        let missing = |column: &str, available: &[String]| DataError::MissingColumn {
            column: column.to_string(),
            file: file.to_string(),
            available: available.to_vec(),
        };
        for (old, _) in &self.rename {
            if !columns.contains(old) {
                return Err(missing(old, columns));
            }
        }
        let mut cols: Vec<String> = columns.iter().map(|c| self.renamed(c)).collect();
        if let Some(sel) = &self.select {
            if let Some(c) = sel.iter().find(|c| !cols.contains(c)) {
                return Err(missing(c, &cols));
            }
            cols = sel.clone();
        }
        for c in self.drop_null.iter().chain(required) {
            if !cols.contains(c) {
                return Err(missing(c, &cols));
            }
        }
        Ok(())
    }

    /// `Ok(None)` when the row is dropped by `drop_null`.
    pub fn apply(&self, row: Row) -> Result<Option<Row>, DataError> {
        let Row { loc, mut fields } = row;
        if !self.rename.is_empty() {
            fields = fields
                .into_iter()
                .map(|(k, v)| (self.renamed(&k), v))
                .collect();
        }
        if let Some(sel) = &self.select {
            let mut out = Fields::new();
            for c in sel {
                match fields.get_mut(c) {
                    Some(v) => {
                        out.insert(c.clone(), v.take());
                    }
                    None => return Err(missing_in_row(&loc, c, &fields)),
                }
            }
            fields = out;
        }
        let has_null = self
            .drop_null
            .iter()
            .any(|c| fields.get(c).is_none_or(|v| v.is_null()));
        Ok((!has_null).then_some(Row { loc, fields }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::row::Pos;

    fn row(json: &str) -> Row {
        Row {
            loc: Location {
                file: "f.jsonl".into(),
                pos: Pos::Line(3),
            },
            fields: serde_json::from_str(json).unwrap(),
        }
    }

    fn t() -> Transform {
        Transform {
            rename: vec![
                ("instruct".into(), "instruction".into()),
                ("query".into(), "input".into()),
            ],
            select: Some(vec!["input".into(), "instruction".into(), "review".into()]),
            drop_null: vec!["review".into()],
        }
    }

    #[test]
    fn rename_select_drop_null() {
        let out = t()
            .apply(row(
                r#"{"instruct": "a", "x": 1, "query": "b", "review": "r"}"#,
            ))
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(out.fields).to_string(),
            r#"{"input":"b","instruction":"a","review":"r"}"#
        );
        let only_rename = Transform {
            select: None,
            drop_null: vec![],
            ..t()
        };
        let out = only_rename
            .apply(row(r#"{"instruct": "a", "x": 1, "query": "b"}"#))
            .unwrap()
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(out.fields).to_string(),
            r#"{"instruction":"a","x":1,"input":"b"}"#
        );
        assert!(t()
            .apply(row(r#"{"instruct": "a", "query": "b", "review": null}"#))
            .unwrap()
            .is_none());
        let e = t()
            .apply(row(r#"{"instruct": "a", "review": 1}"#))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.jsonl:3: no column 'input' (columns: instruction, review)"
        );
        let swap = Transform {
            rename: vec![("a".into(), "b".into()), ("b".into(), "a".into())],
            ..Transform::default()
        };
        let out = swap.apply(row(r#"{"a": 1, "b": 2}"#)).unwrap().unwrap();
        assert_eq!(
            serde_json::Value::Object(out.fields).to_string(),
            r#"{"b":1,"a":2}"#
        );
        let dn = Transform {
            drop_null: vec!["review".into()],
            ..Transform::default()
        };
        assert!(dn.apply(row(r#"{"a": 1}"#)).unwrap().is_none());
    }

    #[test]
    fn schema_checks_name_file_and_columns() {
        let cols: Vec<String> = ["instruct", "query", "review"].map(String::from).to_vec();
        t().check_schema("d.csv", &cols, &["instruction".to_string()])
            .unwrap();
        let e = t()
            .check_schema("d.csv", &cols, &["output".to_string()])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.csv: no column 'output' (columns: input, instruction, review)"
        );
        let e = t().check_schema("d.csv", &cols[1..], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "d.csv: no column 'instruct' (columns: query, review)"
        );
    }
}
