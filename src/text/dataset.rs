//! The token-dataset file `tokenize` writes and the trainer mmaps.
//!
//! Layout (all little-endian, arrays 8-byte aligned from the file start):
//!
//! ```text
//! 0   magic    b"RCPTOKS1"                      8 bytes
//! 8   version  u32 (= 1)
//! 12  flags    u32 (bit 0: rows are padded to one length)
//! 16  n_rows   u64
//! 24  n_tokens u64 (sum of row lengths, pads included)
//! 32  n_bounds u64
//! 40  reserved 24 bytes (zero)
//! 64  row_offsets   u64[n_rows + 1]   token offset of each row
//!     bound_offsets u64[n_rows + 1]   offset of each row's boundaries
//!     input_ids     u32[n_tokens]
//!     labels        i32[n_tokens]     -100 = not trained
//!     attention     u8[n_tokens]      1 = real token, 0 = pad
//!     (zero padding to 8)
//!     bounds        u32[n_bounds]     per row: start of each example in
//!                                     the row (one [first_token] unless
//!                                     packed), relative to the row
//! ```
//!
//! `TokenDatasetWriter::write` writes to `<path>.partial` and renames, so a
//! crash never leaves a file that looks complete.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"RCPTOKS1";
const HEADER: usize = 64;
pub const IGNORE: i32 = -100;

/// One row as stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenRow {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub attention_mask: Vec<u8>,
    /// Start of each example inside the row (0 for an unpacked row).
    pub boundaries: Vec<u32>,
}

impl TokenRow {
    pub fn as_row_ref(&self) -> RowRef<'_> {
        RowRef {
            input_ids: &self.input_ids,
            labels: &self.labels,
            attention_mask: &self.attention_mask,
            boundaries: &self.boundaries,
        }
    }
}

/// A borrowed row of an open dataset.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    pub input_ids: &'a [u32],
    pub labels: &'a [i32],
    pub attention_mask: &'a [u8],
    pub boundaries: &'a [u32],
}

impl RowRef<'_> {
    pub fn to_owned(&self) -> TokenRow {
        TokenRow {
            input_ids: self.input_ids.to_vec(),
            labels: self.labels.to_vec(),
            attention_mask: self.attention_mask.to_vec(),
            boundaries: self.boundaries.to_vec(),
        }
    }
}

#[derive(Default)]
pub struct TokenDatasetWriter {
    rows: Vec<TokenRow>,
    /// Rows were padded to one fixed length (stored in the header flags).
    pub padded: bool,
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl TokenDatasetWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, row: TokenRow) {
        debug_assert!(
            row.input_ids.len() == row.labels.len() && row.labels.len() == row.attention_mask.len()
        );
        self.rows.push(row);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> &[TokenRow] {
        &self.rows
    }

    /// The whole file image.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n_rows = self.rows.len();
        let n_tokens: usize = self.rows.iter().map(|r| r.input_ids.len()).sum();
        let n_bounds: usize = self.rows.iter().map(|r| r.boundaries.len()).sum();
        let padded = self.padded;
        let mut b =
            Vec::with_capacity(HEADER + 16 * (n_rows + 1) + 9 * n_tokens + 4 * n_bounds + 8);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&u32::from(padded).to_le_bytes());
        for n in [n_rows, n_tokens, n_bounds] {
            b.extend_from_slice(&(n as u64).to_le_bytes());
        }
        b.resize(HEADER, 0);
        let mut off = 0u64;
        b.extend_from_slice(&off.to_le_bytes());
        for r in &self.rows {
            off += r.input_ids.len() as u64;
            b.extend_from_slice(&off.to_le_bytes());
        }
        let mut off = 0u64;
        b.extend_from_slice(&off.to_le_bytes());
        for r in &self.rows {
            off += r.boundaries.len() as u64;
            b.extend_from_slice(&off.to_le_bytes());
        }
        for r in &self.rows {
            r.input_ids
                .iter()
                .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        for r in &self.rows {
            r.labels
                .iter()
                .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        for r in &self.rows {
            b.extend_from_slice(&r.attention_mask);
        }
        b.resize(align8(b.len()), 0);
        for r in &self.rows {
            r.boundaries
                .iter()
                .for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        b
    }

    /// Writes `path` (via `<path>.partial` + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("partial");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&self.to_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ok();
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }
}

