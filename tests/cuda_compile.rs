//! Compiles every kernels/*.cu file with NVRTC for sm_80 and sm_90 (PTX, plus a CUBIN for sm_90)
//! and checks that every expected `extern "C"` function is in the output. Needs no GPU: NVRTC and
//! the CUDA headers come from pip wheels (`eval "$(.ci/nvrtc.sh)"`). Without a loadable libnvrtc
//! the test prints a skip message and passes, unless RECIPE_REQUIRE_NVRTC=1 (CI sets it).

use recipe::cuda::kernels::ALL;
use recipe::cuda::nvrtc::{compile, nvrtc_available, nvrtc_version, Target};

fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    if std::env::var("RECIPE_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("RECIPE_REQUIRE_NVRTC=1 but libnvrtc is not loadable: run `eval \"$(.ci/nvrtc.sh)\"` first");
    }
    eprintln!("SKIP cuda_compile: libnvrtc not loadable (eval \"$(.ci/nvrtc.sh)\" to enable)");
    false
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    eprintln!("NVRTC {:?}", nvrtc_version().unwrap());
    let mut failures = Vec::new();
    for file in ALL {
        for (cc, target) in [
            ((8, 0), Target::Ptx),
            ((9, 0), Target::Ptx),
            ((9, 0), Target::Cubin),
        ] {
            match compile(file, cc, target, None) {
                Ok(image) => {
                    for f in file.functions {
                        if !image.defines(f) {
                            failures.push(format!(
                                "{}.cu {cc:?} {target:?}: function {f} missing",
                                file.name
                            ));
                        }
                    }
                    if let recipe::cuda::nvrtc::Image::Ptx(p) = &image {
                        let entries = p.matches(".entry ").count();
                        if entries != file.functions.len() {
                            failures.push(format!(
                                "{}.cu: {} entries in PTX, {} listed in kernels.rs",
                                file.name,
                                entries,
                                file.functions.len()
                            ));
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The dequant-GEMM and the fused attention really use the bf16 tensor-core instruction, the
/// fused attention reads its operands by ldmatrix (plain and transposed) and stages bf16 tiles
/// by cp.async, and `defines` can say no.
#[test]
fn gemm_uses_mma_and_missing_names_are_reported() {
    if !nvrtc_or_skip() {
        return;
    }
    for file in [recipe::cuda::kernels::GEMM4, recipe::cuda::kernels::FLASH] {
        match compile(&file, (9, 0), Target::Ptx, None).unwrap() {
            recipe::cuda::nvrtc::Image::Ptx(p) => assert!(
                p.contains("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"),
                "{}.cu has no bf16 mma",
                file.name
            ),
            _ => panic!("expected PTX"),
        }
    }
    match compile(&recipe::cuda::kernels::FLASH, (9, 0), Target::Ptx, None).unwrap() {
        recipe::cuda::nvrtc::Image::Ptx(p) => {
            for ins in [
                "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
                "cp.async.cg.shared.global",
                "cp.async.wait_group",
            ] {
                assert!(p.contains(ins), "flash.cu has no {ins}");
            }
        }
        _ => panic!("expected PTX"),
    }
    let ptx = compile(&recipe::cuda::kernels::GEMM4, (9, 0), Target::Ptx, None).unwrap();
    assert!(!ptx.defines("no_such_kernel"));
    let cubin = compile(&recipe::cuda::kernels::GEMM4, (9, 0), Target::Cubin, None).unwrap();
    assert!(cubin.defines("gemm_4bit_bf16") && !cubin.defines("no_such_kernel"));
}

#[test]
fn compile_cache_round_trips() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = &recipe::cuda::kernels::QUANT4;
    let a = compile(file, (8, 0), Target::Ptx, Some(dir.path())).unwrap();
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].extension().unwrap() == "ptx");
    let b = compile(file, (8, 0), Target::Ptx, Some(dir.path())).unwrap();
    match (a, b) {
        (recipe::cuda::nvrtc::Image::Ptx(a), recipe::cuda::nvrtc::Image::Ptx(b)) => {
            assert_eq!(a, b)
        }
        _ => panic!("expected PTX"),
    }
}

/// An unwritable kernel cache is a warning, not an error: the kernel still compiles.
#[test]
fn an_unwritable_cache_still_compiles() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let image = compile(
        &recipe::cuda::kernels::TENSOR,
        (8, 0),
        Target::Ptx,
        Some(&file.join("x")),
    )
    .expect("compiles without its cache");
    assert!(image.defines("copy2d_f32"));
}

#[test]
fn compile_errors_name_the_file() {
    if !nvrtc_or_skip() {
        return;
    }
    let bad = recipe::cuda::kernels::KernelFile {
        name: "broken",
        source: "extern \"C\" __global__ void f() { undefined_thing(); }",
        functions: &["f"],
    };
    let e = compile(&bad, (8, 0), Target::Ptx, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("NVRTC failed to compile kernels/broken.cu for compute_80"),
        "{e}"
    );
    assert!(e.contains("undefined_thing"), "{e}");
}

/// What ptxas reports for the hot kernels on sm_90: registers per thread and spills. The fused
/// attention (kernels/flash.cu) and the 4-bit GEMM hold their fragments and accumulators in
/// registers, the 4-bit and 16-bit GEMVs their decoded weights; a spill would put them in local memory on every
/// tile. Printed, and no kernel of flash.cu, gemm4.cu, quant4.cu or tensor.cu spills.
#[test]
fn hot_kernels_do_not_spill() {
    if !nvrtc_or_skip() {
        return;
    }
    use recipe::cuda::kernels::{FLASH, GEMM4, QUANT4, TENSOR};
    let mut spills = Vec::new();
    for file in [FLASH, GEMM4, QUANT4, TENSOR] {
        let log = recipe::cuda::nvrtc::ptxas_report(&file, (9, 0)).unwrap();
        let mut name = String::new();
        let mut seen = 0;
        for line in log.lines() {
            if let Some(rest) = line.split("entry function '").nth(1) {
                name = rest.split('\'').next().unwrap_or(rest).to_string();
            }
            if line.contains("spill stores") {
                seen += 1;
                println!("{}.cu {name}: {}", file.name, line.trim());
                if !(line.contains(" 0 bytes spill stores")
                    && line.contains(" 0 bytes spill loads"))
                {
                    spills.push(format!("{name}: {}", line.trim()));
                }
            }
            if line.contains("Used") && line.contains("registers") {
                println!("{}.cu {name}: {}", file.name, line.trim());
            }
        }
        assert_eq!(seen, file.functions.len(), "one report per kernel:\n{log}");
    }
    assert!(
        spills.is_empty(),
        "kernels that spill:\n{}",
        spills.join("\n")
    );
}
