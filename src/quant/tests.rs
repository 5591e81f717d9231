//! Checks against tests/fixtures/quant/quant4.json (bitsandbytes 0.50 on the CPU, see
//! tests/reference/quant_fixtures.py). Bytes and f32 bits must be identical.

use super::codes::{dynamic_map, fp4, QuantType, NF4};
use super::four_bit::{quantize_4bit, Absmax, Quantized4};
use super::linear::Linear4bit;
use super::testgen::gen;
use super::Blockwise8;
use crate::formats::bnb4::{py_float_repr, TensorRef};
use crate::quant::QuantLinear;
use serde_json::Value;
use std::collections::HashMap;

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub(crate) fn unhex_f32(s: &str) -> Vec<f32> {
    unhex(s)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The generator scale, stored as f64 hex (serde_json's float parsing may be off by an ulp).
fn scale(case: &Value) -> f64 {
    let b = unhex(case["scale_f64"].as_str().unwrap());
    f64::from_le_bytes(b[..8].try_into().unwrap())
}

fn fixture() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/quant4.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).expect("read quant4.json")).expect("json")
}

/// Bitwise equality of f32 slices, reporting the first mismatches.
pub(crate) fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<_> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .take(5)
        .map(|i| (i, got[i], want[i]))
        .collect();
    let count = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .count();
    assert!(
        bad.is_empty(),
        "{what}: {count} mismatches, first (i, got, want): {bad:?}"
    );
}

pub(crate) fn assert_bytes_eq(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<_> = (0..got.len())
        .filter(|&i| got[i] != want[i])
        .take(5)
        .map(|i| (i, got[i], want[i]))
        .collect();
    let count = (0..got.len()).filter(|&i| got[i] != want[i]).count();
    assert!(
        bad.is_empty(),
        "{what}: {count} mismatches, first (i, got, want): {bad:?}"
    );
}

#[test]
fn code_tables_match_bitsandbytes() {
    let fx = fixture();
    for case in fx["blockwise8"].as_array().unwrap() {
        let signed = case["signed"].as_bool().unwrap();
        assert_bits_eq(
            "dynamic map",
            &dynamic_map(signed),
            &unhex_f32(case["code"].as_str().unwrap()),
        );
    }
    for case in fx["cases"].as_array().unwrap() {
        let qt = QuantType::from_name(case["quant_type"].as_str().unwrap()).unwrap();
        assert_bits_eq(
            "quant_map",
            &qt.code(),
            &unhex_f32(case["quant_map"].as_str().unwrap()),
        );
    }
    assert_eq!(fp4()[2], 8.0f32 / 12.0);
    assert_eq!(NF4[7], 0.0);
}

#[test]
fn blockwise8_matches_bitsandbytes_cpu() {
    let fx = fixture();
    for case in fx["blockwise8"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let bs = case["blocksize"].as_u64().unwrap() as usize;
        let mut x = gen(case["seed"].as_u64().unwrap(), n, scale(case));
        if case["power"].as_i64().unwrap() == 4 {
            // two f32 squarings, as the script does
            x.iter_mut().for_each(|v| {
                let s = v.abs() * v.abs();
                *v = s * s
            });
        }
        let q8 = Blockwise8::new(dynamic_map(case["signed"].as_bool().unwrap()));
        let mut codes = vec![0u8; n];
        let mut absmax = vec![0f32; n.div_ceil(bs)];
        q8.quantize(&mut codes, &mut absmax, &x, bs);
        assert_bits_eq(name, &absmax, &unhex_f32(case["absmax"].as_str().unwrap()));
        assert_bytes_eq(name, &codes, &unhex(case["codes"].as_str().unwrap()));
        let mut dq = vec![0f32; n];
        q8.dequantize(&mut dq, &codes, &absmax, bs);
        assert_bits_eq(name, &dq, &unhex_f32(case["dequant"].as_str().unwrap()));
    }
}

