//! NumPy's default generator, bit for bit: `np.random.default_rng(seed).permutation(n)`.
//!
//! Hugging Face `Dataset.train_test_split(test_size, seed=S)` and `Dataset.shuffle(seed=S)` draw
//! their row order from exactly this call, so reproducing it gives the same splits as the Python
//! workflows. Three parts, each a transcription of NumPy's source:
//! - `SeedSequence` (numpy/random/bit_generator.pyx): hashes the integer seed into a 4-word pool
//!   and expands it into the generator state (`generate_state(4, uint64)`).
//! - `Pcg64` (numpy/random/src/pcg64): 128-bit LCG with the XSL-RR output, `next_uint32` served
//!   from the two halves of one 64-bit draw.
//! - `permutation`: `arange(n)` then the Fisher-Yates `shuffle` of `_generator.pyx`, drawing
//!   each index with `random_interval` (bit mask + rejection).

const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;
const POOL_SIZE: usize = 4;

/// `np.random.SeedSequence(seed)` with no spawn key, reduced to what `default_rng` needs.
struct SeedSequence {
    pool: [u32; POOL_SIZE],
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    fn new(seed: u64) -> Self {
        // An int seed becomes its little-endian 32-bit words (0 -> [0]).
        let mut entropy = vec![seed as u32];
        if seed >> 32 != 0 {
            entropy.push((seed >> 32) as u32);
        }
        let mut pool = [0u32; POOL_SIZE];
        let mut hash_const = INIT_A;
        for (i, p) in pool.iter_mut().enumerate() {
            *p = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        for i_src in 0..POOL_SIZE {
            for i_dst in 0..POOL_SIZE {
                if i_src != i_dst {
                    let h = hashmix(pool[i_src], &mut hash_const);
                    pool[i_dst] = mix(pool[i_dst], h);
                }
            }
        }
        // (entropy longer than the pool would be mixed in here; a u64 seed never is)
        SeedSequence { pool }
    }

    /// `generate_state(n_words, np.uint64)`: 2·n_words u32 words viewed as little-endian u64.
    fn generate_state_u64(&self, n_words: usize) -> Vec<u64> {
        let mut hash_const = INIT_B;
        let words: Vec<u32> = (0..2 * n_words)
            .map(|i| {
                let mut v = self.pool[i % POOL_SIZE] ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect();
        words
            .chunks(2)
            .map(|w| w[0] as u64 | ((w[1] as u64) << 32))
            .collect()
    }
}

const PCG_MULT: u128 = (0x2360_ed05_1fc6_5da4u128 << 64) | 0x4385_df64_9fcc_f645u128;

/// NumPy's `PCG64` bit generator (XSL-RR 128/64) with its buffered 32-bit output.
pub struct Pcg64 {
    state: u128,
    inc: u128,
    /// Upper half of the last 64-bit draw, served by the next `next_u32`.
    pending_u32: Option<u32>,
}

impl Pcg64 {
    /// `np.random.default_rng(seed)`'s bit generator.
    pub fn from_seed(seed: u64) -> Self {
        let s = SeedSequence::new(seed).generate_state_u64(4);
        let initstate = ((s[0] as u128) << 64) | s[1] as u128;
        let initseq = ((s[2] as u128) << 64) | s[3] as u128;
        let mut rng = Pcg64 {
            state: 0,
            inc: (initseq << 1) | 1,
            pending_u32: None,
        };
        rng.step();
        rng.state = rng.state.wrapping_add(initstate);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(PCG_MULT).wrapping_add(self.inc);
    }

    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let s = self.state;
        let xored = ((s >> 64) as u64) ^ (s as u64);
        xored.rotate_right((s >> 122) as u32)
    }

    pub fn next_u32(&mut self) -> u32 {
        if let Some(v) = self.pending_u32.take() {
            return v;
        }
        let next = self.next_u64();
        self.pending_u32 = Some((next >> 32) as u32);
        next as u32
    }

    /// Uniform integer in `[0, max]` (NumPy `random_interval`: smallest covering bit mask,
    /// rejection; 32-bit draws while `max` fits in 32 bits).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= 0xffff_ffff {
            loop {
                let v = self.next_u32() as u64 & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = self.next_u64() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `np.random.default_rng(seed).permutation(n)`.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Pcg64::from_seed(seed);
    let mut a: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        a.swap(i, j);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        let p = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/data/split_indices.json"
        );
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn usizes(v: &serde_json::Value) -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    }

    #[test]
    fn permutation_matches_numpy() {
        let fx = fixture();
        let mut checked = 0;
        for case in fx["cases"].as_array().unwrap() {
            if let Some(p) = case.get("permutation") {
                let n = case["n"].as_u64().unwrap() as usize;
                let seed = case["seed"].as_u64().unwrap();
                assert_eq!(permutation(n, seed), usizes(p), "n={n} seed={seed}");
                checked += 1;
            }
        }
        assert!(checked >= 5);
    }
}
