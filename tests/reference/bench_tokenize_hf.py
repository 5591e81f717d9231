"""Tokenize + mask throughput of Hugging Face `datasets.map` (issue 3), the
Python side of `examples/bench_tokenize.rs`.

Runs alpaca_zh's `preprocess_function` (seed 002: "Human: " + instruction
+ "\n" + input, stripped, + "\n\nAssistant: "; response + eos_token;
labels -100 on the prompt; truncation at 256) with `dataset.map` on the
records the Rust example generated, with the same tokenizer.json loaded as
a fast tokenizer:
  - batched: the same function over a batch (one tokenizer call per batch,
    which runs the Rust encoder over the batch in parallel);
  - per-record: the seed's own function, non-batched (as the seed calls it).
Prints records/s (median of --runs) and checks that the first rows equal
the Rust output (`dump.jsonl`, written by the example with --dump N).

  cargo run --release --example bench_tokenize -- --tokenizer DIR --records 100000 --dump 100
  /work/pyenv/bin/python tests/reference/bench_tokenize_hf.py --tokenizer DIR --data /tmp/bench_tokenize

`map` writes its result to an arrow cache file (as in the seed, where the
dataset comes from disk); each run uses a fresh cache directory so nothing
is reused between runs.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import datasets
import tokenizers
import transformers
from transformers import AutoTokenizer

MAX_LENGTH = 256


def make_batched(tokenizer):
    eos = tokenizer.eos_token

    def preprocess_batched(examples):
        prompts = [
            "\n".join(["Human: " + ins, inp]).strip() + "\n\nAssistant: "
            for ins, inp in zip(examples["instruction"], examples["input"])
        ]
        instruction = tokenizer(prompts)
        response = tokenizer([o + eos for o in examples["output"]])
        input_ids, attention_mask, labels = [], [], []
        for pi, pa, ri, ra in zip(
            instruction["input_ids"],
            instruction["attention_mask"],
            response["input_ids"],
            response["attention_mask"],
        ):
            ids = pi + ri
            mask = pa + ra
            lab = [-100] * len(pi) + ri
            if len(ids) > MAX_LENGTH:
                ids, mask, lab = ids[:MAX_LENGTH], mask[:MAX_LENGTH], lab[:MAX_LENGTH]
            input_ids.append(ids)
            attention_mask.append(mask)
            labels.append(lab)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    return preprocess_batched


def make_seed(tokenizer):
    # The seed's function, verbatim apart from the name of max_length.
    def preprocess_function(examples):
        max_length = MAX_LENGTH
        inputs_ids, attention_mask, labels = [], [], []
        instruction = tokenizer(
            "\n".join(["Human: " + examples["instruction"], examples["input"]]).strip()
            + "\n\nAssistant: "
        )
        response = tokenizer(examples["output"] + tokenizer.eos_token)
        inputs_ids = instruction["input_ids"] + response["input_ids"]
        attention_mask = instruction["attention_mask"] + response["attention_mask"]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"]
        if len(inputs_ids) > max_length:
            inputs_ids = inputs_ids[:max_length]
            attention_mask = attention_mask[:max_length]
            labels = labels[:max_length]
        return {"input_ids": inputs_ids, "attention_mask": attention_mask, "labels": labels}

    return preprocess_function


def timed_map(data_files, fn, batched, runs):
    """Median wall seconds and CPU seconds (all threads of this process) of
    `runs` maps, and the first 1000 rows of the last."""
    secs, cpus, out = [], [], None
    for r in range(runs):
        cache = tempfile.mkdtemp(prefix="bench_tok_hf_")
        try:
            ds = datasets.load_dataset("json", data_files=data_files, split="train", cache_dir=cache)
            t, c = time.perf_counter(), time.process_time()
            out = ds.map(fn, batched=batched, remove_columns=ds.column_names)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            # Keep the rows we compare (columns as lists) before the cache goes.
            out = out[:1000]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(f"  run {r + 1}: {dt:.3f} s (cpu {dc:.3f} s)", file=sys.stderr)
        secs.append(dt)
        cpus.append(dc)
    return statistics.median(secs), statistics.median(cpus), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="dir with tokenizer.json (+ tokenizer_config.json)")
    ap.add_argument("--data", default="/tmp/bench_tokenize", help="--out dir of the Rust example")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed-runs", type=int, default=None, help="runs of the (slow) non-batched seed variant (default --runs; 0 skips it)")
    a = ap.parse_args()
    datasets.disable_progress_bars()
    print(
        f"python {sys.version.split()[0]} transformers {transformers.__version__} "
        f"datasets {datasets.__version__} tokenizers {tokenizers.__version__} "
        f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')} cpus {os.cpu_count()}"
    )
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    assert tok.is_fast, "expected a fast tokenizer"
    data_files = os.path.join(a.data, "records.jsonl")
    n = sum(1 for _ in open(data_files, encoding="utf-8"))

    results = {}
    seed_runs = a.runs if a.seed_runs is None else a.seed_runs
    variants = [("batched", make_batched(tok), True, a.runs)]
    if seed_runs > 0:
        variants.append(("seed (per record)", make_seed(tok), False, seed_runs))
    for name, fn, batched, runs in variants:
        print(f"{name}:", file=sys.stderr)
        dt, dc, out = timed_map(data_files, fn, batched, runs)
        results[name] = (dt, out)
        print(
            f"hf {name}: records {n}  median {dt:.3f} s  {n / dt:.0f} records/s  "
            f"cpu {dc:.3f} s  {n / dc:.0f} records per cpu-s"
        )

    # Same rows as ours?
    dump = os.path.join(a.data, "dump.jsonl")
    if os.path.exists(dump):
        ours = [json.loads(l) for l in open(dump, encoding="utf-8")]
        for name, (_, out) in results.items():
            bad = [
                i
                for i, r in enumerate(ours)
                if out["input_ids"][i] != r["input_ids"] or out["labels"][i] != r["labels"]
            ]
            print(f"hf {name}: first {len(ours)} rows {'equal ours' if not bad else f'DIFFER at rows {bad[:10]}'}")
            if bad:
                sys.exit(1)
    else:
        print(f"(no {dump}: run the example with --dump N to compare rows)")


if __name__ == "__main__":
    main()
