//! Bad inputs around training health, weights, templates and data (issue 16, findings 5-10),
//! through the `recipe` binary: each case is a workspace (files), a command, the exit code
//! and the exact lines its stderr must hold (and text it must not).

use std::path::Path;

mod common;
use common::*;

struct Case {
    name: &'static str,
    /// (path, content); content gets `{BASE}`, `{DATA}` and `{PIPELINE}` expanded.
    files: &'static [(&'static str, &'static str)],
    /// Run before the command (e.g. damage a model file).
    setup: Option<fn(&Path)>,
    args: &'static [&'static str],
    code: i32,
    /// Lines (or line fragments) stderr must contain, each checked with `contains`.
    stderr: &'static [&'static str],
    /// Text stderr must not contain.
    not: &'static [&'static str],
}

fn check(c: &Case) {
    let d = tempfile::tempdir().unwrap();
    for (name, body) in c.files {
        write(
            d.path(),
            name,
            &expand(&body.replace("{PIPELINE}", PIPELINE)),
        );
    }
    if let Some(f) = c.setup {
        f(d.path());
    }
    let o = run(d.path(), c.args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(c.code), "{}: {err}", c.name);
    for want in c.stderr {
        let want = expand(want);
        assert!(
            err.contains(&want),
            "{}: missing {want:?} in\n{err}",
            c.name
        );
    }
    for bad in c.not {
        assert!(
            !err.contains(bad),
            "{}: unexpected {bad:?} in\n{err}",
            c.name
        );
    }
}

