//! The optimizer and `crate::optim`'s rules checked against tests/fixtures/quant/optim.json (torch 2.15 AdamW, bitsandbytes 0.50
//! AdamW8bit on the CPU, transformers 5.23 get_scheduler, torch clip_grad_norm_).

use super::optimizer::{clip_grad_norm, Optimizer, ParamState};
use crate::backend::{Backend, CpuBackend, Tensor};
use crate::optim::{warmup_steps, OptimConfig, OptimKind, Schedule, ScheduleKind};
use crate::quant::testgen::gen;
use crate::quant::tests::{assert_bits_eq as bits_eq, unhex, unhex_f32};
use serde_json::Value;
use std::sync::Arc;

fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend)
}

/// One step on host vectors (as CPU-backend tensors).
fn step_vecs(opt: &mut Optimizer, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
    let mut pt: Vec<Tensor> = params
        .iter_mut()
        .map(|p| Tensor::from_host(std::mem::take(p)))
        .collect();
    let gt: Vec<Tensor> = grads.iter().map(|g| Tensor::from_host(g.clone())).collect();
    let mut pr: Vec<&mut Tensor> = pt.iter_mut().collect();
    let gr: Vec<&Tensor> = gt.iter().collect();
    opt.step(&mut pr, &gr, lr);
    for (p, t) in params.iter_mut().zip(pt) {
        *p = t.into_host();
    }
}

/// Everything an optimizer holds, as bytes (for equality).
fn snapshot(o: &Optimizer) -> (OptimKind, OptimConfig, u64, Vec<Vec<u8>>) {
    let f = |t: &Tensor| -> Vec<u8> { t.host().iter().flat_map(|x| x.to_le_bytes()).collect() };
    let states = o
        .states
        .iter()
        .flat_map(|s| match s {
            ParamState::F32 { m, v } => vec![b"f".to_vec(), f(m), f(v)],
            ParamState::Bnb32 { m, v } => vec![b"b".to_vec(), f(m), f(v)],
            ParamState::Q8(q) => vec![q.m.to_vec(), q.v.to_vec(), f(&q.absmax_m), f(&q.absmax_v)],
        })
        .collect();
    (o.kind, o.config.clone(), o.step, states)
}

/// One f64 stored as hex of its little-endian bytes.
fn f64_hex(v: &Value) -> f64 {
    f64s_hex(v)[0]
}

fn f64s_hex(v: &Value) -> Vec<f64> {
    unhex(v.as_str().expect("hex string"))
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Within `max_ulps` units in the last place (torch's sqrt is off by one ulp at times).
fn ulps_close(what: &str, got: &[f32], want: &[f32], max_ulps: i64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let ulps = |a: f32, b: f32| ((a.to_bits() as i32 as i64) - (b.to_bits() as i32 as i64)).abs();
    let bad: Vec<_> = (0..got.len())
        .filter(|&i| ulps(got[i], want[i]) > max_ulps)
        .map(|i| (i, got[i], want[i]))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} beyond {max_ulps} ulps, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

fn fixture() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/quant/optim.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).expect("read optim.json")).expect("json")
}

fn sizes(v: &Value) -> Vec<usize> {
    v["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap() as usize)
        .collect()
}

/// Parameters and grads the script made: params gen(param_seed + i, n, 1.0),
/// grads at step s gen(grad_seed + 100·s + i, n, 0.5).
fn run(
    kind: OptimKind,
    fx: &Value,
    check: impl Fn(usize, &Optimizer, &[Vec<f32>], &Value),
) -> Optimizer {
    let sizes = sizes(fx);
    let ps = fx["param_seed"].as_u64().unwrap();
    let gs = fx["grad_seed"].as_u64().unwrap();
    // the script's constants (written here exactly; JSON parsing may be off by an ulp)
    let cfg = OptimConfig {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.01,
        min_8bit_size: 4096,
    };
    assert!((fx["betas"][1].as_f64().unwrap() - 0.999).abs() < 1e-12);
    assert!((fx["weight_decay"].as_f64().unwrap() - 0.01).abs() < 1e-12);
    let mut params: Vec<Vec<f32>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| gen(ps + i as u64, n, 1.0))
        .collect();
    let mut opt = Optimizer::new(cpu(), kind, &cfg, &sizes);
    for (s, step) in fx["steps"].as_array().unwrap().iter().enumerate() {
        let grads: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| gen(gs + 100 * s as u64 + i as u64, n, 0.5))
            .collect();
        step_vecs(&mut opt, &mut params, &grads, f64_hex(&step["lr_f64"]));
        check(s, &opt, &params, step);
    }
    opt
}

#[test]
fn adamw_matches_torch_bitwise() {
    let fx = fixture();
    run(OptimKind::AdamW, &fx["adamw"], |s, opt, params, want| {
        for (i, p) in params.iter().enumerate() {
            ulps_close(
                &format!("step {s} param {i}"),
                p,
                &unhex_f32(want["params"][i].as_str().unwrap()),
                4,
            );
            let ParamState::F32 { m, v } = &opt.states[i] else {
                panic!("f32 state")
            };
            bits_eq(
                &format!("step {s} exp_avg {i}"),
                m.host(),
                &unhex_f32(want["exp_avg"][i].as_str().unwrap()),
            );
            bits_eq(
                &format!("step {s} exp_avg_sq {i}"),
                v.host(),
                &unhex_f32(want["exp_avg_sq"][i].as_str().unwrap()),
            );
        }
    });
}

