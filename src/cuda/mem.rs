//! Device memory of both device kinds: [`DevBuf`] (an owned allocation) and its borrowed
//! [`DevView`] / [`DevViewMut`] windows.
//!
//! On a real GPU a buffer is a cudarc `CudaSlice` and a view a `CudaView(Mut)`, so the real path
//! is exactly cudarc's. On the emulated device ([`crate::cuda::emu`]) a buffer is an aligned,
//! host allocation from the same caching allocator ([`super::pool`]; 256-byte aligned like `cudaMalloc`, so a kernel's 16-byte vector
//! accesses are aligned exactly when they would be on a GPU) and a view is a pointer + length.
//! Copies between host and device go through [`crate::cuda::Gpu`], which counts their bytes.

use std::marker::PhantomData;
use std::ops::{Bound, Range, RangeBounds};

use std::mem::ManuallyDrop;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr};

use super::pool::{Block, Pool};

/// An allocation on the device (real or emulated), a block of the device's caching allocator
/// ([`super::pool`]); dropping it gives the block back for reuse.
pub struct DevBuf<T> {
    pub(crate) repr: BufRepr<T>,
    pool: Arc<Pool>,
    /// Bytes of the block (at least `len · size_of::<T>()`).
    size: usize,
}

pub(crate) enum BufRepr<T> {
    /// Never dropped as a slice: its memory goes back to the pool (see `Drop for DevBuf`).
    Real(ManuallyDrop<CudaSlice<T>>),
    Emu(EmuMem<T>),
}

/// Host memory standing in for device memory (a pool block).
pub(crate) struct EmuMem<T> {
    pub(crate) ptr: *mut T,
    pub(crate) len: usize,
}

// SAFETY: EmuMem points into a block its DevBuf owns like a Box<[T]>; emulated kernels and
// copies run while the caller holds the buffer (or a view of it) borrowed, exactly as for device
// memory.
unsafe impl<T: Send> Send for EmuMem<T> {}
unsafe impl<T: Sync> Sync for EmuMem<T> {}

/// Alignment of every emulated allocation (what cudaMalloc guarantees).
pub(crate) const EMU_ALIGN: usize = 256;

impl<T> DevBuf<T> {
    /// `len` elements of `T` in `block` (of `size` bytes) from `pool`; contents as the block's.
    pub(crate) fn from_block(
        pool: &Arc<Pool>,
        block: Block,
        size: usize,
        len: usize,
        stream: Option<&Arc<cudarc::driver::CudaStream>>,
    ) -> Self {
        debug_assert!(len * std::mem::size_of::<T>() <= size);
        let repr = match (block, stream) {
            // SAFETY: the block holds `size` ≥ len·size_of::<T>() bytes of this stream's
            // context; the buffer owns it until it is dropped.
            (Block::Real(p), Some(s)) => {
                BufRepr::Real(ManuallyDrop::new(unsafe { s.upgrade_device_ptr(p, len) }))
            }
            (Block::Emu(p), None) => BufRepr::Emu(EmuMem {
                ptr: p as *mut T,
                len,
            }),
            _ => unreachable!("a block of one device kind on the other"),
        };
        DevBuf {
            repr,
            pool: pool.clone(),
            size,
        }
    }
}

impl<T> Drop for DevBuf<T> {
    fn drop(&mut self) {
        let block = match &mut self.repr {
            // SAFETY: taken once, here, and never used again.
            BufRepr::Real(s) => Block::Real(unsafe { ManuallyDrop::take(s) }.leak()),
            BufRepr::Emu(m) => Block::Emu(m.ptr as *mut u8),
        };
        self.pool.give(block, self.size);
    }
}

/// A read-only window into a [`DevBuf`].
pub struct DevView<'a, T>(pub(crate) ViewRepr<'a, T>);

pub(crate) enum ViewRepr<'a, T> {
    Real(CudaView<'a, T>),
    Emu {
        ptr: *const T,
        len: usize,
        _m: PhantomData<&'a T>,
    },
}

