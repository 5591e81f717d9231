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
