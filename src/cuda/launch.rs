//! Kernel launches on either device: [`Kernel`] (a loaded function) and [`Launch`] (its argument
//! list). The launchers in [`crate::cuda::ops`] write
//! `gpu.launch_builder(&f).arg(..).arg(..)` then `unsafe { b.launch(cfg) }`, the same shape as
//! cudarc's builder, which is what the real path uses underneath.

use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig, PushKernelArg};

use super::emu::EmuKernel;
use super::error::Result;
use super::mem::{BufRepr, DevBuf, DevView, DevViewMut, ViewMutRepr, ViewRepr};

/// A kernel function loaded on a device.
pub enum Kernel {
    Real(CudaFunction),
    Emu(EmuKernel),
}

/// Arguments collected for one launch.
pub struct Launch<'a> {
    pub(crate) repr: LaunchRepr<'a>,
}

pub(crate) enum LaunchRepr<'a> {
    Real(LaunchArgs<'a>),
    /// Each argument's bytes in the low end of an 8-byte slot, and its size.
    Emu(&'a EmuKernel, Vec<(u64, usize)>),
}

/// Something a kernel takes as a parameter: a device buffer or view (its address), or a scalar
/// passed by reference (its value).
pub trait KernelArg<'a> {
    fn push_to(self, l: &mut Launch<'a>);
}

impl<'a> Launch<'a> {
    pub fn arg<A: KernelArg<'a>>(&mut self, a: A) -> &mut Self {
        a.push_to(self);
        self
    }

    /// Launches with `cfg` (asynchronous on a real GPU's stream; synchronous when emulated).
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters and every buffer must be large enough for
    /// what the kernel touches with these dims (the launchers check both). On the emulated device
    /// argument count and sizes are checked again against the kernel's signature.
    pub unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<()> {
        match &mut self.repr {
            LaunchRepr::Real(b) => {
                b.launch(cfg)?;
                Ok(())
            }
            LaunchRepr::Emu(k, slots) => {
                k.launch(cfg.grid_dim, cfg.block_dim, cfg.shared_mem_bytes, slots)
            }
        }
    }
}

/// Scalars kernels take by value.
pub trait Scalar: cudarc::driver::DeviceRepr + Copy {}
impl Scalar for i32 {}
impl Scalar for u32 {}
impl Scalar for i64 {}
impl Scalar for u64 {}
impl Scalar for f32 {}

impl<'a, 'b: 'a, T: Scalar> KernelArg<'a> for &'b T {
    fn push_to(self, l: &mut Launch<'a>) {
        match &mut l.repr {
            LaunchRepr::Real(b) => {
                b.arg(self);
            }
            LaunchRepr::Emu(_, slots) => {
                let n = std::mem::size_of::<T>();
                let mut slot = 0u64;
                // SAFETY: n <= 8 for every Scalar; copies the value's bytes into the slot.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self as *const T as *const u8,
                        &mut slot as *mut u64 as *mut u8,
                        n,
                    )
                };
                slots.push((slot, n));
            }
        }
    }
}

impl<'a, 'b: 'a, T> KernelArg<'a> for &'b DevBuf<T> {
    fn push_to(self, l: &mut Launch<'a>) {
        match (&mut l.repr, &self.repr) {
            (LaunchRepr::Real(b), BufRepr::Real(s)) => {
                b.arg(&**s);
            }
            (LaunchRepr::Emu(_, slots), BufRepr::Emu(m)) => slots.push((m.ptr as u64, 8)),
            _ => mixed(),
        }
    }
}

impl<'a, 'b: 'a, T> KernelArg<'a> for &'b mut DevBuf<T> {
    fn push_to(self, l: &mut Launch<'a>) {
        match (&mut l.repr, &mut self.repr) {
            (LaunchRepr::Real(b), BufRepr::Real(s)) => {
                b.arg(&mut **s);
            }
            (LaunchRepr::Emu(_, slots), BufRepr::Emu(m)) => slots.push((m.ptr as u64, 8)),
            _ => mixed(),
        }
    }
}

impl<'a, 'b: 'a, 'c: 'b, T> KernelArg<'a> for &'b DevView<'c, T> {
    fn push_to(self, l: &mut Launch<'a>) {
        match (&mut l.repr, &self.0) {
            (LaunchRepr::Real(b), ViewRepr::Real(v)) => {
                b.arg(v);
            }
            (LaunchRepr::Emu(_, slots), ViewRepr::Emu { ptr, .. }) => slots.push((*ptr as u64, 8)),
            _ => mixed(),
        }
    }
}

impl<'a, 'b: 'a, 'c: 'b, T> KernelArg<'a> for &'b mut DevViewMut<'c, T> {
    fn push_to(self, l: &mut Launch<'a>) {
        match (&mut l.repr, &mut self.0) {
            (LaunchRepr::Real(b), ViewMutRepr::Real(v)) => {
                b.arg(v);
            }
            (LaunchRepr::Emu(_, slots), ViewMutRepr::Emu { ptr, .. }) => {
                slots.push((*ptr as u64, 8))
            }
            _ => mixed(),
        }
    }
}

/// A buffer of one device kind passed to a kernel of the other: a programming error.
fn mixed() -> ! {
    panic!("a buffer of one device (real or emulated) passed to a kernel of the other")
}
