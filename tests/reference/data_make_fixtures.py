"""Make the fixtures for the `data` module tests (tests/fixtures/data/).

Run from the repository root:  /work/pyenv/bin/python tests/reference/data_make_fixtures.py
Versions used: datasets 5.2.0, numpy 2.4.6, pyarrow 26.0.1 (printed below).

Writes
- split_indices.json: HF `Dataset.train_test_split(test_size, seed)` train/test indices and
  `np.random.default_rng(seed).permutation(n)` for a few (n, seed, test_size).
- alpaca_zh_disk/: `Dataset.save_to_disk` of alpaca_zh-like rows, 2 shards.
- raft_dict/: `DatasetDict.save_to_disk` (train/test) with a ClassLabel column, like ought/raft.
- conv_disk/: `Dataset.save_to_disk` of ChatGLM3 conversations (list<struct<role,content>>) plus
  scalar columns of several types and a null.
- advertise.parquet: AdvertiseGen-like content/summary rows in 2 row groups, with extra typed columns.
"""
import json
import os
import shutil

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

print("datasets", datasets.__version__, "numpy", np.__version__, "pyarrow", pa.__version__)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
os.makedirs(OUT, exist_ok=True)

# --- split indices -------------------------------------------------------------------------
cases = []
for n, seed, test_size in [(10, 42, 0.2), (7, 0, 0.3), (100, 123, 0.2), (1000, 42, 0.1),
                           (5, 2**40 + 7, 2), (300, 7, 0.25), (70000, 42, 0.01), (3, 1, 1)]:
    ds = datasets.Dataset.from_dict({"i": list(range(n))})
    sp = ds.train_test_split(test_size=test_size, seed=seed)
    perm = np.random.default_rng(seed).permutation(n)
    case = {"n": n, "seed": seed, "test_size": test_size,
            "train": list(sp["train"]["i"]), "test": list(sp["test"]["i"])}
    if n <= 1000:
        case["permutation"] = perm.tolist()
    else:  # keep the fixture small: the split of a big n is checked by its head only
        case["train"] = case["train"][:50]
        case["test"] = case["test"][:50]
        case["truncated"] = True
    cases.append(case)
# shuffle(seed).select(range(k)) == sample
ds = datasets.Dataset.from_dict({"i": list(range(20))})
sample = list(ds.shuffle(seed=9).select(range(5))["i"])
with open(os.path.join(OUT, "split_indices.json"), "w") as f:
    json.dump({"cases": cases, "shuffle_20_seed9_first5": sample}, f)

# --- save_to_disk folders ------------------------------------------------------------------
alpaca = [
    {"instruction": "保持健康的三个提示。", "input": "",
     "output": "以下是保持健康的三个提示：\n\n1. 保持身体活动。\n2. 均衡饮食。\n3. 睡眠充足。"},
    {"instruction": "三原色是什么？", "input": "", "output": "三原色通常指红色、绿色和蓝色（RGB）。"},
    {"instruction": "将下列句子翻译成英语。", "input": "我喜欢学习。", "output": "I like studying."},
    {"instruction": "描述原子的结构。", "input": "", "output": "原子由原子核和电子组成。"},
    {"instruction": "给出下面单词的同义词。", "input": "快乐", "output": "高兴、愉快、开心"},
]
p = os.path.join(OUT, "alpaca_zh_disk")
shutil.rmtree(p, ignore_errors=True)
datasets.Dataset.from_list(alpaca).save_to_disk(p, num_shards=2)

features = datasets.Features({
    "Tweet text": datasets.Value("string"),
    "ID": datasets.Value("int64"),
    "Label": datasets.ClassLabel(names=["Unlabeled", "complaint", "no_complaint"]),
})
raft = datasets.DatasetDict({
    "train": datasets.Dataset.from_dict({
        "Tweet text": ["@HMRCcustomers No this is my first job", "If I can't get my 3rd pair of @beatsbydre powerbeats to work today I'm doneski man.", "@KristaMariePark Thank you for your interest!"],
        "ID": [0, 1, 2], "Label": [2, 1, 2]}, features=features),
    "test": datasets.Dataset.from_dict({
        "Tweet text": ["@EE On Rosneath Arial having good upload", "测试 推文"],
        "ID": [3, 4], "Label": [0, 0]}, features=features),
})
p = os.path.join(OUT, "raft_dict")
shutil.rmtree(p, ignore_errors=True)
raft.save_to_disk(p)

conv = [
    {"conversations": [{"role": "user", "content": "类型#上衣*材质#牛仔布*颜色#白色"},
                       {"role": "assistant", "content": "简约而不简单的牛仔外套，白色的衣身十分百搭。"}],
     "score": 0.5, "ok": True, "n": 1, "tags": ["a", "b"], "note": None},
    {"conversations": [{"role": "system", "content": "你是一个助手"},
                       {"role": "user", "content": "你好"},
                       {"role": "assistant", "content": "你好，有什么可以帮你？"}],
     "score": 1.25, "ok": False, "n": -3, "tags": [], "note": "第二"},
]
p = os.path.join(OUT, "conv_disk")
shutil.rmtree(p, ignore_errors=True)
datasets.Dataset.from_list(conv).save_to_disk(p)

# --- parquet ---------------------------------------------------------------------------------
table = pa.table({
    "content": ["类型#裤*版型#宽松", "类型#裙*颜色#红色", "类型#上衣*风格#简约"],
    "summary": ["宽松的阔腿裤这两年真的吸粉不少。", "红色的连衣裙很显气质。", None],
    "id": pa.array([1, 2, 3], type=pa.int32()),
    "weight": pa.array([0.1, 2.5, -1.0], type=pa.float32()),
    "ids": pa.array([[1, 2], [], None], type=pa.list_(pa.int64())),
    "meta": pa.array([{"k": "x", "v": 1}, {"k": "y", "v": None}, None],
                     type=pa.struct([("k", pa.string()), ("v", pa.int64())])),
})
pq.write_table(table, os.path.join(OUT, "advertise.parquet"), row_group_size=2)
print("ok")