/// A writable window into a [`DevBuf`].
pub struct DevViewMut<'a, T>(pub(crate) ViewMutRepr<'a, T>);

pub(crate) enum ViewMutRepr<'a, T> {
    Real(CudaViewMut<'a, T>),
    Emu {
        ptr: *mut T,
        len: usize,
        _m: PhantomData<&'a mut T>,
    },
}

/// `range` of a buffer of `len` elements; out of range is a caller bug (as for slices).
fn resolve(range: impl RangeBounds<usize>, len: usize) -> Range<usize> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    assert!(
        start <= end && end <= len,
        "device range {start}..{end} out of bounds for {len} elements"
    );
    start..end
}

impl<T> DevBuf<T> {
    pub fn len(&self) -> usize {
        match &self.repr {
            BufRepr::Real(s) => s.len(),
            BufRepr::Emu(m) => m.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this buffer lives on the emulated device.
    pub fn is_emulated(&self) -> bool {
        matches!(self.repr, BufRepr::Emu(_))
    }

    pub fn slice(&self, range: impl RangeBounds<usize>) -> DevView<'_, T> {
        let r = resolve(range, self.len());
        match &self.repr {
            BufRepr::Real(s) => DevView(ViewRepr::Real(s.slice(r))),
            // SAFETY: r is inside the allocation.
            BufRepr::Emu(m) => DevView(ViewRepr::Emu {
                ptr: unsafe { m.ptr.add(r.start) },
                len: r.len(),
                _m: PhantomData,
            }),
        }
    }

    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> DevViewMut<'_, T> {
        let r = resolve(range, self.len());
        match &mut self.repr {
            BufRepr::Real(s) => DevViewMut(ViewMutRepr::Real(s.slice_mut(r))),
            // SAFETY: r is inside the allocation.
            BufRepr::Emu(m) => DevViewMut(ViewMutRepr::Emu {
                ptr: unsafe { m.ptr.add(r.start) },
                len: r.len(),
                _m: PhantomData,
            }),
        }
    }

    /// Two disjoint writable halves: [..mid] and [mid..].
    pub fn split_at_mut(&mut self, mid: usize) -> (DevViewMut<'_, T>, DevViewMut<'_, T>) {
        let len = self.len();
        assert!(mid <= len, "split at {mid} beyond {len} elements");
        match &mut self.repr {
            BufRepr::Real(s) => {
                let (a, b) = s.split_at_mut(mid);
                (
                    DevViewMut(ViewMutRepr::Real(a)),
                    DevViewMut(ViewMutRepr::Real(b)),
                )
            }
            BufRepr::Emu(m) => emu_split(m.ptr, len, mid),
        }
    }

    /// The buffer's device address (for alignment checks).
    pub fn device_addr(&self) -> u64 {
        match &self.repr {
            BufRepr::Real(s) => {
                let (p, _sync) = s.device_ptr(s.stream());
                p
            }
            BufRepr::Emu(m) => m.ptr as u64,
        }
    }
}

fn emu_split<'a, T>(ptr: *mut T, len: usize, mid: usize) -> (DevViewMut<'a, T>, DevViewMut<'a, T>) {
    (
        DevViewMut(ViewMutRepr::Emu {
            ptr,
            len: mid,
            _m: PhantomData,
        }),
        // SAFETY: mid <= len (checked by callers).
        DevViewMut(ViewMutRepr::Emu {
            ptr: unsafe { ptr.add(mid) },
            len: len - mid,
            _m: PhantomData,
        }),
    )
}

