//! probe
use recipe::cuda::{selftest, Gpu};

#[test]
fn norm_probe() {
    let gpu = Gpu::emulated(Some(env!("CARGO_TARGET_TMPDIR").into())).unwrap();
    for fam in ["quant4", "gemm4", "adamw8bit", "optim", "norm", "rope", "act", "embedding", "cross_entropy", "lm_head_ce", "attention", "cublas", "lora"] {
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        let r = selftest::kernel_families(&gpu, &mut out, |n| n.starts_with(fam));
        eprintln!("{fam}: {:?} {} checks", t.elapsed(), r.results.len());
    }
}
