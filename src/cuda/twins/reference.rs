//! The twins against bitsandbytes and torch (tests/fixtures/cuda/twins.json, made by
//! tests/reference/cuda_twins.py with torch 2.15 and bitsandbytes 0.50.2 on the CPU).

use serde_json::Value;

use super::testutil::assert_close;

fn fixture() -> Value {
    serde_json::from_str(include_str!("../../../tests/fixtures/cuda/twins.json"))
        .expect("twins.json parses")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

#[test]
fn dynamic_maps_equal_bnb() {
    let fx = fixture();
    assert_close(
        &super::adamw8bit::dynamic_map(true),
        &f32s(&fx["dynamic_map_signed"]),
        1e-7,
        1e-6,
        "signed map",
    );
    assert_close(
        &super::adamw8bit::dynamic_map(false),
        &f32s(&fx["dynamic_map_unsigned"]),
        1e-7,
        1e-6,
        "unsigned map",
    );
}

#[test]
fn nf4_quantize_and_dequant_equal_bnb() {
    let fx = &fixture()["nf4"];
    let x = f32s(&fx["x"]);
    let (packed, absmax) = super::quant4::quantize_4bit(&x, 64, &super::quant4::NF4_CODE);
    let want_packed: Vec<u8> = fx["packed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(packed, want_packed);
    assert_close(&absmax, &f32s(&fx["absmax"]), 0.0, 1e-7, "absmax");
    let mut out = vec![0f32; x.len()];
    super::quant4::dequant_4bit(&mut out, &packed, &absmax, &super::quant4::NF4_CODE, 64);
    assert_close(&out, &f32s(&fx["dequant"]), 1e-6, 1e-6, "dequant");
}

#[test]
fn attention_equals_torch_sdpa_with_gqa() {
    let fx = &fixture()["attention"];
    let d: Vec<usize> = fx["dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let dm = super::attention::AttnDims {
        batch: d[0],
        t: d[1],
        hq: d[2],
        hkv: d[3],
        d: d[4],
        scale: 1.0 / (d[4] as f32).sqrt(),
    };
    let (q, k, v) = (f32s(&fx["q"]), f32s(&fx["k"]), f32s(&fx["v"]));
    let (mut o, mut lse) = (vec![0f32; q.len()], vec![0f32; dm.batch * dm.hq * dm.t]);
    super::attention::attn_fwd(&mut o, &mut lse, &q, &k, &v, &Default::default(), &dm);
    assert_close(&o, &f32s(&fx["o"]), 1e-5, 1e-5, "attention vs sdpa");
}

#[test]
fn cross_entropy_equals_torch() {
    let fx = &fixture()["cross_entropy"];
    let v = fx["v"].as_u64().unwrap() as usize;
    let z = f32s(&fx["logits"]);
    let t: Vec<i32> = fx["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect();
    let (mut loss, mut lse) = (vec![0f32; t.len()], vec![0f32; t.len()]);
    super::cross_entropy::cross_entropy_fwd(&mut loss, &mut lse, &z, &t, v);
    assert_close(&loss, &f32s(&fx["loss"]), 1e-5, 1e-5, "ce vs torch");
}
