//! Tokenize + mask throughput (issue 3): N alpaca-style records through the
//! `human_assistant` template (alpaca_zh's preprocessing: "Human: " +
//! instruction + "\n" + input, stripped, + "\n\nAssistant: "; the response
//! + eos; labels -100 on the prompt; truncation at 256) with the library
//! path the `tokenize` step runs (`recipe::text::tokenize`, same options).
//!
//!   cargo run --release --example bench_tokenize -- --tokenizer DIR --records 100000 [--dump 100] [--out DIR] [--runs 3] [--check]
//!
//! Writes into `--out` (default /tmp/bench_tokenize): `records.jsonl` (the
//! generated records, for `tests/reference/bench_tokenize_hf.py`),
//! `train.tokens` (the token dataset) and with `--dump N` `dump.jsonl` (the
//! first N rows' input_ids / labels read back from `train.tokens`).
//! Prints records/s and tokens/s (median of the runs) and the file size.
//! Records are generated deterministically (a fixed-seed generator), so the
//! same N gives the same data every time.

use recipe::data::example::{Example, Message, Role};
use recipe::text::{tokenize, Renderer, Template, TokenDataset, TokenizeOptions, TokenizerBundle};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// SplitMix64: small, deterministic, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.range(0, xs.len() - 1)]
    }
}

#[rustfmt::skip]
const ZH: &[&str] = &[
    "人工智能", "机器学习", "深度学习", "神经网络", "数据", "模型", "训练", "我们", "可以", "需要",
    "一个", "重要", "问题", "方法", "研究", "发展", "社会", "经济", "健康", "饮食", "运动", "睡眠",
    "学习", "工作", "时间", "环境", "保护", "城市", "交通", "能源", "科技", "教育", "学生", "老师",
    "文化", "历史", "中国", "世界", "未来", "生活", "提高", "效率", "质量", "影响", "因为", "所以",
    "但是", "如果", "然后", "通过", "使用", "解释", "描述", "总结", "翻译", "下面", "句子", "文章",
    "三原色", "红色", "蓝色", "黄色", "水果", "蔬菜", "天气", "季节", "旅行", "音乐", "电影",
    "的", "了", "是", "在", "和", "有", "不", "也", "很", "都", "就", "这", "那", "与", "对",
];
#[rustfmt::skip]
const ZH_PUNCT: &[&str] = &["，", "，", "，", "。", "、", "；", "："];
#[rustfmt::skip]
const EN: &[&str] = &[
    "the", "a", "of", "and", "to", "in", "is", "for", "that", "with", "model", "data", "learning",
    "language", "network", "health", "energy", "students", "people", "important", "example",
    "describe", "explain", "summarize", "translate", "sentence", "article", "water", "computer",
    "science", "history", "because", "however", "Python", "GPU", "AI", "2023", "100", "3.14",
];
#[rustfmt::skip]
const INSTR_ZH: &[&str] = &[
    "请解释", "描述一下", "给出三个关于", "总结下面这段话", "将下列句子翻译成英语", "写一首关于",
    "列出", "比较", "为什么", "如何",
];
#[rustfmt::skip]
const INSTR_EN: &[&str] = &[
    "Explain", "Describe", "Give three tips about", "Summarize the following text", "Translate into Chinese",
    "Write a short poem about", "List", "Compare", "Why is", "How do",
];

/// About `chars` characters of Chinese (with occasional English words) or English.
fn sentence(r: &mut Rng, chars: usize, zh: bool) -> String {
    let mut s = String::new();
    let mut n = 0;
    while n < chars {
        if zh {
            if r.range(0, 9) == 0 {
                let w = r.pick(EN);
                s.push_str(w);
                n += w.len();
            } else {
                let w = r.pick(ZH);
                s.push_str(w);
                n += w.chars().count();
            }
            if r.range(0, 7) == 0 {
                s.push_str(r.pick(ZH_PUNCT));
                n += 1;
            }
        } else {
            if !s.is_empty() {
                s.push(' ');
            }
            let w = r.pick(EN);
            s.push_str(w);
            n += w.len() + 1;
            if r.range(0, 9) == 0 {
                s.push_str(if r.range(0, 2) == 0 { "." } else { "," });
            }
        }
    }
    s.push_str(if zh { "。" } else { "." });
    s
}

/// (instruction, input, output) of record `i`.
fn record(r: &mut Rng) -> (String, String, String) {
    let zh = r.range(0, 9) < 7;
    let head = if zh {
        r.pick(INSTR_ZH)
    } else {
        r.pick(INSTR_EN)
    };
    let n = r.range(5, 40);
    let instruction = format!("{head}{}{}", if zh { "" } else { " " }, sentence(r, n, zh));
    let input = if r.range(0, 9) < 4 {
        let n = r.range(20, 150);
        sentence(r, n, zh)
    } else {
        String::new()
    };
    // Mostly 20-200 characters; one in 20 long enough to be truncated at 256 tokens.
    let n = if r.range(0, 19) == 0 {
        r.range(300, 800)
    } else {
        r.range(20, 200)
    };
    let output = sentence(r, n, zh);
    (instruction, input, output)
}

/// The Example `load.dataset` makes of an alpaca record (format.rs).
fn example(i: usize, instruction: &str, input: &str, output: &str) -> Example {
    let msg = |role, content: String| Message {
        role,
        content,
        metadata: String::new(),
    };
    let user = if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n{input}")
    };
    let mut ex = Example {
        messages: vec![
            msg(Role::User, user),
            msg(Role::Assistant, output.to_string()),
        ],
        source: format!("records.jsonl:{}", i + 1),
        ..Default::default()
    };
    ex.extra.insert("instruction".into(), instruction.into());
    ex.extra.insert("input".into(), input.into());
    ex
}

