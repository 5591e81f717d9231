"""Expected ids of THUDM's real ChatGLM-6B tokenizer (ice_text.model, a 130344-piece SentencePiece
Unigram model with the nmt_nfkc normalizer) for tests/glm6b_tokenizer.rs.

Run:  /work/pyref/bin/python tests/reference/glm6b_real_ids.py [DIR]
where DIR holds ice_text.model (THUDM/chatglm-6b's, sha256 5e974d9a...f17e; not committed: it is
2.7 MB). Writes tests/fixtures/glm6b/real_ids.json (only with DIR), and always
tests/fixtures/glm6b/unigram/{ice_text.model, tokenizer_config.json} + unigram_ids.json: a small
Unigram model trained here with the real one's settings (control [MASK]..<dBLOCK>, user-defined
<n> <|tab|> <|blank_2..80|>, pad 3, byte fallback, remove_extra_whitespaces, a small custom
charsmap in place of nmt_nfkc's 240 KB: full-width letters/digits/comma and U+3000 -> ASCII;
printable ASCII as required characters, as the real vocabulary has them, see sentencepiece.rs
unigram_json) and
the same strings' ids, for src/text/glm1_tests.rs (CI has no ice_text.model).

The rules are tokenization_chatglm.py's SPTokenizer.encode / decode with num_image_tokens 0 (the
HF repo's tokenizer_config.json): "\n" -> <n>, "\t" -> <|tab|>, runs of 80 down to 2 spaces ->
<|blank_N|>, then plain sentencepiece; decode reverses them. If DIR also holds THUDM's
tokenization_chatglm.py, its SPTokenizer is run too and must agree.
"""

import hashlib
import json
import os
import sys

import sentencepiece as spm

MAX_BLANK = 80


def preprocess(text):
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for i in range(MAX_BLANK, 1, -1):
        text = text.replace(" " * i, f"<|blank_{i}|>")
    return text


def postprocess(text):
    text = text.replace("<n>", "\n").replace("<|tab|>", "\t")
    for i in range(2, MAX_BLANK + 1):
        text = text.replace(f"<|blank_{i}|>", " " * i)
    return text


SEED_PROMPT = "类型#上衣*材质#牛仔布*颜色#白色*风格#简约*图案#刺绣*衣样式#外套*衣款式#破洞"
SEED_ANSWER = (
    "简约而不简单的牛仔外套,白色的衣身十分百搭。衣身多处有做旧破洞设计,打破单调乏味,"
    "增加一丝造型看点。衣身后背处有趣味刺绣装饰,丰富层次感,彰显别样时尚。"
)

CASES = [
    SEED_PROMPT,
    SEED_ANSWER,
    "你好",
    "[Round 0]\n问：你好\n答：你好👋！我是人工智能助手 ChatGLM-6B，很高兴见到你，欢迎问我任何问题。\n[Round 1]\n问：晚上睡不着应该怎么办\n答：",
    "def main():\n    print('hello world')\t# greeting\n\n\tif x  ==  1:\n\t\treturn",
    "I like walking my cute dog\n and\x17 then, 生活的真谛是  \t\t\t\t \n\n61",
    "Hello world",
    " leading space",
    "trailing space ",
    "  two leading",
    "two trailing  ",
    "hello \nworld",
    "hello\n world",
    "a \n b",
    "\n",
    "\n\n",
    "\nstarts with newline",
    "ends with newline\n",
    " ",
    "  ",
    "\t",
    "x" + " " * 85 + "y",
    "x" + " " * 81 + "y",
    "中文English混合text，全角标点！（括号）",
    "全角空格\u3000在中间",
    "\u3000\u3000段落缩进的中文。",
    "行尾全角空格\u3000",
    "ＡＢＣ１２３ｆｕｌｌｗｉｄｔｈ",
    "emoji 🦀🦀 and rare 𠀀 chars",
    "Tab\tseparated\tvalues\n1\t2\t3",
    "1. 第一\n2. 第二\n\n- 列表项",
    "价格：99.9元/件，折扣8.5折",
    "Ünïcödé àccents café naïve",
    "<sop> and [gMASK] as text",
    "<n> literal",
]


ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "glm6b")
CONTROL = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
USER = ["<n>", "<|tab|>"] + [f"<|blank_{i}|>" for i in range(2, MAX_BLANK + 1)]


