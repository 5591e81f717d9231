//! The fuzz targets (`recipe::fuzzing`, run long by `cargo fuzz`, see fuzz/Cargo.toml) in
//! `cargo test`: every input a fuzzer once crashed on (`tests/fuzz/<target>/`), every seed,
//! and a bounded, seeded mutation run over them. Each must return without panicking.
//!
//! `RECIPE_FUZZ_SECS` sets the mutation budget per target (default 2 s);
//! `RECIPE_FUZZ_SEED_DIR=DIR` makes `write_seed_corpora` write the seeds as cargo-fuzz corpora.

use recipe::fuzzing::{seed_bytes, Target, TARGETS};
use recipe::train::rng::Rng;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Seeds and regression inputs of one target, with their names.
fn inputs(t: &Target) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in t.seeds {
        let bytes = std::fs::read(root().join(s)).unwrap_or_else(|e| panic!("seed {s}: {e}"));
        let b = seed_bytes(t, &bytes).unwrap_or_else(|| panic!("seed {s} has no input"));
        out.push((s.to_string(), b));
    }
    let dir = root().join("tests/fuzz").join(t.name);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for f in files {
            let b = std::fs::read(&f).unwrap();
            out.push((f.display().to_string(), b));
        }
    }
    out
}

/// One random edit: flip, overwrite, insert, delete, duplicate a span, or truncate.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    let n = b.len();
    match rng.below(6) {
        0 if n > 0 => {
            let i = rng.below(n);
            b[i] ^= 1 << rng.below(8);
        }
        1 if n > 0 => {
            let i = rng.below(n);
            b[i] = [0u8, 0xff, b'"', b'{', b'[', b'\n', b'=', b'%'][rng.below(8)];
        }
        2 => {
            let i = rng.below(n + 1);
            b.insert(i, rng.next_u64() as u8);
        }
        3 if n > 0 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(16));
            b.drain(i..i + len);
        }
        4 if n > 0 => {
            let i = rng.below(n);
            let len = 1 + rng.below((n - i).min(64));
            let span: Vec<u8> = b[i..i + len].to_vec();
            let at = rng.below(n + 1);
            b.splice(at..at, span);
        }
        _ if n > 0 => b.truncate(rng.below(n)),
        _ => b.push(rng.next_u64() as u8),
    }
}

fn budget() -> Duration {
    let secs = std::env::var("RECIPE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn check_target(name: &str) {
    let t = TARGETS.iter().find(|t| t.name == name).expect("target");
    let ins = inputs(t);
    for (what, b) in &ins {
        eprintln!("{name}: {what}");
        (t.run)(b);
    }
    // Seeded mutations until the budget runs out (at least one pass over the inputs).
    let mut rng = Rng::new(0x5eed ^ name.len() as u64);
    let start = Instant::now();
    let mut runs = 0usize;
    while runs < ins.len() || start.elapsed() < budget() {
        let (_, base) = &ins[runs % ins.len()];
        let mut b = base.clone();
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut b);
        }
        (t.run)(&b);
        runs += 1;
    }
    eprintln!("{name}: {runs} mutated inputs");
}

#[test]
fn recipe_toml() {
    check_target("recipe_toml");
}
#[test]
fn data_jsonl() {
    check_target("data_jsonl");
}
#[test]
fn data_csv() {
    check_target("data_csv");
}
#[test]
fn data_parquet() {
    check_target("data_parquet");
}
#[test]
fn safetensors_header() {
    check_target("safetensors_header");
}
#[test]
fn torch_bin() {
    check_target("torch_bin");
}
#[test]
fn sentencepiece_model() {
    check_target("sentencepiece_model");
}
#[test]
fn tokenizer_json() {
    check_target("tokenizer_json");
}
#[test]
fn jinja_template() {
    check_target("jinja_template");
}

#[test]
fn every_target_has_a_test() {
    let src = std::fs::read_to_string(root().join("tests/fuzz_regressions.rs")).unwrap();
    for t in TARGETS {
        assert!(
            src.contains(&format!("fn {}()", t.name)),
            "{} has no test",
            t.name
        );
        let f = root()
            .join("fuzz/fuzz_targets")
            .join(format!("{}.rs", t.name));
        assert!(f.exists(), "{} has no fuzz target file", t.name);
    }
}

/// `RECIPE_FUZZ_SEED_DIR=DIR`: writes DIR/<target>/<n> for every input (fuzz/seed.sh).
#[test]
fn write_seed_corpora() {
    let Ok(dir) = std::env::var("RECIPE_FUZZ_SEED_DIR") else {
        return;
    };
    for t in TARGETS {
        let d = Path::new(&dir).join(t.name);
        std::fs::create_dir_all(&d).unwrap();
        for (i, (_, b)) in inputs(t).iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), b).unwrap();
        }
    }
}
