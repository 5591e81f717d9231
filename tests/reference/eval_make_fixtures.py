"""Reference values for src/eval (metrics and logits processors).

Regenerate with:  /work/pyenv/bin/python tests/reference/eval_make_fixtures.py
Writes tests/fixtures/eval/metrics.json and tests/fixtures/eval/logits.json.

Metrics follow ChatGLM3 finetune_demo `compute_metrics`:
    pred_tokens = list(jieba.cut(pred_txt)); label_tokens = list(jieba.cut(label_txt))
    scores = Rouge().get_scores(' '.join(pred_tokens), ' '.join(label_tokens))
    rouge-k  <- round(scores[0][k]['f'] * 100, 4)
    bleu-4   <- sentence_bleu([label_tokens], pred_tokens, smoothing_function=SmoothingFunction().method3)
    result   =  {k: np.mean(v)}
rouge_chinese raises ValueError on an empty hypothesis/reference; we record null there and
the Rust side defines those ROUGE scores as 0.0 (the aggregate below does the same).
"""
import json
import os
import random
import re
import sys

import jieba
import nltk
import numpy as np
import rouge_chinese
import torch
import transformers
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

jieba.setLogLevel(60)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "eval")

PAIRS = [
    # (prediction, reference)
    ("这件衣服的款式简约大方，白色的衣身十分百搭。", "简约而不简单的牛仔外套,白色的衣身十分百搭。衣身多处有做旧破洞设计,打破单调乏味,增加一丝造型看点。"),
    ("简约而不简单的牛仔外套,白色的衣身十分百搭。", "简约而不简单的牛仔外套,白色的衣身十分百搭。"),
    ("", "这是一条裙子。"),
    ("这是一条裙子。", ""),
    ("", ""),
    ("哈哈哈哈哈哈哈哈", "哈哈"),
    ("好好好好好好", "好"),
    ("我来到北京清华大学", "他来到了网易杭研大厦"),
    ("小明硕士毕业于中国科学院计算所，后在日本京都大学深造", "小明硕士毕业于中国科学院计算所"),
    ("连衣裙采用了雪纺面料，轻盈飘逸！穿着舒适？非常适合夏天。", "这款连衣裙采用雪纺面料，轻盈又飘逸。穿起来十分舒适，适合夏天穿着。"),
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("the the the the the the the", "The cat is on the mat."),
    ("It is a guide to action which ensures that the military always obeys the commands of the party.",
     "It is a guide to action that ensures that the military will forever heed Party commands."),
    ("complaint", "complaint"),
    ("no complaint", "complaint"),
    ("  no complaint  ", "no complaint"),
    ("hello", "hello world"),
    ("a", "b"),
    ("……真的吗……我不信……", "真的。"),
    ("他说：“你好！”然后走了。", "他说：“你好。”"),
    ("价格：199元，折扣8.5折，共2件。", "价格199元，打8.5折。"),
    ("iPhone 15 Pro Max的售价是9999元", "iPhone15ProMax售价9999元"),
    ("今天天气不错，我们去公园散步吧。明天可能会下雨。", "今天天气很好，适合去公园散步。"),
    ("，，，。。。！！！", "。"),
    ("模型", "模型模型模型模型"),
    ("深度学习模型需要大量的数据进行训练", "训练深度学习模型需要大量数据"),
    ("类型#上衣*材质#牛仔布*颜色#白色", "类型#上衣*材质#牛仔布*颜色#白色*风格#简约"),
    ("1 2 3 4 5", "1 2 3 4 5 6"),
    ("Mixed 中英文 text，测试一下tokenizer!", "中英文混合的text测试"),
    ("这个东西太棒了??真的太棒了", "这个东西太棒了"),
    ("换行\n第二行\n\n第三行", "换行 第二行 第三行"),
    ("C++和C#都是编程语言，e-mail地址是a_b@x.com", "C++是编程语言"),
]


def rouge_or_none(pred_tokens, ref_tokens):
    try:
        s = Rouge().get_scores(" ".join(pred_tokens), " ".join(ref_tokens))[0]
    except ValueError as e:
        return None, str(e)
    return {k: s[k]["f"] for k in ("rouge-1", "rouge-2", "rouge-l")}, None