def cases(sp):
    out = []
    for text in CASES:
        ids = sp.encode(preprocess(text))
        out.append({"text": text, "ids": ids, "pieces": [sp.id_to_piece(i) for i in ids],
                    "decoded": postprocess(sp.decode(ids))})
    return out


def synthetic():
    import shutil
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import text_make_fixtures as tf

    tmp = tempfile.mkdtemp()
    tsv = os.path.join(tmp, "rules.tsv")
    with open(tsv, "w") as f:
        for a, b, count in [(0xFF21, 0x41, 26), (0xFF41, 0x61, 26), (0xFF10, 0x30, 10)]:
            for i in range(count):
                f.write(f"{a + i:X}\t{b + i:X}\n")
        f.write("3000\t20\nFF0C\t2C\n")
    path = tf.train_sp(tmp, "ice_text", model_type="unigram", vocab_size=600, pad_id=3, bos_id=1,
                       eos_id=2, unk_id=0, control_symbols=CONTROL, user_defined_symbols=USER,
                       normalization_rule_name=None, normalization_rule_tsv=tsv,
                       remove_extra_whitespaces=True, required_chars=ASCII)
    sp = spm.SentencePieceProcessor(model_file=path)
    out = os.path.join(ROOT, "unigram")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    shutil.copy(path, os.path.join(out, "ice_text.model"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
                   "bos_token": "<sop>", "do_lower_case": False, "end_token": "</s>",
                   "eos_token": "<eop>", "gmask_token": "[gMASK]", "mask_token": "[MASK]",
                   "model_max_length": 2048, "num_image_tokens": 0, "pad_token": "<pad>",
                   "padding_side": "left", "remove_space": False,
                   "tokenizer_class": "ChatGLMTokenizer", "unk_token": "<unk>"}, f, indent=2)
    special = {t: sp.piece_to_id(t) for t in ["<pad>", "<n>", "[gMASK]", "<sop>", "<eop>"]}
    with open(os.path.join(ROOT, "unigram_ids.json"), "w", encoding="utf-8") as f:
        json.dump({"special": special, "cases": cases(sp)}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {out}: {sp.get_piece_size()} pieces, {special}")


def main():
    synthetic()
    if len(sys.argv) < 2:
        return
    d = sys.argv[1]
    path = os.path.join(d, "ice_text.model")
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    sp = spm.SentencePieceProcessor(model_file=path)
    thudm = None
    if os.path.exists(os.path.join(d, "tokenization_chatglm.py")):
        sys.path.insert(0, d)
        import tokenization_chatglm

        thudm = tokenization_chatglm.SPTokenizer(path, num_image_tokens=0)
    out = []
    for text in CASES:
        ids = sp.encode(preprocess(text))
        decoded = postprocess(sp.decode(ids))
        if thudm is not None:
            assert thudm.encode(text) == ids, text
            assert thudm.decode(ids) == decoded, text
        out.append({"text": text, "ids": ids, "pieces": [sp.id_to_piece(i) for i in ids],
                    "decoded": decoded})
    special = {t: sp.piece_to_id(t) for t in ["<pad>", "<n>", "[MASK]", "[gMASK]", "<sop>", "<eop>"]}
    res = {"ice_text_sha256": sha, "vocab": sp.vocab_size(), "special": special,
           "checked_against_thudm": thudm is not None, "cases": out}
    dst = os.path.join(ROOT, "real_ids.json")
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {dst}: {len(out)} cases, sentencepiece {spm.__version__}, thudm={thudm is not None}")


if __name__ == "__main__":
    main()
