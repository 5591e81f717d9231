"""Reads a train step's TensorBoard events file with TensorBoard's own reader and prints
its scalars next to metrics.jsonl (run by hand; CI re-reads the file in Rust instead).

    /work/pyref/bin/pip install tensorboard   # checked with tensorboard 2.21.0
    /work/pyref/bin/python tests/reference/tfevents_check.py OUTPUT_DIR

OUTPUT_DIR is a train step's output (holds metrics.jsonl and events.out.tfevents.recipe).
Exits 1 when a scalar differs from metrics.jsonl (compared as float32).
"""

import json
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "eval_loss": "eval/loss",
    "eval_token_accuracy": "eval/token_accuracy",
}


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def main(out_dir):
    acc = EventAccumulator(out_dir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    print("scalar tags:", tags)
    got = {}
    for tag in tags:
        for e in acc.Scalars(tag):
            print(f"{tag:22s} step {e.step:3d}  {e.value:.8g}")
            got.setdefault(tag, []).append((e.step, e.value))
    want = {}
    with open(f"{out_dir}/metrics.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            for key, tag in TAGS.items():
                if key in rec:
                    want.setdefault(tag, []).append((rec["step"], f32(rec[key])))
    if got != want:
        print("MISMATCH with metrics.jsonl")
        return 1
    print(f"all {sum(map(len, got.values()))} scalars equal metrics.jsonl (as float32)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
