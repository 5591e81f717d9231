//! GPU self-test and benchmark without the CLI:
//!   cargo run --release --example cuda_selftest -- selftest [ordinal]
//!   cargo run --release --example cuda_selftest -- bench [ordinal] [tokens]
//! Needs a CUDA driver and libnvrtc (eval "$(.ci/nvrtc.sh)" provides NVRTC and headers). Without a
//! driver it prints one error line and exits with status 2.

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("selftest");
    let ordinal: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut out = std::io::stdout();
    let result = match what {
        "selftest" => recipe::devtools::selftest::selftest(ordinal, &mut out).map(|r| r.passed()),
        "bench" => {
            let mut o = recipe::devtools::bench::BenchOptions::default();
            if let Some(t) = args.get(2).and_then(|s| s.parse().ok()) {
                o.tokens = t;
            }
            recipe::devtools::bench::bench(ordinal, &mut out, &o).map(|_| true)
        }
        other => {
            eprintln!("unknown command '{other}': expected selftest or bench");
            std::process::exit(2);
        }
    };
    let _ = out.flush();
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