impl<T> DevView<'_, T> {
    pub fn len(&self) -> usize {
        match &self.0 {
            ViewRepr::Real(v) => v.len(),
            ViewRepr::Emu { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn slice(&self, range: impl RangeBounds<usize>) -> DevView<'_, T> {
        let r = resolve(range, self.len());
        match &self.0 {
            ViewRepr::Real(v) => DevView(ViewRepr::Real(v.slice(r))),
            // SAFETY: r is inside the view.
            ViewRepr::Emu { ptr, .. } => DevView(ViewRepr::Emu {
                ptr: unsafe { ptr.add(r.start) },
                len: r.len(),
                _m: PhantomData,
            }),
        }
    }

    /// Host address of an emulated view (None on a real GPU).
    pub(crate) fn emu_ptr(&self) -> Option<*const T> {
        match &self.0 {
            ViewRepr::Real(_) => None,
            ViewRepr::Emu { ptr, .. } => Some(*ptr),
        }
    }
}

impl<T> DevViewMut<'_, T> {
    pub fn len(&self) -> usize {
        match &self.0 {
            ViewMutRepr::Real(v) => v.len(),
            ViewMutRepr::Emu { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn slice(&self, range: impl RangeBounds<usize>) -> DevView<'_, T> {
        let r = resolve(range, self.len());
        match &self.0 {
            ViewMutRepr::Real(v) => DevView(ViewRepr::Real(v.slice(r))),
            // SAFETY: r is inside the view.
            ViewMutRepr::Emu { ptr, .. } => DevView(ViewRepr::Emu {
                ptr: unsafe { ptr.add(r.start) as *const T },
                len: r.len(),
                _m: PhantomData,
            }),
        }
    }

    pub fn slice_mut(&mut self, range: impl RangeBounds<usize>) -> DevViewMut<'_, T> {
        let r = resolve(range, self.len());
        match &mut self.0 {
            ViewMutRepr::Real(v) => DevViewMut(ViewMutRepr::Real(v.slice_mut(r))),
            // SAFETY: r is inside the view.
            ViewMutRepr::Emu { ptr, .. } => DevViewMut(ViewMutRepr::Emu {
                ptr: unsafe { ptr.add(r.start) },
                len: r.len(),
                _m: PhantomData,
            }),
        }
    }

    pub fn split_at_mut(&mut self, mid: usize) -> (DevViewMut<'_, T>, DevViewMut<'_, T>) {
        let len = self.len();
        assert!(mid <= len, "split at {mid} beyond {len} elements");
        match &mut self.0 {
            ViewMutRepr::Real(v) => {
                let (a, b) = v.split_at_mut(mid);
                (
                    DevViewMut(ViewMutRepr::Real(a)),
                    DevViewMut(ViewMutRepr::Real(b)),
                )
            }
            ViewMutRepr::Emu { ptr, .. } => emu_split(*ptr, len, mid),
        }
    }

    /// The same window, read-only.
    pub fn as_view(&self) -> DevView<'_, T> {
        self.slice(..)
    }

    /// Host address of an emulated view (None on a real GPU).
    pub(crate) fn emu_ptr(&mut self) -> Option<*mut T> {
        match &self.0 {
            ViewMutRepr::Real(_) => None,
            ViewMutRepr::Emu { ptr, .. } => Some(*ptr),
        }
    }
}

/// Anything readable as a device view: a buffer or a view.
pub trait AsDevView<T> {
    fn dev_view(&self) -> DevView<'_, T>;
}

/// Anything writable as a device view: a buffer or a mutable view.
pub trait AsDevViewMut<T>: AsDevView<T> {
    fn dev_view_mut(&mut self) -> DevViewMut<'_, T>;
}

impl<T> AsDevView<T> for DevBuf<T> {
    fn dev_view(&self) -> DevView<'_, T> {
        self.slice(..)
    }
}

impl<T> AsDevViewMut<T> for DevBuf<T> {
    fn dev_view_mut(&mut self) -> DevViewMut<'_, T> {
        self.slice_mut(..)
    }
}

impl<T> AsDevView<T> for DevView<'_, T> {
    fn dev_view(&self) -> DevView<'_, T> {
        self.slice(..)
    }
}

impl<T> AsDevView<T> for DevViewMut<'_, T> {
    fn dev_view(&self) -> DevView<'_, T> {
        self.slice(..)
    }
}

impl<T> AsDevViewMut<T> for DevViewMut<'_, T> {
    fn dev_view_mut(&mut self) -> DevViewMut<'_, T> {
        self.slice_mut(..)
    }
}