/// CPU seconds (user + system, all threads) this process has used so far;
/// Linux only (/proc/self/stat, clock ticks of 1/100 s). 0 elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the ")" that closes the command name: state is field 3,
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut tokenizer: Option<PathBuf> = None;
    let mut records = 100_000usize;
    let mut dump = 0usize;
    let mut check = false;
    let mut runs = 3usize;
    let mut out = PathBuf::from("/tmp/bench_tokenize");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--tokenizer" => tokenizer = Some(val()?.into()),
            "--records" => records = val()?.parse()?,
            "--dump" => dump = val()?.parse()?,
            "--runs" => runs = val()?.parse()?,
            "--check" => check = true,
            "--out" => out = val()?.into(),
            _ => anyhow::bail!(
                "unknown argument {a} (--tokenizer DIR --records N --dump N --runs N --out DIR)"
            ),
        }
    }
    let tokenizer = tokenizer
        .ok_or_else(|| anyhow::anyhow!("--tokenizer DIR (with tokenizer.json) is required"))?;
    std::fs::create_dir_all(&out)?;

    // Data, also as JSONL for the Python side.
    let mut rng = Rng(0x5EED_0003);
    let mut examples = Vec::with_capacity(records);
    let mut jsonl = std::io::BufWriter::new(std::fs::File::create(out.join("records.jsonl"))?);
    for i in 0..records {
        let (ins, input, output) = record(&mut rng);
        serde_json::to_writer(
            &mut jsonl,
            &serde_json::json!({"instruction": ins, "input": input, "output": output}),
        )?;
        jsonl.write_all(b"\n")?;
        examples.push(example(i, &ins, &input, &output));
    }
    jsonl.flush()?;

    let bundle = TokenizerBundle::from_dir(&tokenizer)?;
    let renderer = Renderer::new(
        Template::from_name_or_source("human_assistant", None)?,
        Some(&bundle),
    )?;
    // What the `tokenize` step passes for `max_length = 256` (defaults otherwise).
    let opts = TokenizeOptions {
        max_length: Some(256),
        ..Default::default()
    };
    let path = out.join("train.tokens");
    let threads = rayon::current_num_threads();
    let (mut secs, mut cpus) = (Vec::new(), Vec::new());
    let mut stats = None;
    for run in 0..runs.max(1) {
        let batch = examples.clone();
        let (t, c) = (Instant::now(), cpu_seconds());
        let s = tokenize(batch, &renderer, &bundle, &opts, &path)?;
        let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        eprintln!("run {}: {:.3} s (cpu {:.3} s)", run + 1, dt, dc);
        secs.push(dt);
        cpus.push(dc);
        stats = Some(s);
    }
    let stats = stats.expect("at least one run");
    let (dt, dc) = (median(secs), median(cpus));
    println!("{}", stats.summary().trim_end());
    println!(
        "records {records}  threads {threads}  median {:.3} s  {:.0} records/s  {:.0} tokens/s  cpu {:.3} s  {:.0} records per cpu-s  file {} bytes",
        dt,
        records as f64 / dt,
        stats.tokens as f64 / dt,
        dc,
        records as f64 / dc,
        std::fs::metadata(&path)?.len()
    );

    // The tokenizer alone: the same two strings per record (prompt, response)
    // through `TokenizerBundle::encode` on the same threads, nothing else.
    let texts: Vec<(String, String)> = examples
        .iter()
        .map(|ex| {
            let r = renderer.render(ex).expect("rendered above");
            let t = |i: usize| match &r.segments[i].piece {
                recipe::text::segment::Piece::Text(t)
                | recipe::text::segment::Piece::Special(t) => t.clone(),
            };
            (t(0), t(1))
        })
        .collect();
    let (t, c) = (Instant::now(), cpu_seconds());
    let n: usize = {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|(p, r)| {
                bundle.encode(p).map(|a| a.len()).unwrap_or(0)
                    + bundle.encode(r).map(|a| a.len()).unwrap_or(0)
            })
            .sum()
    };
    let (et, ec) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    println!(
        "tokenizer alone (encode prompt + response, {n} tokens): {et:.3} s  cpu {ec:.3} s  ({:.0}% of the tokenize cpu)",
        100.0 * ec / dc
    );

    // `--check`: the ids `encode` gave (the fast encoder when the tokenizer
    // has one) equal `tokenizers`' for every prompt and response.
    if check {
        use rayon::prelude::*;
        let bad = texts
            .par_iter()
            .flat_map(|(p, r)| [p, r])
            .filter(|t| {
                let slow = bundle
                    .tok
                    .encode(t.as_str(), false)
                    .map(|e| e.get_ids().to_vec());
                bundle.encode(t).ok() != slow.ok()
            })
            .count();
        println!(
            "check: {bad} of {} texts differ from tokenizers",
            2 * texts.len()
        );
        if bad > 0 {
            std::process::exit(1);
        }
    }

    if dump > 0 {
        let ds = TokenDataset::open(&path)?;
        let mut w = std::io::BufWriter::new(std::fs::File::create(out.join("dump.jsonl"))?);
        for r in ds.iter().take(dump) {
            serde_json::to_writer(
                &mut w,
                &serde_json::json!({"input_ids": r.input_ids, "labels": r.labels}),
            )?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        println!(
            "dumped {} rows to {}",
            dump.min(ds.len()),
            out.join("dump.jsonl").display()
        );
    }
    Ok(())
}
