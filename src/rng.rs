//! The one seeded generator: SplitMix64 (Steele, Lea & Flood 2014), used for LoRA init,
//! dropout masks, shuffles, sampling seeds and test inputs. Everything random in training is
//! derived from (seed, epoch/step) so a resumed run replays the same stream without saving
//! RNG state.

/// SplitMix64's increment (2^64 / golden ratio).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One draw from state `x`: mix64(x + GOLDEN) (numpy / Python fixture scripts use the same).
pub fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(GOLDEN))
}

/// The LoRA dropout mask, shared by the CPU and the CUDA kernels (kernels/act.cu): element `i`
/// (0-based) of a call with `key` is kept iff its draw, the (i+1)-th of `SplitMix64(key)`, is
/// >= p, so a mask element is computed from (key, i) alone.
pub fn dropout_keep(key: u64, i: u64, p: f32) -> bool {
    let z = mix64(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)));
    (z >> 40) as f32 / (1u64 << 24) as f32 >= p
}

/// SplitMix64 from a raw state.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }
    /// Uniform in [0, 1) with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1) (LoRA A init, dropout draws).
    pub fn uniform(&mut self) -> f32 {
        self.next_f32() * 2.0 - 1.0
    }
}

/// The training stream: SplitMix64 seeded with `seed ^ GOLDEN`, with derived sub-streams.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64(seed ^ GOLDEN))
    }
    /// A stream derived from a seed and a list of coordinates.
    pub fn derive(seed: u64, parts: &[u64]) -> Rng {
        let mut r = Rng::new(seed);
        for p in parts {
            r.0 .0 ^= p.wrapping_mul(0xD1B5_4A32_D192_ED03);
            r.next_u64();
        }
        r
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0.next_f32()
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
