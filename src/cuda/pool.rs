//! The caching allocator behind every [`DevBuf`](super::DevBuf): a dropped buffer's block goes
//! back here instead of to the driver, and the next allocation of about its size takes it. A
//! training loop allocates the same shapes every step, so after its first step it allocates
//! nothing from the driver (`tests/cuda_emulated.rs` counts [`PoolStats::fresh`]).
//!
//! Blocks are sized in 512-byte units up to 1 MiB and in 8 classes per power of two above
//! ([`block_size`]); a request takes the smallest cached block of at least its size and at most
//! 1.25× (+512 B) of it, so varying batch lengths reuse blocks without holding twice the memory.
//! Out of memory, the cache is returned to the driver and the allocation tried once more
//! ([`Pool::release`]). One stream uses the blocks, so reuse is ordered by the stream exactly as
//! a free followed by an allocation would be.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::CudaStream;

use super::mem::EMU_ALIGN;

/// Allocation granularity in bytes.
const UNIT: usize = 512;

/// A block of device memory owned by the pool (or by the buffer holding it).
pub(crate) enum Block {
    Real(CUdeviceptr),
    /// Host memory standing in for device memory, `EMU_ALIGN`-aligned.
    Emu(*mut u8),
}

// SAFETY: a block is plain memory; whoever holds it is its only user.
unsafe impl Send for Block {}

/// What the pool has done since the device was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Allocations that went to the driver (or the host allocator, emulated).
    pub fresh: u64,
    /// Bytes held by live buffers.
    pub in_use: usize,
    /// Bytes cached for reuse.
    pub cached: usize,
    /// The most bytes live buffers held at once.
    pub peak_in_use: usize,
}

pub(crate) struct Pool {
    /// Cached blocks by size in bytes.
    free: Mutex<BTreeMap<usize, Vec<Block>>>,
    /// The real GPU's stream (None on the emulated device).
    stream: Option<Arc<CudaStream>>,
    /// The emulated device's capacity in bytes (None: the host's memory).
    capacity: Option<usize>,
    fresh: AtomicU64,
    in_use: AtomicUsize,
    cached: AtomicUsize,
    peak_in_use: AtomicUsize,
}

/// Above this, blocks come in size classes instead of 512-byte units.
const CLASSES_FROM: usize = 1 << 20;

/// The block that serves `bytes`: up to 1 MiB, rounded up to the 512-byte unit (at least one
/// unit, so empty buffers have an address); above, rounded up to one of 8 size classes per
/// power of two (at most 12.5% more). Activations whose sizes differ a little from batch to
/// batch (packed rows of 2039 or 2047 tokens) then share blocks instead of each length leaving
/// its own generation of blocks in the cache.
pub(crate) fn block_size(bytes: usize) -> usize {
    if bytes <= CLASSES_FROM {
        return bytes.max(1).div_ceil(UNIT) * UNIT;
    }
    let step = 1usize << (usize::BITS - 1 - bytes.leading_zeros() - 3);
    bytes.div_ceil(step) * step
}

fn emu_layout(size: usize) -> Layout {
    Layout::from_size_align(size, EMU_ALIGN).expect("emulated allocation size overflows")
}