#[test]
fn adamw8bit_matches_bitsandbytes_cpu() {
    let fx = fixture();
    run(
        OptimKind::AdamW8bit,
        &fx["adamw8bit"],
        |s, opt, params, want| {
            let ParamState::Q8(q) = &opt.states[0] else {
                panic!("8-bit state for 4128 elements")
            };
            assert_eq!(
                q.m.host(),
                unhex(want["state1"].as_str().unwrap()),
                "step {s} state1 codes"
            );
            assert_eq!(
                q.v.host(),
                unhex(want["state2"].as_str().unwrap()),
                "step {s} state2 codes"
            );
            bits_eq(
                &format!("step {s} absmax1"),
                q.absmax_m.host(),
                &unhex_f32(want["absmax1"].as_str().unwrap()),
            );
            bits_eq(
                &format!("step {s} absmax2"),
                q.absmax_v.host(),
                &unhex_f32(want["absmax2"].as_str().unwrap()),
            );
            let ParamState::Bnb32 { m, v } = &opt.states[1] else {
                panic!("32-bit state for 96")
            };
            bits_eq(
                &format!("step {s} small m"),
                m.host(),
                &unhex_f32(want["small_m"].as_str().unwrap()),
            );
            bits_eq(
                &format!("step {s} small v"),
                v.host(),
                &unhex_f32(want["small_v"].as_str().unwrap()),
            );
            for (i, p) in params.iter().enumerate() {
                ulps_close(
                    &format!("step {s} param {i}"),
                    p,
                    &unhex_f32(want["params"][i].as_str().unwrap()),
                    4,
                );
            }
        },
    );
}

#[test]
fn schedules_match_transformers() {
    let fx = fixture();
    for s in fx["schedules"].as_array().unwrap() {
        let kind = ScheduleKind::from_name(s["kind"].as_str().unwrap()).unwrap();
        let total = s["total"].as_u64().unwrap() as usize;
        let sched = Schedule::new(kind, total, s["warmup"].as_u64().unwrap() as usize);
        let base = f64_hex(&s["base_lr_f64"]);
        for (k, want) in f64s_hex(&s["lrs_f64"]).into_iter().enumerate() {
            assert_eq!(
                sched.lr(k, base).to_bits(),
                want.to_bits(),
                "{kind:?} step {k}: {} vs {want}",
                sched.lr(k, base)
            );
        }
    }
    assert_eq!(
        warmup_steps(100, 0.03),
        fx["warmup_ratio_0.03_of_100"].as_u64().unwrap() as usize
    );
    assert_eq!(warmup_steps(100, 0.03), 3);
    assert_eq!(warmup_steps(37, 0.1), 4); // ceil(3.7000000000000006)
    assert_eq!(warmup_steps(1000, 10.0), 10);
}

#[test]
fn clip_matches_torch() {
    let fx = fixture();
    for c in fx["clip"].as_array().unwrap() {
        let seed = c["seed"].as_u64().unwrap();
        let mut grads: Vec<Vec<f32>> = sizes(c)
            .iter()
            .enumerate()
            .map(|(i, &n)| gen(seed + i as u64, n, f64_hex(&c["scale_f64"])))
            .collect();
        let mut gt: Vec<Tensor> = grads.drain(..).map(Tensor::from_host).collect();
        let mut gr: Vec<&mut Tensor> = gt.iter_mut().collect();
        let total = clip_grad_norm(
            &CpuBackend,
            &mut gr,
            Some(c["max_norm"].as_f64().unwrap() as f32),
        );
        let grads: Vec<Vec<f32>> = gt.into_iter().map(Tensor::into_host).collect();
        let want = unhex_f32(c["total_norm"].as_str().unwrap())[0];
        assert!(
            (total - want).abs() <= 2e-7 * want,
            "total norm {total} vs {want}"
        );
        for (i, g) in grads.iter().enumerate() {
            for (a, b) in g.iter().zip(unhex_f32(c["grads"][i].as_str().unwrap())) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs() + 1e-12,
                    "grad {i}: {a} vs {b}"
                );
            }
        }
    }
}

