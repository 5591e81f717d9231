//! Code books of bitsandbytes: the 4-bit NF4 / FP4 tables and the 8-bit dynamic maps.
//!
//! Every value is reproduced bit for bit: NF4 is the hard-coded table of
//! `bitsandbytes.functional.get_4bit_type("nf4")`, FP4 is its bit-pattern table divided by 12
//! in f32, and the dynamic maps replay `create_dynamic_map` including the way torch's f32
//! `linspace` rounds (a fused multiply-add from the nearer end).

/// NF4 (NormalFloat4) code, indexed by nibble; sorted ascending.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4 (1 sign, 2 exponent, 1 mantissa bit) code, indexed by nibble; NOT sorted. Nibble 8
/// is +0.0: bnb writes the integer `-0` in its Python list.
pub const FP4: [f32; 16] = {
    const RAW: [f32; 16] = [
        0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0,
        -3.0,
    ];
    let mut out = RAW;
    let mut i = 0;
    while i < 16 {
        out[i] = RAW[i] / 12.0;
        i += 1;
    }
    out
};

/// The FP4 code as a value (see [`FP4`]).
pub fn fp4() -> [f32; 16] {
    FP4
}

/// torch.linspace(start, end, steps, dtype=float32) on the CPU: the first half counts up from
/// `start`, the second half down from `end`, each with one fused multiply-add.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `bitsandbytes.functional.create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`:
/// 256 sorted values in [-1, 1] (signed) or [0, 1] (unsigned).
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    const MAX_EXP_BITS: i32 = 7;
    const NON_SIGN_BITS: i32 = 7;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..MAX_EXP_BITS {
        let items = if signed {
            (1usize << (i + NON_SIGN_BITS - MAX_EXP_BITS)) + 1
        } else {
            (1usize << (i + NON_SIGN_BITS - MAX_EXP_BITS + 1)) + 1
        };
        let bounds = torch_linspace_f32(0.1, 1.0, items);
        // python: (10 ** e) * means, the scalar rounded to f32 before the f32 multiply
        let scale = 10f64.powi(-(MAX_EXP_BITS - 1) + i) as f32;
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            if signed {
                data.push(-scale * mean);
            }
        }
    }
    // additional_items = 2^(7-7) - 1 = 0 for both maps
    data.push(0.0);
    data.push(1.0);
    data.resize(256, 0.0);
    data.sort_by(|a, b| a.partial_cmp(b).expect("dynamic map has no NaN"));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// 4-bit data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantType {
    Nf4,
    Fp4,
}

impl QuantType {
    /// Name used by bitsandbytes / transformers ("nf4", "fp4").
    pub fn name(self) -> &'static str {
        match self {
            QuantType::Nf4 => "nf4",
            QuantType::Fp4 => "fp4",
        }
    }

    pub fn from_name(name: &str) -> Option<QuantType> {
        match name {
            "nf4" => Some(QuantType::Nf4),
            "fp4" => Some(QuantType::Fp4),
            _ => None,
        }
    }

    /// Code value per nibble.
    pub fn code(self) -> [f32; 16] {
        match self {
            QuantType::Nf4 => NF4,
            QuantType::Fp4 => fp4(),
        }
    }
}

/// What bnb's pure-torch `quantize_4bit` searches: midpoints of the sorted code and, per
/// sorted position, the nibble (`torch.argsort` of the code; FP4's +0 sorts before -0).
pub(crate) struct Bounds4 {
    pub mids: [f32; 15],
    pub nibble: [u8; 16],
}

impl Bounds4 {
    pub fn new(qt: QuantType) -> Bounds4 {
        let code = qt.code();
        let mut order: Vec<usize> = (0..16).collect();
        // stable: equal values (+0 / -0) keep their nibble order, as torch.argsort does here
        order.sort_by(|&a, &b| code[a].partial_cmp(&code[b]).expect("no NaN in 4-bit code"));
        let mut mids = [0f32; 15];
        for i in 0..15 {
            mids[i] = (code[order[i]] + code[order[i + 1]]) / 2.0;
        }
        let mut nibble = [0u8; 16];
        for (i, &o) in order.iter().enumerate() {
            nibble[i] = o as u8;
        }
        Bounds4 { mids, nibble }
    }

    /// torch.bucketize(x, mids, right=False): the number of midpoints strictly below x,
    /// so an exact tie goes to the lower code; mapped back to the nibble.
    #[inline]
    pub fn nibble_of(&self, x: f32) -> u8 {
        let pos = self.mids.partition_point(|&m| m < x);
        self.nibble[pos]
    }
}
