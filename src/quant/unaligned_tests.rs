//! 4-bit weights whose rows are not a whole number of blocks (issue 12), against bitsandbytes:
//! tests/fixtures/quant_unaligned/cases.json, made by
//! tests/reference/quant_unaligned_fixtures.py. Every blocksize 32..4096, NF4 and FP4, with
//! and without double quant, on [rows, cols] with cols % blocksize != 0 and numel % blocksize
//! != 0 (even cols, and an odd numel), plus the [5, 576] / blocksize 128 shape of the report.
//!
//! The reference dequantization is bnb's flattened one (CUDA kernel, generic torch path): block
//! b is elements [b·blocksize, (b+1)·blocksize) of the row-major tensor, straddling rows. bnb
//! 0.50.2's C++ CPU kernel indexes blocks per row and is wrong on these shapes (see the script).

use super::codes::QuantType;
use super::four_bit::{quantize_4bit, Absmax, Quantized4};
use super::linear::Linear4bit;
use super::testgen::gen;
use super::tests::{assert_bits_eq, assert_bytes_eq, assert_matmuls_match_dense, unhex, unhex_f32};
use crate::formats::bnb4::TensorRef;
use crate::formats::{Tensor, Tensors};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};

fn cases() -> Vec<Value> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant_unaligned/cases.json"
    );
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(p).expect("cases.json"))
        .expect("cases.json is JSON");
    assert_eq!(fx["hash"], "fnv1a64");
    fx["cases"].as_array().expect("cases").clone()
}

