//! [`Tensor`]: storage owned by a backend. The CPU backend keeps a host `Vec`, the CUDA backend a
//! device allocation ([`DevBuf`]); the model code holds tensors and hands them to backend ops,
//! never reading their memory. Crossing the host/device boundary is explicit:
//! [`super::Backend::upload`] (weights at load, the batch) and [`super::Backend::download`]
//! (checkpoints, the step's loss).
//!
//! A tensor has a logical length; a device tensor of length 0 still holds one element, because
//! the driver refuses empty allocations.
//!
//! A device tensor of f32 values may be stored as bf16 ([`Tensor::from_device_bf16`]): the CUDA
//! backend's layer activations in bf16 mode ([`super::Backend::activation`]). Its ops read and
//! write such a tensor through [`Tensor::device_bf16`]; [`Tensor::device`] refuses it.

use crate::cuda::mem::DevBuf;

pub struct Tensor<T = f32> {
    len: usize,
    store: Store<T>,
}

enum Store<T> {
    Host(Vec<T>),
    Device(DevBuf<T>),
    /// Values rounded to bf16 on the device (activations in bf16 mode).
    DeviceBf16(DevBuf<half::bf16>),
}

impl<T> Tensor<T> {
    /// A host tensor (the CPU backend's storage).
    pub fn from_host(v: Vec<T>) -> Tensor<T> {
        Tensor {
            len: v.len(),
            store: Store::Host(v),
        }
    }

    /// A device tensor of logical length `len` (the buffer holds at least max(len, 1)).
    pub fn from_device(buf: DevBuf<T>, len: usize) -> Tensor<T> {
        assert!(buf.len() >= len, "device buffer shorter than the tensor");
        Tensor {
            len,
            store: Store::Device(buf),
        }
    }

    /// A device tensor of logical length `len` stored as bf16 (the buffer holds at least
    /// max(len, 1)).
    pub fn from_device_bf16(buf: DevBuf<half::bf16>, len: usize) -> Tensor<T> {
        assert!(buf.len() >= len, "device buffer shorter than the tensor");
        Tensor {
            len,
            store: Store::DeviceBf16(buf),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_device(&self) -> bool {
        matches!(self.store, Store::Device(_) | Store::DeviceBf16(_))
    }

    /// Whether the values are stored as bf16 on the device.
    pub fn is_bf16(&self) -> bool {
        matches!(self.store, Store::DeviceBf16(_))
    }

    /// The bf16 device storage.
    pub fn device_bf16(&self) -> &DevBuf<half::bf16> {
        match &self.store {
            Store::DeviceBf16(b) => b,
            _ => panic!("a tensor not stored as bf16 reached a bf16 op (backend mix-up)"),
        }
    }

    pub fn device_bf16_mut(&mut self) -> &mut DevBuf<half::bf16> {
        match &mut self.store {
            Store::DeviceBf16(b) => b,
            _ => panic!("a tensor not stored as bf16 reached a bf16 op (backend mix-up)"),
        }
    }

    /// The host storage. A device tensor here is a backend bug (an op given another
    /// backend's tensor), so it panics naming that.
    pub fn host(&self) -> &[T] {
        match &self.store {
            Store::Host(v) => v,
            Store::Device(_) | Store::DeviceBf16(_) => {
                panic!("a device tensor reached a host op (backend mix-up)")
            }
        }
    }

    pub fn host_mut(&mut self) -> &mut [T] {
        match &mut self.store {
            Store::Host(v) => v,
            Store::Device(_) | Store::DeviceBf16(_) => {
                panic!("a device tensor reached a host op (backend mix-up)")
            }
        }
    }

    /// Host tensors only: the storage itself.
    pub fn into_host(self) -> Vec<T> {
        match self.store {
            Store::Host(v) => v,
            Store::Device(_) | Store::DeviceBf16(_) => {
                panic!("a device tensor reached a host op (backend mix-up)")
            }
        }
    }

    /// Device tensors only: the buffer itself.
    pub fn into_device(self) -> DevBuf<T> {
        match self.store {
            Store::Device(b) => b,
            Store::Host(_) => panic!("a host tensor reached a device op (backend mix-up)"),
            Store::DeviceBf16(_) => {
                panic!("a bf16 tensor reached an f32 device op (backend mix-up)")
            }
        }
    }

    /// The device storage (the CUDA backend's side of [`Tensor::host`]).
    pub fn device(&self) -> &DevBuf<T> {
        match &self.store {
            Store::Device(b) => b,
            Store::Host(_) => panic!("a host tensor reached a device op (backend mix-up)"),
            Store::DeviceBf16(_) => {
                panic!("a bf16 tensor reached an f32 device op (backend mix-up)")
            }
        }
    }

    pub fn device_mut(&mut self) -> &mut DevBuf<T> {
        match &mut self.store {
            Store::Device(b) => b,
            Store::Host(_) => panic!("a host tensor reached a device op (backend mix-up)"),
            Store::DeviceBf16(_) => {
                panic!("a bf16 tensor reached an f32 device op (backend mix-up)")
            }
        }
    }
}

/// An empty host tensor (a placeholder until an op's output is allocated).
impl<T> Default for Tensor<T> {
    fn default() -> Self {
        Tensor::from_host(Vec::new())
    }
}

impl<T: Clone> Tensor<T> {
    /// Host tensors only: a copy (tests, CPU-only tools). Device tensors go through
    /// [`super::Backend::download`].
    pub fn to_vec(&self) -> Vec<T> {
        self.host().to_vec()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Tensor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.store {
            Store::Host(v) => write!(f, "Tensor(host, {} elements)", v.len()),
            Store::Device(_) => write!(f, "Tensor(device, {} elements)", self.len),
            Store::DeviceBf16(_) => write!(f, "Tensor(device bf16, {} elements)", self.len),
        }
    }
}