/// A memory-mapped token dataset.
pub struct TokenDataset {
    map: memmap2::Mmap,
    n_rows: usize,
    n_tokens: usize,
    n_bounds: usize,
    pub padded: bool,
    // Byte offsets of the arrays.
    rows_at: usize,
    bounds_off_at: usize,
    ids_at: usize,
    labels_at: usize,
    attn_at: usize,
    bounds_at: usize,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl TokenDataset {
    pub fn open(path: impl AsRef<Path>) -> Result<TokenDataset> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the file is a finished cache entry nobody writes to again.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("mapping {}", path.display()))?;
        if cfg!(target_endian = "big") {
            bail!("token datasets are little-endian; this machine is big-endian");
        }
        if map.len() < HEADER || &map[..8] != MAGIC {
            bail!("{}: not a token dataset (bad magic)", path.display());
        }
        let version = u32::from_le_bytes(map[8..12].try_into()?);
        if version != 1 {
            bail!(
                "{}: token dataset version {version}, this build reads 1",
                path.display()
            );
        }
        let padded = u32::from_le_bytes(map[12..16].try_into()?) & 1 == 1;
        let (n_rows, n_tokens, n_bounds) = (
            u64_at(&map, 16) as usize,
            u64_at(&map, 24) as usize,
            u64_at(&map, 32) as usize,
        );
        let rows_at = HEADER;
        let bounds_off_at = rows_at + 8 * (n_rows + 1);
        let ids_at = bounds_off_at + 8 * (n_rows + 1);
        let labels_at = ids_at + 4 * n_tokens;
        let attn_at = labels_at + 4 * n_tokens;
        let bounds_at = align8(attn_at + n_tokens);
        let end = bounds_at + 4 * n_bounds;
        if map.len() != end {
            bail!(
                "{}: size {} but the header implies {end} bytes (truncated or corrupt)",
                path.display(),
                map.len()
            );
        }
        let ds = TokenDataset {
            map,
            n_rows,
            n_tokens,
            n_bounds,
            padded,
            rows_at,
            bounds_off_at,
            ids_at,
            labels_at,
            attn_at,
            bounds_at,
        };
        if ds.row_off(n_rows) != n_tokens || ds.bound_off(n_rows) != n_bounds {
            bail!("{}: row offsets do not add up", path.display());
        }
        for i in 0..n_rows {
            if ds.row_off(i) > ds.row_off(i + 1) || ds.bound_off(i) > ds.bound_off(i + 1) {
                bail!("{}: row {i} has decreasing offsets", path.display());
            }
        }
        Ok(ds)
    }

    fn row_off(&self, i: usize) -> usize {
        u64_at(&self.map, self.rows_at + 8 * i) as usize
    }
    fn bound_off(&self, i: usize) -> usize {
        u64_at(&self.map, self.bounds_off_at + 8 * i) as usize
    }

    pub fn len(&self) -> usize {
        self.n_rows
    }

    pub fn is_empty(&self) -> bool {
        self.n_rows == 0
    }

    /// Total example boundaries stored (one per example).
    pub fn n_examples(&self) -> usize {
        self.n_bounds
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Row `i` (panics when out of range, like slice indexing).
    pub fn get(&self, i: usize) -> RowRef<'_> {
        assert!(i < self.n_rows, "row {i} of {}", self.n_rows);
        let (a, b) = (self.row_off(i), self.row_off(i + 1));
        let (c, d) = (self.bound_off(i), self.bound_off(i + 1));
        RowRef {
            input_ids: self.slice::<u32>(self.ids_at, a, b),
            labels: self.slice::<i32>(self.labels_at, a, b),
            attention_mask: &self.map[self.attn_at + a..self.attn_at + b],
            boundaries: self.slice::<u32>(self.bounds_at, c, d),
        }
    }

    fn slice<T: Copy>(&self, base: usize, a: usize, b: usize) -> &[T] {
        let bytes = &self.map[base + a * 4..base + b * 4];
        assert_eq!(std::mem::size_of::<T>(), 4);
        assert_eq!(
            bytes.as_ptr() as usize % std::mem::align_of::<T>(),
            0,
            "token dataset array misaligned"
        );
        // SAFETY: 4-byte plain integers, aligned (mmap is page-aligned and
        // every array starts at a multiple of 4), length checked in `open`,
        // little-endian checked in `open`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, b - a) }
    }

    pub fn iter(&self) -> impl Iterator<Item = RowRef<'_>> {
        (0..self.n_rows).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut w = TokenDatasetWriter::new();
        w.push(TokenRow {
            input_ids: vec![5, 6, 7],
            labels: vec![-100, 6, 7],
            attention_mask: vec![1, 1, 1],
            boundaries: vec![0],
        });
        w.push(TokenRow {
            input_ids: vec![],
            labels: vec![],
            attention_mask: vec![],
            boundaries: vec![],
        });
        w.push(TokenRow {
            input_ids: vec![1, 2, 3, 4, 0],
            labels: vec![-100, 2, -100, 4, -100],
            attention_mask: vec![1, 1, 1, 1, 0],
            boundaries: vec![0, 2],
        });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.bin");
        w.write(&p).unwrap();
        assert!(!dir.path().join("tokens.partial").exists());
        let ds = TokenDataset::open(&p).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.n_tokens(), 8);
        for (i, r) in ds.iter().enumerate() {
            assert_eq!(r.to_owned(), w.rows()[i]);
            assert_eq!(w.rows()[i].as_row_ref().to_owned(), r.to_owned());
        }
        // Truncated file is refused.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = TokenDataset::open(&p).err().unwrap().to_string();
        assert!(e.contains("truncated or corrupt"), "{e}");
    }
}