/// Save after 2 steps, load, take 2 more: identical to 4 uninterrupted steps.
#[test]
fn resume_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [OptimKind::AdamW, OptimKind::PagedAdamW8bit] {
        let sizes = [5000usize, 33];
        let cfg = OptimConfig {
            weight_decay: 0.01,
            ..OptimConfig::default()
        };
        let init: Vec<Vec<f32>> = sizes.iter().map(|&n| gen(7, n, 1.0)).collect();
        let steps = |opt: &mut Optimizer, p: &mut Vec<Vec<f32>>, range: std::ops::Range<u64>| {
            for s in range {
                let g: Vec<Vec<f32>> = sizes.iter().map(|&n| gen(100 + s, n, 0.3)).collect();
                step_vecs(opt, p, &g, 1e-3);
            }
        };
        let (mut a, mut pa) = (Optimizer::new(cpu(), kind, &cfg, &sizes), init.clone());
        steps(&mut a, &mut pa, 0..4);
        let (mut b, mut pb) = (Optimizer::new(cpu(), kind, &cfg, &sizes), init.clone());
        steps(&mut b, &mut pb, 0..2);
        let path = dir.path().join(format!("{}.safetensors", kind.name()));
        b.save(&path).unwrap();
        let mut c = Optimizer::load(cpu(), &path).unwrap();
        assert_eq!(snapshot(&c), snapshot(&b));
        c.check_sizes(&sizes).unwrap();
        assert!(c.check_sizes(&[1, 2]).is_err());
        steps(&mut c, &mut pb, 2..4);
        assert_eq!(snapshot(&c), snapshot(&a));
        for (x, y) in pa.iter().zip(&pb) {
            bits_eq("resumed params", y, x);
        }
    }
}

/// 200 steps on a diagonal least-squares problem (8192 weights, so the 8-bit path):
/// L(x) = mean_i ½·h_i·(x_i − t_i)². At lr 3e-3 the 8-bit loss stays within 2% of f32 AdamW at
/// every 10th step. Both runs also reproduce the curves of torch AdamW / bnb AdamW8bit on the
/// same problem (numbers below from torch 2.15 + bitsandbytes 0.50 on the CPU); at lr 1e-2 the
/// 8-bit run ends 6.7% lower than f32 in bitsandbytes as well.
#[test]
fn adamw8bit_tracks_f32_on_least_squares() {
    let n = 8192;
    let h: Vec<f32> = gen(1, n, 1.0).iter().map(|v| v.abs() * 2.0 + 0.2).collect();
    let target = gen(2, n, 2.0);
    let loss = |x: &[f32]| -> f64 {
        x.iter()
            .zip(&target)
            .zip(&h)
            .map(|((&x, &t), &h)| 0.5 * h as f64 * ((x as f64) - (t as f64)).powi(2))
            .sum::<f64>()
            / n as f64
    };
    // (lr, step, torch AdamW loss, bnb AdamW8bit loss)
    let reference = [
        (1e-2, 9, 0.43138915162877284, 0.43142573787869354),
        (1e-2, 109, 0.07921883499739514, 0.07756962884310917),
        (1e-2, 199, 0.01659756206282506, 0.015492002965226402),
        (3e-3, 9, 0.48435080293765154, 0.48440909328052467),
        (3e-3, 109, 0.2970261665124534, 0.2960656192234788),
        (3e-3, 199, 0.1920450453501446, 0.1894020297563583),
    ];
    let cfg = OptimConfig::default();
    for lr in [1e-2, 3e-3] {
        let mut runs = Vec::new();
        for kind in [OptimKind::AdamW, OptimKind::AdamW8bit] {
            let mut x = vec![0f32; n];
            let mut opt = Optimizer::new(cpu(), kind, &cfg, &[n]);
            let mut losses = Vec::new();
            for _ in 0..200 {
                let g: Vec<f32> = x
                    .iter()
                    .zip(&target)
                    .zip(&h)
                    .map(|((&x, &t), &h)| h * (x - t))
                    .collect();
                let mut xs = [std::mem::take(&mut x)];
                step_vecs(&mut opt, &mut xs, &[g], lr);
                let [xv] = xs;
                x = xv;
                losses.push(loss(&x));
            }
            runs.push(losses);
        }
        for &(rlr, k, want32, want8) in reference.iter().filter(|r| r.0 == lr) {
            let _ = rlr;
            assert!(
                (runs[0][k] - want32).abs() <= 1e-6 * want32,
                "lr {lr} step {k}: f32 {} vs torch {want32}",
                runs[0][k]
            );
            assert!(
                (runs[1][k] - want8).abs() <= 1e-6 * want8,
                "lr {lr} step {k}: 8-bit {} vs bnb {want8}",
                runs[1][k]
            );
        }
        if lr == 3e-3 {
            assert!(runs[0][199] < 0.5 * runs[0][0], "f32 AdamW made progress");
            for k in (9..200).step_by(10) {
                let rel = (runs[1][k] - runs[0][k]).abs() / runs[0][k];
                assert!(
                    rel < 0.02,
                    "step {k}: 8-bit loss {} vs f32 {} ({:.2}%)",
                    runs[1][k],
                    runs[0][k],
                    rel * 100.0
                );
            }
        }
    }
}

#[test]
fn optimizer_names() {
    assert_eq!(
        OptimKind::from_name("paged_adamw_8bit").unwrap(),
        OptimKind::PagedAdamW8bit
    );
    assert_eq!(
        OptimKind::from_name("adamw_torch").unwrap(),
        OptimKind::AdamW
    );
    let e = OptimKind::from_name("sgd").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown optimizer `sgd` (expected adamw_torch, adamw_8bit or paged_adamw_8bit)"
    );
}