def metrics_fixture():
    rows = []
    agg = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, ref in PAIRS:
        pred_txt, ref_txt = pred.strip(), ref.strip()
        pt = list(jieba.cut(pred_txt))
        rt = list(jieba.cut(ref_txt))
        bleu = float(sentence_bleu([rt], pt, smoothing_function=SmoothingFunction().method3))
        rouge, err = rouge_or_none(pt, rt)
        rows.append(
            {
                "prediction": pred,
                "reference": ref,
                "pred_tokens": pt,
                "ref_tokens": rt,
                "bleu4": bleu,
                "rouge": rouge,
                "rouge_error": err,
            }
        )
        for k in ("rouge-1", "rouge-2", "rouge-l"):
            agg[k].append(round((rouge[k] if rouge else 0.0) * 100, 4))
        agg["bleu-4"].append(bleu)
    aggregate = {k: float(np.mean(v)) for k, v in agg.items()}
    # jieba on a few extra strings (segmentation only)
    extra = [
        "我来到北京清华大学",
        "他来到了网易杭研大厦",
        "小明硕士毕业于中国科学院计算所，后在日本京都大学深造",
        "结过婚的和尚未结过婚的",
        "我们中出了一个叛徒",
        "永和服装饰品有限公司",
        "南京市长江大桥",
        "Hello, world! 123.45 ok_ok",
        "　全角空格　和\t制表符\r\n换行",
        "版本v1.2.3-rc发布了，增长3.5%，邮箱foo_bar@example.com",
        "下载地址https://github.com/THUDM/ChatGLM3.git谢谢",
        "型号RTX-4090和A100_80G的显存分别是24GB和80GB",
        "他的电话是138-0013-8000，身份证号11010519491231002X",
        "我爱自然语言处理😀！你呢？",
        "這是繁體中文的句子，臺灣的天氣很好。",
        "日本語のテキストとカタカナ",
        "한국어 텍스트",
        "工信处女干事每月经过下属科室都要亲口交代24口交换机等技术性器件的安装工作",
        "研究生命的起源",
        "乒乓球拍卖完了",
        "这款连衣裙采用雪纺面料，轻盈又飘逸。穿起来十分舒适，适合夏天穿着。",
        "李小福是创新办主任也是云计算方面的专家",
        "AT&T和T恤、B超、c#、C++都在词典里",
        "结果：1/2的人选择了A，另外50%选择了B——差距不大……",
        "“引号”「括号」（圆括号）【方括号】《书名号》",
        "a.b.c_d-e%f 1.2.3 .5 5. x-",
    ]
    # Random mixed strings: dictionary words, single han characters, ASCII runs with connectors,
    # punctuation, whitespace, other scripts (jieba segmentation only).
    words = [l.split()[0] for l in open(os.path.join(os.path.dirname(jieba.__file__), "dict.txt"), encoding="utf-8")]
    pieces = list("，。！？、；：“”‘’（）《》…—·-_.%+#&@/ \t\n\u3000abcXYZ0123456789") + [
        "e-mail", "v1.2.3", "3.5%", "a_b", "x.com", "1.5.6", "C++", "c#", "AT&T", "😀", "ｱｲ", "가나", "繁體", "臺灣",
    ]
    rng = random.Random(3)
    jieba_fuzz = []
    for _ in range(300):
        k = rng.randint(1, 12)
        t = "".join(rng.choice(words) if rng.random() < 0.6 else rng.choice(pieces) for _ in range(k))
        if rng.random() < 0.3:
            t += "".join(chr(rng.randint(0x4E00, 0x9FD5)) for _ in range(rng.randint(1, 6)))
        jieba_fuzz.append({"text": t, "tokens": list(jieba.cut(t))})

    # Random token lists over a small vocabulary (repeats, sentence ends, quotes, spaces):
    # BLEU and ROUGE on given tokens, no segmentation.
    rng = random.Random(7)
    vocab = ["我", "你", "好", "的", "。", "？", "”", "…", ".", "a", "b", " ", "是", "！"]
    fuzz = []
    for _ in range(150):
        pt = [rng.choice(vocab) for _ in range(rng.randint(0, 14))]
        rt = [rng.choice(vocab) for _ in range(rng.randint(0, 14))]
        bleu = float(sentence_bleu([rt], pt, smoothing_function=SmoothingFunction().method3))
        rouge, _ = rouge_or_none(pt, rt)
        fuzz.append({"pred_tokens": pt, "ref_tokens": rt, "bleu4": bleu, "rouge": rouge})
    return {
        "versions": {
            "python": sys.version.split()[0],
            "jieba": jieba.__version__,
            "nltk": nltk.__version__,
            "rouge_chinese": "1.0.3",
            "numpy": np.__version__,
        },
        "pairs": rows,
        "aggregate": aggregate,
        "jieba_extra": [{"text": t, "tokens": list(jieba.cut(t))} for t in extra] + jieba_fuzz,
        "token_fuzz": fuzz,
    }


