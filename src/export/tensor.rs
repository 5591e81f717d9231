//! A tensor as stored in a safetensors file: dtype, shape and little-endian bytes, either
//! borrowed from a memory-mapped file (cheap to clone) or owned (merged or converted).

use std::ops::Range;
use std::sync::Arc;

use indexmap::IndexMap;
use memmap2::Mmap;
use safetensors::Dtype;

use super::dtype::{decode_f32, encode_f32, is_float};
use super::error::{ExportError, Result};

/// Name -> tensor, in file order (the order they are written back in).
pub type Tensors = IndexMap<String, Tensor>;

#[derive(Clone)]
enum Data {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Arc<Vec<u8>>),
}

#[derive(Clone)]
pub struct Tensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    data: Data,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    /// Owned bytes; `bytes.len()` must equal numel × dtype size.
    pub fn from_bytes(dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Tensor> {
        let want = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        if bytes.len() != want {
            return Err(ExportError::Unsupported(format!(
                "tensor {dtype:?} {shape:?} needs {want} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Owned(Arc::new(bytes)),
        })
    }

    /// f32 values stored as `dtype` (a float dtype; rounds to nearest even).
    pub fn from_f32(dtype: Dtype, shape: Vec<usize>, values: &[f32]) -> Result<Tensor> {
        Tensor::from_bytes(dtype, shape, encode_f32(dtype, values)?)
    }

    /// A view of `map[range]` (the caller checked the range against the header).
    pub(crate) fn mapped(
        dtype: Dtype,
        shape: Vec<usize>,
        map: Arc<Mmap>,
        range: Range<usize>,
    ) -> Tensor {
        Tensor {
            dtype,
            shape,
            data: Data::Mapped { map, range },
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Mapped { map, range } => &map[range.clone()],
            Data::Owned(v) => v,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_float(&self) -> bool {
        is_float(self.dtype)
    }

    /// The values as f32 (float tensors only).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        decode_f32(self.dtype, self.bytes())
    }

    /// The same values stored as `dtype` (a clone when it already is; float tensors only).
    pub fn to_dtype(&self, dtype: Dtype) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        Tensor::from_f32(dtype, self.shape.clone(), &self.to_f32()?)
    }
}

impl safetensors::View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.bytes())
    }
    fn data_len(&self) -> usize {
        self.bytes().len()
    }
}

/// Shape as `[a, b]` for messages.
pub(crate) fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}