/// FNV-1a 64 of `bytes` as 16 hex digits (what the script stores for large arrays).
pub(crate) fn fnv64(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

struct Case {
    name: String,
    quant_type: QuantType,
    blocksize: usize,
    double_quant: bool,
    shape: Vec<usize>,
    x: Vec<f32>,
    c: Value,
}

fn case(c: &Value) -> Case {
    let shape: Vec<usize> = c["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let n = shape.iter().product();
    let scale = f64::from_le_bytes(
        unhex(c["scale_f64"].as_str().unwrap())[..8]
            .try_into()
            .unwrap(),
    );
    Case {
        name: c["name"].as_str().unwrap().to_string(),
        quant_type: QuantType::from_name(c["quant_type"].as_str().unwrap()).unwrap(),
        blocksize: c["blocksize"].as_u64().unwrap() as usize,
        double_quant: c["double_quant"].as_bool().unwrap(),
        x: gen(c["seed"].as_u64().unwrap(), n, scale),
        shape,
        c: c.clone(),
    }
}

impl Case {
    fn quantize(&self) -> Quantized4 {
        quantize_4bit(
            &self.x,
            &self.shape,
            self.blocksize,
            self.quant_type,
            self.double_quant,
            "float32",
        )
        .unwrap()
    }

    /// The dequantized tensor equals bnb's flattened dequantization, every bit.
    fn assert_dequant(&self, what: &str, got: &[f32]) {
        let name = &self.name;
        let stride = self.c["dequant_stride"].as_u64().unwrap() as usize;
        let sample: Vec<f32> = got.iter().copied().step_by(stride).collect();
        let want = unhex_f32(self.c["dequant_sample"].as_str().unwrap());
        assert_bits_eq(&format!("{name}: {what} (sample)"), &sample, &want);
        assert_eq!(
            fnv64(&f32_le(got)),
            self.c["dequant_fnv"].as_str().unwrap(),
            "{name}: {what} differs from bnb's dequantize_4bit"
        );
    }
}

/// The grid is complete: every blocksize × {nf4, fp4} × {plain, double quant} × {even, odd}.
#[test]
fn unaligned_fixture_covers_every_combination() {
    let all = cases();
    let combos: BTreeSet<(usize, String, bool, bool)> = all
        .iter()
        .map(|c| {
            let k = case(c);
            assert!(
                !k.shape[1].is_multiple_of(k.blocksize) && !k.x.len().is_multiple_of(k.blocksize),
                "{}: aligned",
                k.name
            );
            (
                k.blocksize,
                c["quant_type"].as_str().unwrap().to_string(),
                k.double_quant,
                k.x.len() % 2 == 1,
            )
        })
        .collect();
    assert_eq!(combos.len(), 8 * 2 * 2 * 2);
    assert_eq!(all.len(), 8 * 2 * 2 * 2 + 1);
}

/// Our quantization is bnb's byte for byte (packed nibbles, absmax or its 8-bit codes, nested
/// absmax and offset, quant state JSON), and our dequantization is bnb's flattened one.
#[test]
fn unaligned_quantize_and_dequantize_match_bitsandbytes() {
    for c in cases() {
        let k = case(&c);
        let name = &k.name;
        let q = k.quantize();
        assert_eq!(q.packed.len(), c["packed_len"].as_u64().unwrap() as usize);
        assert_eq!(
            fnv64(&q.packed),
            c["packed_fnv"].as_str().unwrap(),
            "{name}: packed bytes differ from bnb's quantize_4bit"
        );
        match &q.state.absmax {
            Absmax::Plain(a) => {
                assert_bits_eq(name, a, &unhex_f32(c["absmax"].as_str().unwrap()));
            }
            Absmax::Nested {
                codes,
                absmax2,
                offset,
                ..
            } => {
                assert_bytes_eq(name, codes, &unhex(c["absmax_u8"].as_str().unwrap()));
                assert_bits_eq(
                    name,
                    absmax2,
                    &unhex_f32(c["nested_absmax"].as_str().unwrap()),
                );
                assert_bits_eq(name, &[*offset], &unhex_f32(c["offset"].as_str().unwrap()));
                assert_bits_eq(
                    name,
                    &q.state.absmax_f32(),
                    &unhex_f32(c["absmax_dequant"].as_str().unwrap()),
                );
            }
        }
        assert_eq!(q.state.to_json(), c["quant_state_json"].as_str().unwrap());
        k.assert_dequant("Quantized4::dequantize", &q.dequantize());

        // Through the serialized layout and back (what save / load do).
        let map: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = q
            .to_tensors("m.weight")
            .into_iter()
            .map(|(n, d, s, b)| (n, (d, s, b)))
            .collect();
        let get = |n: &str| {
            map.get(n).map(|(d, s, b)| TensorRef {
                dtype: *d,
                shape: s.clone(),
                data: b,
            })
        };
        let back = Quantized4::from_tensors("m.weight", &get).unwrap();
        assert_eq!(back, q, "{name}: round trip");

        // The export path's reader and re-quantizer (merge of a 4-bit base) agree too.
        let mut tensors = Tensors::new();
        for (n, d, s, b) in q.to_tensors("m.weight") {
            tensors.insert(n, Tensor::from_bytes(d, s, b).unwrap());
        }
        let state_key = format!("m.weight.{}", q.state.json_key());
        let (dense, spec) = crate::formats::bnb4::dequantize(&tensors, "m.weight").unwrap();
        assert_eq!(dense.shape, k.shape);
        k.assert_dequant("formats::bnb4::dequantize", &dense.to_f32().unwrap());
        let x = Tensor::from_f32(safetensors::Dtype::F32, k.shape.clone(), &k.x).unwrap();
        for (n, t) in crate::export::requant::quantize("m.weight", &x, &spec).unwrap() {
            let want = &tensors[&n];
            assert_eq!(
                (t.dtype, &t.shape),
                (want.dtype, &want.shape),
                "{name}: {n}"
            );
            if n == state_key {
                // JSON numbers may be spelled differently; the values must be equal.
                let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
                let (a, b) = (parse(t.bytes()), parse(want.bytes()));
                for f in [
                    "quant_type",
                    "blocksize",
                    "dtype",
                    "shape",
                    "nested_blocksize",
                ] {
                    assert_eq!(a[f], b[f], "{name}: requant state {f}");
                }
                let off = |v: &Value| v["nested_offset"].as_f64().map(|o| o as f32);
                assert_eq!(off(&a), off(&b), "{name}: requant nested_offset");
                continue;
            }
            assert_bytes_eq(&format!("{name}: requant {n}"), t.bytes(), want.bytes());
        }
    }
}

/// Linear4bit's tiled matmuls (forward x·Wᵀ, backward dX = dY·W) equal the dense matmul with
/// the dequantized weight (checked against bnb above) on every unaligned shape.
#[test]
fn unaligned_linear4bit_matmuls_match_dense() {
    for (i, c) in cases().iter().enumerate() {
        let k = case(c);
        let lin = Linear4bit::new(k.quantize()).unwrap();
        assert_matmuls_match_dense(&k.name, &lin, 3, 500 + 3 * i as u64);
    }
}