def logits_fixture():
    g = torch.Generator().manual_seed(1234)
    vocab = 40
    cases = []
    configs = [
        {"repetition_penalty": 1.3, "temperature": 0.7, "top_k": 10, "top_p": 0.8},
        {"repetition_penalty": 1.0, "temperature": 1.0, "top_k": 50, "top_p": 0.9},
        {"repetition_penalty": 0.8, "temperature": 1.5, "top_k": 0, "top_p": 0.5},
        {"repetition_penalty": 1.1, "temperature": 0.3, "top_k": 3, "top_p": 1.0},
        {"repetition_penalty": 2.0, "temperature": 1.0, "top_k": 1, "top_p": 0.95},
    ]
    # The last two cases use a large, flat vocabulary: many tokens sit near the top-p cut.
    configs += [
        {"repetition_penalty": 1.2, "temperature": 0.8, "top_k": 0, "top_p": 0.9, "vocab": 2000, "scale": 1.0},
        {"repetition_penalty": 1.0, "temperature": 1.0, "top_k": 200, "top_p": 0.7, "vocab": 2000, "scale": 0.5},
    ]
    for cfg in configs:
        batch = 3
        vocab = cfg.pop("vocab", 40)
        scores = torch.randn(batch, vocab, generator=g) * cfg.pop("scale", 3.0)
        input_ids = torch.randint(0, vocab, (batch, 7 if vocab < 100 else 60), generator=g)
        procs = []
        if cfg["repetition_penalty"] != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(cfg["repetition_penalty"]))
        if cfg["temperature"] != 1.0:
            procs.append(TemperatureLogitsWarper(cfg["temperature"]))
        if cfg["top_k"] != 0:
            procs.append(TopKLogitsWarper(cfg["top_k"]))
        if cfg["top_p"] < 1.0:
            procs.append(TopPLogitsWarper(cfg["top_p"]))
        out = scores.clone()
        stages = []
        for p in procs:
            out = p(input_ids, out)
            stages.append({"name": type(p).__name__, "scores": f32rows(out)})
        case = {"config": cfg, "input_ids": input_ids.tolist(), "scores": f32rows(scores)}
        if vocab <= 100:
            # Small vocabulary: every stage's full output.
            case["stages"] = stages
        else:
            # Large vocabulary: the final kept ids and their values only (keeps the file small).
            case["kept"] = [[i for i, x in enumerate(row) if x != float("-inf")] for row in out.tolist()]
            case["kept_values"] = [
                [f32(row[i]) for i in kept] for row, kept in zip(out.tolist(), case["kept"])
            ]
        cases.append(case)
    return {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "note": "processor order as transformers _get_logits_processor: repetition penalty, temperature, top-k, top-p",
        "cases": cases,
    }


def f32(x):
    """A float32 as its shortest round-trip decimal (a marker replaced after json.dumps); -inf -> null."""
    x = float(x)
    if x == float("-inf"):
        return None
    return "@f:" + str(np.float32(x))


def f32rows(t):
    return [[f32(x) for x in row] for row in t.tolist()]


def dump_compact(obj, name):
    path = os.path.join(OUT, name)
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = re.sub(r'"@f:([^"]*)"', r"\1", text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print("wrote", path)


def dump(obj, name):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1, allow_nan=False, default=str)
        f.write("\n")
    print("wrote", path)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    dump(metrics_fixture(), "metrics.json")
    dump_compact(logits_fixture(), "logits.json")