/// Copy the shipped model into `dir/model` with `value` written into `tensor`'s element 3.
fn poisoned_model(dir: &Path, tensor: &str, value: f32) {
    clean_copy(dir);
    let p = dir.join("model/model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    let at = 8 + n + start + 3 * 4;
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
}

/// A copy of the shipped model in `dir/model` (an identical copy would share the original's
/// cache entry, and so its path).
fn clean_copy(dir: &Path) {
    let src = root().join("examples/quickstart/base");
    let dst = dir.join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

const NAN_TENSOR: &str = "model.layers.1.mlp.up_proj.weight";

fn nan_model(dir: &Path) {
    poisoned_model(dir, NAN_TENSOR, f32::NAN);
}

/// Another base of the same shapes (one weight differs, so it is not the same cache entry).
fn other_base(dir: &Path) {
    poisoned_model(dir, NAN_TENSOR, 0.5);
}

static CASES: &[Case] = &[
    // --- finding 5: 0 optimizer steps is a validation error naming the key
    Case {
        name: "negative num_epochs",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nnum_epochs = -3\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `train`, key `num_epochs`: must be positive (or set max_steps)",
            "  = got: -3",
        ],
        not: &[],
    },
    Case {
        name: "negative max_steps",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nmax_steps = -5\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `train`, key `max_steps`: must be a positive step count, or -1 to use num_epochs",
            "  = got: -5",
        ],
        not: &[],
    },
    // --- finding 5: a diverging run warns; a non-finite one stops and names no checkpoint
    Case {
        name: "huge learning rate warns about divergence",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nlearning_rate = 1e6\nmax_steps = 8\nlogging_steps = 2\n",
        )],
        setup: None,
        args: &["run", "r.toml"],
        code: 0,
        stderr: &[
            "  [train] WARNING: the training loss ended above where it started (",
            "): the run diverged; lower learning_rate\n",
        ],
        not: &[],
    },
    Case {
        name: "overflowing learning rate stops at step 1",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nlearning_rate = 1e38\nmax_steps = 8\nsave_steps = 2\n",
        )],
        setup: None,
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "error: step `train` (train) failed: trainable tensor `model.layers.0.self_attn.q_proj.lora_A.weight` became non-finite at step 1 (learning rate 1.000e38); stopped. Training diverged: no checkpoint was written before it. Lower learning_rate\n",
        ],
        not: &[],
    },
    // --- finding 6: NaN weights are refused, naming the tensor
    Case {
        name: "generate refuses NaN weights",
        files: &[(
            "r.toml",
            "[steps.m]\nkind = \"load.model\"\npath = \"model\"\n\n[steps.g]\nkind = \"generate\"\nmodel = \"m\"\nprompts = [\"hi\"]\ntemplate = \"human_assistant\"\nmax_new_tokens = 2\n",
        )],
        setup: Some(nan_model),
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "tensor `model.layers.1.mlp.up_proj.weight` holds NaN (element 3): the weights are broken (a diverged training run?); refusing to use them",
        ],
        not: &[],
    },
    Case {
        name: "export refuses NaN weights",
        files: &[(
            "r.toml",
            "[steps.m]\nkind = \"load.model\"\npath = \"model\"\n\n[steps.x]\nkind = \"export\"\nmodel = \"m\"\noutput = \"out\"\n",
        )],
        setup: Some(nan_model),
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "tensor `model.layers.1.mlp.up_proj.weight` holds NaN (element 3)",
        ],
        not: &[],
    },
    Case {
        name: "merge refuses a NaN base",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nmax_steps = 1\n\n[steps.m]\nkind = \"load.model\"\npath = \"model\"\n\n[steps.merged]\nkind = \"merge\"\nmodel = \"m\"\nadapter = \"train\"\n",
        )],
        setup: Some(nan_model),
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "/model: tensor `model.layers.1.mlp.up_proj.weight` holds NaN (element 3): the weights are broken",
        ],
        not: &[],
    },
    Case {
        name: "evaluate refuses a NaN base",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.m]\nkind = \"load.model\"\npath = \"model\"\n\n[steps.ev]\nkind = \"evaluate\"\nmodel = \"m\"\ndata = \"tokens\"\nmetrics = [\"loss\"]\n",
        )],
        setup: Some(nan_model),
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "/model: tensor `model.layers.1.mlp.up_proj.weight` holds NaN (element 3): the weights are broken",
        ],
        not: &[],
    },
    Case {
        name: "export logit check fails above its tolerance",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nmax_steps = 1\n\n[steps.merged]\nkind = \"merge\"\nmodel = \"base\"\nadapter = \"train\"\ndtype = \"bf16\"\n\n[steps.x]\nkind = \"export\"\nmodel = \"merged\"\nverify_tolerance = 1e-9\noutput = \"out\"\n",
        )],
        setup: None,
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "error: step `x` (export) failed: verify: max |logits(export) - logits(base + adapter)| = ",
            ", above the tolerance 1.000e-9: the exported model does not compute what base + adapter does (key `verify_tolerance` sets the limit)\n",
        ],
        not: &[],
    },
    Case {
        name: "negative verify_tolerance",
        files: &[(
            "r.toml",
            "[steps.m]\nkind = \"load.model\"\npath = \"{BASE}\"\n\n[steps.x]\nkind = \"export\"\nmodel = \"m\"\nverify_tolerance = -1.0\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &["error: step `x`, key `verify_tolerance`: must be a finite number >= 0\n"],
        not: &[],
    },
    // --- finding 9: an adapter merged into another base of the same shapes warns
    Case {
        name: "merge into another base of the same shapes",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\nmax_steps = 1\n\n[steps.m]\nkind = \"load.model\"\npath = \"model\"\n\n[steps.merged]\nkind = \"merge\"\nmodel = \"m\"\nadapter = \"train\"\n",
        )],
        setup: Some(other_base),
        args: &["run", "r.toml"],
        code: 0,
        stderr: &[
            "  [merged] WARNING: the adapter in `",
            "` was trained on `{BASE}`, not on `",
            "/model`; its shapes fit, so it is applied, but check that this is the base you meant\n",
        ],
        not: &[],
    },
    // --- finding 7: `source` is inline Jinja only; `file` quotes nothing of the file
    Case {
        name: "source naming a file",
        files: &[(
            "r.toml",
            "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\n\n[steps.p]\nkind = \"template\"\ndata = \"data\"\nsource = \"templates/chat.jinja\"\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `p`, key `source`: `source` is inline Jinja, and this has no `{{` or `{%`",
            "  = help: for a template file write `file = \"templates/chat.jinja\"`",
        ],
        not: &[],
    },
    Case {
        name: "file that is not a template",
        files: &[
            (
                "r.toml",
                "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\n\n[steps.p]\nkind = \"template\"\ndata = \"data\"\nfile = \"secret.txt\"\n",
            ),
            ("secret.txt", "root:x:0:0:root:/root:/bin/bash\nTOPSECRET\n"),
        ],
        setup: None,
        args: &["run", "r.toml"],
        code: 1,
        stderr: &["secret.txt` has no `{{` or `{%`: not a Jinja chat template"],
        not: &["TOPSECRET", "root:x:0"],
    },
    Case {
        name: "template syntax error quotes one line",
        files: &[
            (
                "r.toml",
                "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\n\n[steps.p]\nkind = \"template\"\ndata = \"data\"\nfile = \"t.jinja\"\n",
            ),
            (
                "t.jinja",
                "{% for m in messages %}\nSECRET LINE ONE\n{{ m.content }\n{% endfor %}\nSECRET LINE FOUR\n",
            ),
        ],
        setup: None,
        args: &["run", "r.toml"],
        code: 1,
        stderr: &["chat template: syntax error"],
        not: &["SECRET LINE ONE", "SECRET LINE FOUR"],
    },
    // --- finding 8: rendering limits
    Case {
        name: "template that doubles a string",
        files: &[(
            "r.toml",
            "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\nlimit = 2\n\n[steps.p]\nkind = \"template\"\ndata = \"data\"\nsource = \"{% set ns = namespace(s='xy') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}\"\n",
        )],
        setup: None,
        args: &["run", "r.toml"],
        code: 1,
        stderr: &["rendering chat template: stopped after its work limit (2000000 instructions, or 122 MiB of strings built): does it loop or keep growing a string?"],
        not: &[],
    },
    // --- finding 9: a duplicate CSV header
    Case {
        name: "csv duplicate header",
        files: &[
            (
                "r.toml",
                "[steps.data]\nkind = \"load.dataset\"\npath = \"d.csv\"\nformat = \"text\"\n",
            ),
            ("d.csv", "text,label,text\na,1,b\n"),
        ],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `data`, key `path`: ",
            "d.csv:1: the header names column 'text' twice (columns 1 and 3): rename one",
        ],
        not: &[],
    },
    // --- finding 9: target_modules that match nothing
    Case {
        name: "target_modules matching nothing (plan)",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\ntarget_modules = [\"query_key_value\"]\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `train`, key `target_modules`: matches no linear module of the model",
            "  = expected: some of: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
            "  = got: [\"query_key_value\"]",
        ],
        not: &[],
    },
    Case {
        name: "target_regex matching nothing (run)",
        files: &[(
            "r.toml",
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\ntarget_regex = \".*nothing_here\"\nmax_steps = 1\n",
        )],
        setup: None,
        args: &["run", "r.toml"],
        code: 1,
        stderr: &[
            "key `target_regex`: regex \".*nothing_here\" matches no linear module of this model; its linear modules are: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
        ],
        not: &[],
    },
    // --- finding 10: option errors point at their own key
    Case {
        name: "columns error points at columns",
        files: &[(
            "r.toml",
            "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\ncolumns = { prompt = \"instruction\" }\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `data`, key `columns`: unknown role 'prompt' for format \"alpaca\"",
            " --> r.toml:5:",
        ],
        not: &["key `path`"],
    },
    Case {
        name: "classes error points at classes",
        files: &[(
            "r.toml",
            "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\nclasses = [\"a\", \"b\"]\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &[
            "error: step `data`, key `classes`: only used by format \"text_label\", not \"alpaca\"",
            " --> r.toml:5:",
        ],
        not: &["key `path`"],
    },
    Case {
        name: "missing mapped column points at columns",
        files: &[(
            "r.toml",
            "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\ncolumns = { output = \"answer\" }\n",
        )],
        setup: None,
        args: &["plan", "r.toml"],
        code: 2,
        stderr: &["error: step `data`, key `columns`: ", "no column 'answer'"],
        not: &["key `path`"],
    },
];

#[test]
fn bad_inputs_health_corpus() {
    for c in CASES {
        check(c);
    }
}

/// Editing the file behind a template step's `file` re-renders (its content is in the cache
/// key); the rendered text follows the edit.
#[test]
fn template_file_edit_is_not_served_stale() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "r.toml",
        &expand(
            "[steps.data]\nkind = \"load.dataset\"\npath = \"{DATA}\"\nformat = \"alpaca\"\nlimit = 2\n\n\
             [steps.p]\nkind = \"template\"\ndata = \"data\"\nfile = \"t.jinja\"\n",
        ),
    );
    let render = |body: &str| {
        write(d.path(), "t.jinja", body);
        let o = run(d.path(), &["run", "r.toml"]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(0), "{err}");
        let entries = d.path().join(".recipe/cache/entries");
        let mut texts: Vec<String> = std::fs::read_dir(&entries)
            .unwrap()
            .filter_map(|e| {
                std::fs::read_to_string(e.unwrap().path().join("train.segments.jsonl")).ok()
            })
            .collect();
        texts.sort();
        (err, texts)
    };
    let (_, first) = render("{% for m in messages %}A:{{ m.content }}{% endfor %}");
    let (err, second) = render("{% for m in messages %}B:{{ m.content }}{% endfor %}");
    assert!(err.contains("p: ran ("), "{err}");
    assert!(first.iter().any(|t| t.contains("A:")), "{first:?}");
    assert!(second.iter().any(|t| t.contains("B:")), "{second:?}");
}

