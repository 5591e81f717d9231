//! probe
use recipe::cuda::{selftest, Gpu};

#[test]
fn norm_probe() {
    let gpu = Gpu::emulated(Some(env!("CARGO_TARGET_TMPDIR").into())).unwrap();
    let t = std::time::Instant::now();
    let mut out = Vec::new();
    let r = selftest::kernel_families(&gpu, &mut out, |n| n.starts_with(&std::env::var("FAM").unwrap_or("norm".into())));
    eprintln!("{}", String::from_utf8_lossy(&out));
    eprintln!("{:?}", t.elapsed());
    assert!(r.passed());
}
