"""The side-by-side table of a device run (kernels/gpu/run.sh calls it last; stdlib only).

    python3 tests/reference/gpu_summary.py OUT [MAKE_LOG ...]

Reads OUT/e2e.txt (one "=== name" section per training run: recipe's step lines, or the
reference's JSON line), OUT/train_*.json (`recipe bench --model`), OUT/summary.txt (the "key peak_mib=N" lines), OUT/bench.json (the
measured bf16 peak) and the make logs (each a JSON line with "made" and "params"). Prints one row
per run: tokens/s (recipe: the median of its last 3 steps, the first steps warm up; the
reference: its own median), peak device memory (nvidia-smi) and MFU = 6 · params · tokens/s
over the measured peak (the usual count: a frozen base still costs its forward and backward
products). Writes the rows to OUT/summary.json.
"""

import json
import os
import re
import statistics
import sys

# Section title -> (peak key in summary.txt, model dir): what run.sh writes.
RUNS = {
    "recipe qlora, 4 layers": ("q4", "/tmp/l4"),
    "recipe qlora, 4 layers, GEMM attention": ("g4", "/tmp/l4"),
    "recipe qlora, 7B": ("q32", "/tmp/l32"),
    "peft + bitsandbytes qlora, 4 layers": ("b4", "/tmp/l4"),
    "peft + bitsandbytes qlora, 7B": ("b32", "/tmp/l32"),
    "peft lora bf16, 4 layers": ("p4", "/tmp/l4"),
    "peft lora bf16, 7B": ("p32", "/tmp/l32"),
}
# `recipe bench --model M` writes OUT/train_M.json; its peak key in summary.txt is tb_M.
BENCHES = ["llama-7b", "chatglm3-6b"]


def sections(text):
    """{title: [lines]} of e2e.txt."""
    out, cur = {}, None
    for line in text.splitlines():
        if line.startswith("=== "):
            cur = line[4:].split(" (")[0].strip()
            out[cur] = []
        elif cur is not None:
            out[cur].append(line)
    return out


def tokens_per_s(lines):
    steps = [float(m.group(1)) for m in (re.search(r"([0-9.]+) tok/s", l) for l in lines) if m]
    if steps:
        return statistics.median(steps[-3:])
    for l in lines:
        if l.startswith("{") and "tokens_per_s" in l:
            try:
                return json.loads(l)["tokens_per_s"]
            except (ValueError, KeyError):
                pass
    return None


def main():
    out = sys.argv[1]
    read = lambda p: open(p).read() if os.path.exists(p) else ""
    secs = sections(read(os.path.join(out, "e2e.txt")))
    peaks = dict(re.findall(r"^(\S+) peak_mib=(\d+)", read(os.path.join(out, "summary.txt")), re.M))
    try:
        peak_tflops = json.loads(read(os.path.join(out, "bench.json")))["peak_tflops_bf16"]
    except (ValueError, KeyError):
        peak_tflops = None
    params = {}
    for log in sys.argv[2:]:
        for line in read(log).splitlines():
            if '"made"' in line:
                try:
                    j = json.loads(line[line.index("{"):])
                    params[j["made"]] = j["params"]
                except (ValueError, KeyError):
                    pass
    rows = []
    for title, (key, model) in RUNS.items():
        if title not in secs:
            continue
        tps = tokens_per_s(secs[title])
        n = params.get(model)
        mfu = 6 * n * tps / (peak_tflops * 1e12) if (tps and n and peak_tflops) else None
        mib = int(peaks[key]) if peaks.get(key) else None
        rows.append({"run": title, "tokens_per_s": tps, "peak_gib": mib and mib / 1024,
                     "params": n, "mfu": mfu})
    for m in BENCHES:
        try:
            j = json.loads(read(os.path.join(out, f"train_{m}.json")))
        except ValueError:
            continue
        tps, n = j.get("tokens_per_s"), j.get("base_params")
        mfu = 6 * n * tps / (peak_tflops * 1e12) if (tps and n and peak_tflops) else j.get("mfu")
        mib = int(peaks[f"tb_{m}"]) if peaks.get(f"tb_{m}") else None
        rows.append({"run": f"recipe bench --model {m}" + ("" if j.get("done") else " (cut short)"),
                     "tokens_per_s": tps, "peak_gib": mib and mib / 1024, "params": n, "mfu": mfu})
    fmt = lambda v, f: "-" if v is None else format(v, f)
    print(f"{'run':<48} {'tok/s':>9} {'peak GiB':>9} {'MFU':>6}   (peak {fmt(peak_tflops, '.0f')} TFLOP/s)")
    for r in rows:
        print(f"{r['run']:<48} {fmt(r['tokens_per_s'], '.0f'):>9} {fmt(r['peak_gib'], '.1f'):>9} "
              f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f'):>5}%")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"peak_tflops_bf16": peak_tflops, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