fn case_input(case: &Value) -> (Vec<f32>, Vec<usize>) {
    let shape: Vec<usize> = case["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let n: usize = shape.iter().product();
    let name = case["name"].as_str().unwrap();
    let x = if let Some(h) = case.get("input") {
        unhex_f32(h.as_str().unwrap())
    } else {
        let mut x = gen(case["seed"].as_u64().unwrap(), n, scale(case));
        if name.contains("zero_blocks") {
            x[..64].fill(0.0);
            x[192..].fill(0.0);
        }
        x
    };
    (x, shape)
}

#[test]
fn quantize_4bit_matches_bitsandbytes_cpu() {
    let fx = fixture();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (x, shape) = case_input(case);
        let qt = QuantType::from_name(case["quant_type"].as_str().unwrap()).unwrap();
        let bs = case["blocksize"].as_u64().unwrap() as usize;
        let dq = case["double_quant"].as_bool().unwrap();
        let q = quantize_4bit(&x, &shape, bs, qt, dq, "float32").unwrap();
        assert_bytes_eq(name, &q.packed, &unhex(case["packed"].as_str().unwrap()));
        match &q.state.absmax {
            Absmax::Plain(a) => {
                assert_bits_eq(name, a, &unhex_f32(case["absmax"].as_str().unwrap()))
            }
            Absmax::Nested {
                codes,
                absmax2,
                offset,
                code,
                ..
            } => {
                assert_bits_eq(
                    name,
                    &[*offset],
                    &unhex_f32(case["offset"].as_str().unwrap()),
                );
                assert_bits_eq(
                    name,
                    absmax2,
                    &unhex_f32(case["nested_absmax"].as_str().unwrap()),
                );
                assert_bits_eq(
                    name,
                    code,
                    &unhex_f32(case["nested_code"].as_str().unwrap()),
                );
                assert_bytes_eq(name, codes, &unhex(case["absmax_u8"].as_str().unwrap()));
                assert_bits_eq(
                    name,
                    &q.state.absmax_f32(),
                    &unhex_f32(case["absmax_dequant"].as_str().unwrap()),
                );
            }
        }
        let stride = case["dequant_stride"].as_u64().unwrap() as usize;
        let deq: Vec<f32> = q.dequantize().into_iter().step_by(stride).collect();
        assert_bits_eq(name, &deq, &unhex_f32(case["dequant"].as_str().unwrap()));
        assert_eq!(
            q.state.to_json(),
            case["quant_state_json"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            q.state.json_key(),
            case["quant_state_key"].as_str().unwrap()
        );

        // safetensors layout round trip
        let tensors = q.to_tensors("m.weight");
        let map: HashMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(k, d, s, b)| (k, (d, s, b)))
            .collect();
        assert_eq!(
            map["m.weight"].1,
            case["packed_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect::<Vec<_>>()
        );
        let get = |k: &str| {
            map.get(k).map(|(d, s, b)| TensorRef {
                dtype: *d,
                shape: s.clone(),
                data: b,
            })
        };
        let back = Quantized4::from_tensors("m.weight", &get).unwrap();
        assert_eq!(back, q, "{name}: round trip");
    }
}

#[test]
fn python_float_repr() {
    for (x, s) in [
        (0.05961299687623978f64, "0.05961299687623978"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1.5e-7, "1.5e-07"),
        (2.0, "2.0"),
        (123456.0, "123456.0"),
        (1e16, "1e+16"),
        (-0.25, "-0.25"),
        (0.1f32 as f64, "0.10000000149011612"),
    ] {
        assert_eq!(py_float_repr(x), s);
    }
}

#[test]
fn bad_blocksize_is_an_error() {
    let e = quantize_4bit(&[1.0; 10], &[10], 48, QuantType::Nf4, false, "float32").unwrap_err();
    assert!(e.to_string().contains("invalid 4-bit blocksize 48"), "{e}");
    let q1 = quantize_4bit(&[1.0; 10], &[10], 64, QuantType::Nf4, false, "float32").unwrap();
    let e = Linear4bit::new(q1).err().unwrap();
    assert_eq!(
        e.to_string(),
        "quant state `shape`: a linear weight must be 2-D [out, in], got [10]"
    );
    let e = quantize_4bit(&[1.0; 10], &[3, 4], 64, QuantType::Nf4, false, "float32").unwrap_err();
    assert!(
        e.to_string().contains("12 elements but the data has 10"),
        "{e}"
    );
}

/// Linear4bit's y = x·Wᵀ and dx += dy·W against an f64 reference from its dequantized weight:
/// |got − want| ≤ 1e-5·(Σ|terms| + |want|) per element, n rows of inputs from `seed`.
pub(crate) fn assert_matmuls_match_dense(what: &str, lin: &Linear4bit, n: usize, seed: u64) {
    let (o, i) = (lin.out_features(), lin.in_features());
    let wd = lin.dequantize();
    let x = gen(seed, n * i, 1.0);
    let dy = gen(seed + 1, n * o, 1.0);
    let mut y = vec![f32::NAN; n * o];
    lin.matmul_xwt(&mut y, &x, n);
    let mut dx = vec![0.0f32; n * i]; // matmul_dyw accumulates
    lin.matmul_dyw(&mut dx, &dy, n);
    // got[r, c] vs Σ_k a(r, k)·b(k, c) in f64
    let check = |which: &str,
                 got: &[f32],
                 cols: usize,
                 inner: usize,
                 a: &dyn Fn(usize, usize) -> f64,
                 b: &dyn Fn(usize, usize) -> f64| {
        for r in 0..n {
            for c in 0..cols {
                let terms = (0..inner).map(|k| a(r, k) * b(k, c));
                let (want, scale) = terms.fold((0f64, 0f64), |(s, m), t| (s + t, m + t.abs()));
                let g = got[r * cols + c] as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * scale + 1e-5 * want.abs(),
                    "{what}: {which}[{r},{c}] {g} vs {want}"
                );
            }
        }
    };
    check("y", &y, o, i, &|r, k| x[r * i + k] as f64, &|k, c| {
        wd[c * i + k] as f64
    });
    check("dx", &dx, i, o, &|r, k| dy[r * o + k] as f64, &|k, c| {
        wd[k * i + c] as f64
    });
}