/// A damaged newest checkpoint does not block resume: the previous one is used, with a
/// warning naming the damaged one.
#[test]
fn damaged_newest_checkpoint_falls_back() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "r.toml",
        &expand(&format!(
            "{PIPELINE}\n[steps.train]\nkind = \"train\"\nmodel = \"base\"\ndata = \"tokens\"\n\
             max_steps = 6\nsave_steps = 2\nlogging_steps = 1\n"
        )),
    );
    let o = bin()
        .current_dir(d.path())
        .args(["run", "r.toml"])
        .env("RECIPE_TEST_KILL_AFTER_STEPS", "5")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Checkpoints 2 and 4 exist; damage 4.
    let mut found = Vec::new();
    let mut stack = vec![d.path().join(".recipe")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("checkpoint-")
                {
                    found.push(path);
                } else {
                    stack.push(path);
                }
            }
        }
    }
    found.sort();
    let names: Vec<String> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, ["checkpoint-2", "checkpoint-4"]);
    std::fs::write(found[1].join("trainables.safetensors"), b"not safetensors").unwrap();
    let o = run(d.path(), &["run", "r.toml"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    // (The cache dir is relative to the working dir here: `./.recipe/cache/work/<key>/`.)
    let line = |prefix: &str| {
        err.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{err}"))
            .to_string()
    };
    let warn = line("  [train] WARNING: checkpoint `");
    assert!(
        warn.contains("/checkpoint-4` is damaged (")
            && warn.ends_with(
                "/checkpoint-4/trainables.safetensors: header too large); trying an older one"
            ),
        "{warn}"
    );
    assert!(
        line("  [train] resuming from ").ends_with("/checkpoint-2 (step 2)"),
        "{err}"
    );
}
