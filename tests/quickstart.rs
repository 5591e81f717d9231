//! The quickstart recipe end to end on the shipped tiny model: LoRA
//! fine-tuning must visibly improve the held-out metrics, the merged export
//! must match base + adapter, and an unchanged re-run is fully cached.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn quickstart_improves_and_reruns_cached() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_recipe"))
            .args(["run", "recipes/quickstart.toml", "--cache-dir"])
            .arg(&cache)
            .arg("--set")
            .arg(format!("vars.output_dir={}", out.display()))
            .current_dir(&root)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{err}");

    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval/metrics.json")).unwrap()).unwrap();
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    // Margins: held-out loss at least halved, token accuracy up by 0.15 or more.
    assert!(f(&m["loss"]) < 0.5 * f(&m["base"]["loss"]), "{m}");
    assert!(
        f(&m["token_accuracy"]) > f(&m["base"]["token_accuracy"]) + 0.15,
        "{m}"
    );
    // The merged export equals base + adapter (f32 round-off only).
    let line = err
        .lines()
        .find(|l| l.contains("verify: max |logits"))
        .expect("verify line");
    let diff: f64 = line.rsplit("= ").next().unwrap().trim().parse().unwrap();
    assert!(diff < 1e-4, "{line}");
    for f in [
        "adapter/adapter_model.safetensors",
        "adapter/metrics.jsonl",
        "adapter/loss.png",
        "merged/config.json",
        "merged/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    assert!(err.contains("[answer] [0] "), "{err}");

    // Unchanged: every step cached.
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(err.matches(": cached (").count(), 9, "{err}");
    assert!(!err.contains(": ran ("), "{err}");
}