impl Pool {
    pub(crate) fn new(stream: Option<Arc<CudaStream>>, capacity: Option<usize>) -> Arc<Self> {
        Arc::new(Pool {
            free: Mutex::new(BTreeMap::new()),
            stream,
            capacity,
            fresh: AtomicU64::new(0),
            in_use: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
            peak_in_use: AtomicUsize::new(0),
        })
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            fresh: self.fresh.load(Ordering::Relaxed),
            in_use: self.in_use.load(Ordering::Relaxed),
            cached: self.cached.load(Ordering::Relaxed),
            peak_in_use: self.peak_in_use.load(Ordering::Relaxed),
        }
    }

    fn count_in_use(&self, bytes: usize) {
        let now = self.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_in_use.fetch_max(now, Ordering::Relaxed);
    }

    /// A block of at least `bytes` (a multiple of the unit): a cached one of at most 1.25× the
    /// size, else a fresh one (on out of memory: the cache is released and the driver asked
    /// again). Returns the block and its size. Contents are undefined.
    pub(crate) fn take(&self, bytes: usize) -> super::Result<(Block, usize)> {
        let bytes = block_size(bytes);
        {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let fit = free
                .range(bytes..=bytes + bytes / 4 + UNIT)
                .next()
                .map(|(&s, _)| s);
            if let Some(size) = fit {
                let list = free.get_mut(&size).expect("size listed");
                let b = list.pop().expect("lists are never left empty");
                if list.is_empty() {
                    free.remove(&size);
                }
                self.cached.fetch_sub(size, Ordering::Relaxed);
                self.count_in_use(size);
                return Ok((b, size));
            }
        }
        let b = match self.fresh_block(bytes) {
            Err(e) if is_oom(&e) && self.release() > 0 => self.fresh_block(bytes)?,
            r => r?,
        };
        self.fresh.fetch_add(1, Ordering::Relaxed);
        self.count_in_use(bytes);
        Ok((b, bytes))
    }

    /// Gives a block of `size` bytes back for reuse.
    pub(crate) fn give(&self, b: Block, size: usize) {
        self.in_use.fetch_sub(size, Ordering::Relaxed);
        self.cached.fetch_add(size, Ordering::Relaxed);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.entry(size).or_default().push(b);
    }

    /// Returns every cached block to the driver; the bytes released.
    pub(crate) fn release(&self) -> usize {
        let blocks = std::mem::take(&mut *self.free.lock().unwrap_or_else(|p| p.into_inner()));
        let mut n = 0;
        for (size, list) in blocks {
            for b in list {
                self.free_block(b, size);
                n += size;
            }
        }
        self.cached.fetch_sub(n, Ordering::Relaxed);
        n
    }

    fn fresh_block(&self, bytes: usize) -> super::Result<Block> {
        match &self.stream {
            Some(s) => {
                // SAFETY: raw bytes; users of the block upgrade it to a typed slice and either
                // zero it or copy into it before reading.
                let slice = unsafe { s.alloc::<u8>(bytes) }?;
                Ok(Block::Real(slice.leak()))
            }
            None => {
                let held =
                    self.in_use.load(Ordering::Relaxed) + self.cached.load(Ordering::Relaxed);
                if self.capacity.is_some_and(|c| held + bytes > c) {
                    return Err(cudarc::driver::DriverError(
                        cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
                    )
                    .into());
                }
                // SAFETY: the layout has a non-zero size.
                let p = unsafe { std::alloc::alloc(emu_layout(bytes)) };
                if p.is_null() {
                    std::alloc::handle_alloc_error(emu_layout(bytes));
                }
                Ok(Block::Emu(p))
            }
        }
    }

    fn free_block(&self, b: Block, size: usize) {
        match (b, &self.stream) {
            (Block::Real(p), Some(s)) => {
                let ctx = s.context();
                // Errors here are the driver's own (a dead context); nothing to do with them.
                let _ = ctx.bind_to_thread();
                // SAFETY: p came from this stream's context and no buffer holds it any more.
                let _ = unsafe {
                    if ctx.has_async_alloc() {
                        cudarc::driver::result::free_async(p, s.cu_stream())
                    } else {
                        let _ = s.synchronize();
                        cudarc::driver::result::free_sync(p)
                    }
                };
            }
            // SAFETY: allocated in `fresh_block` with this layout.
            (Block::Emu(p), None) => unsafe { std::alloc::dealloc(p, emu_layout(size)) },
            _ => unreachable!("a block of one device kind in the other's pool"),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether `e` is the driver's out of memory.
pub(crate) fn is_oom(e: &super::CudaError) -> bool {
    matches!(e, super::CudaError::Driver(d)
        if d.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units up to 1 MiB, then 8 classes per doubling: never more than 12.5% over, and two
    /// packed batches 2039 and 2047 tokens long (hidden 4096, f32) get the same block.
    #[test]
    fn large_blocks_come_in_eight_classes_per_doubling() {
        assert_eq!(block_size(0), 512);
        assert_eq!(block_size(1000), 1024);
        assert_eq!(block_size(1 << 20), 1 << 20);
        assert_eq!(block_size((1 << 20) + 1), (1 << 20) + (1 << 17));
        assert_eq!(block_size(3 << 20), 3 << 20);
        for b in [(1usize << 20) + 1, 5_000_000, 123_456_789, 1 << 33] {
            let s = block_size(b);
            assert!(s >= b && (s - b) * 8 <= b, "{b} -> {s}");
        }
        let (a, b) = (4 * 4096 * 4 * 2039, 4 * 4096 * 4 * 2047);
        assert_eq!(block_size(a), block_size(b));
        assert_eq!(block_size(b), 8 << 24);
        // A shorter batch, then a longer one: the longer reuses the shorter's block (with
        // 512-byte units it was a fresh block, and the short one stayed cached).
        let pool = Pool::new(None, None);
        let (short, long) = (4 * 64 * 4 * 2039, 4 * 64 * 4 * 2047);
        let (x, sx) = pool.take(short).unwrap();
        pool.give(x, sx);
        let (y, sy) = pool.take(long).unwrap();
        assert_eq!((sy, pool.stats().fresh, pool.stats().cached), (sx, 1, 0));
        pool.give(y, sy);
    }

    #[test]
    fn blocks_are_reused_by_size_within_a_quarter() {
        let pool = Pool::new(None, None);
        let (a, sa) = pool.take(4000).unwrap();
        assert_eq!(sa, 4096);
        pool.give(a, sa);
        // 3600 B rounds to 3584; 4096 ≤ 1.25·3584 + 512, so the cached block serves it.
        let (b, sb) = pool.take(3600).unwrap();
        assert_eq!((sb, pool.stats().fresh), (4096, 1));
        pool.give(b, sb);
        // 1000 B would waste more than a quarter of a 4 KiB block: a fresh one.
        let (c, sc) = pool.take(1000).unwrap();
        assert_eq!((sc, pool.stats().fresh), (1024, 2));
        assert_eq!(
            pool.stats(),
            PoolStats {
                fresh: 2,
                in_use: 1024,
                cached: 4096,
                peak_in_use: 4096,
            }
        );
        pool.give(c, sc);
        assert_eq!(pool.release(), 4096 + 1024);
        assert_eq!(pool.stats().cached, 0);
    }

    #[test]
    fn a_full_device_releases_its_cache_then_reports_out_of_memory() {
        let pool = Pool::new(None, Some(8192));
        let (a, sa) = pool.take(4096).unwrap();
        pool.give(a, sa);
        // 6 KiB does not fit beside the cached 4 KiB: the cache goes, then it fits.
        let (b, sb) = pool.take(6144).unwrap();
        assert_eq!(
            pool.stats(),
            PoolStats {
                fresh: 2,
                in_use: 6144,
                cached: 0,
                peak_in_use: 6144,
            }
        );
        let e = pool.take(4096).err().expect("8 KiB device, 6 KiB in use");
        assert!(is_oom(&e), "{e}");
        pool.give(b, sb);
    }
}