#[test]
fn linear4bit_matmuls_match_dense() {
    for (o, i, n, qt, dq, bs) in [
        (37usize, 50usize, 5usize, QuantType::Nf4, true, 64usize),
        (64, 33, 3, QuantType::Fp4, false, 32),
        (300, 257, 4, QuantType::Nf4, true, 128), // several tiles, odd row length
    ] {
        let w = gen(20, o * i, 0.05);
        let lin =
            Linear4bit::new(quantize_4bit(&w, &[o, i], bs, qt, dq, "float32").unwrap()).unwrap();
        assert_matmuls_match_dense(&format!("{o}x{i}"), &lin, n, 21);
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/quant/tiny_llama/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect(path)
}

/// Quantizing the f32 tiny LLaMA ourselves reproduces every 4-bit tensor transformers saved
/// with BitsAndBytesConfig(load_in_4bit=True) (NF4 + double quant, and FP4), byte for byte,
/// and the saved state loads back to the same Quantized4.
#[test]
fn transformers_load_in_4bit_save_is_reproduced() {
    let f32_bytes = read("f32/model.safetensors");
    let orig = safetensors::SafeTensors::deserialize(&f32_bytes).unwrap();
    for dir in ["nf4_dq", "fp4"] {
        let bytes = read(&format!("{dir}/model.safetensors"));
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let prefixes: Vec<String> = st
            .names()
            .into_iter()
            .filter_map(|k| k.split_once(".quant_state.").map(|(p, _)| p.to_string()))
            .collect();
        assert_eq!(prefixes.len(), 7, "{dir}: seven linear layers");
        let mut written = Vec::new();
        for prefix in &prefixes {
            let saved = Quantized4::from_safetensors(prefix, &st).unwrap();
            let w = orig.tensor(prefix).unwrap();
            let x: Vec<f32> = w
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let dq = matches!(saved.state.absmax, Absmax::Nested { .. });
            let ours = quantize_4bit(
                &x,
                w.shape(),
                saved.state.blocksize,
                saved.state.quant_type,
                dq,
                "float32",
            )
            .unwrap();
            assert_eq!(ours, saved, "{dir} {prefix}");
            for (name, dtype, shape, data) in ours.to_tensors(prefix) {
                let t = st
                    .tensor(&name)
                    .unwrap_or_else(|_| panic!("{dir}: no {name}"));
                assert_eq!(
                    (t.dtype(), t.shape()),
                    (dtype, shape.as_slice()),
                    "{dir} {name}"
                );
                assert_bytes_eq(&format!("{dir} {name}"), &data, t.data());
            }
            written.extend(ours.to_tensors(prefix));
        }
        // every tensor of the saved file that belongs to a 4-bit layer was produced by us
        let n4 = st
            .names()
            .iter()
            .filter(|k| prefixes.iter().any(|p| k.starts_with(p.as_str())))
            .count();
        assert_eq!(n4, written.len(), "{dir}: tensor count");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("q.safetensors");
        let tensors: Vec<(String, crate::formats::Tensor)> = written
            .into_iter()
            .map(|(n, d, s, b)| (n, crate::formats::Tensor::from_bytes(d, s, b).unwrap()))
            .collect();
        crate::formats::safetensors::write_file(
            &path,
            tensors.iter().map(|(n, t)| (n.as_str(), t)),
        )
        .unwrap();
        let again = std::fs::read(&path).unwrap();
        let back = safetensors::SafeTensors::deserialize(&again).unwrap();
        let q = Quantized4::from_safetensors(&prefixes[0], &back).unwrap();
        assert_eq!(q, Quantized4::from_safetensors(&prefixes[0], &st).unwrap());
    }
}

/// `cargo test --lib quant::tests::throughput -- --ignored --nocapture` prints rough numbers.
#[test]
#[ignore]
fn throughput() {
    eprintln!(
        "quantize NF4+dq: {:.2} GB/s of f32 input",
        crate::devtools::quant_bench::quantize_throughput(1 << 22, 3)
    );
    eprintln!(
        "matmul_xwt 64x2048x2048 NF4: {:.1} GFLOP/s",
        crate::devtools::quant_bench::matmul_throughput(64, 2048, 2048, 3)
    );
}
