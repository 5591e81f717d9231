"""Expected ids of THUDM's real ChatGLM-6B tokenizer (ice_text.model, a 130344-piece SentencePiece
Unigram model with the nmt_nfkc normalizer) for tests/glm6b_tokenizer.rs.

Run:  /work/pyref/bin/python tests/reference/glm6b_real_ids.py DIR
where DIR holds ice_text.model (THUDM/chatglm-6b's, sha256 5e974d9a...f17e; not committed: it is
2.7 MB). Writes tests/fixtures/glm6b/real_ids.json.

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


def main():
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
    dst = os.path.join(os.path.dirname(__file__), "..", "fixtures", "glm6b", "real_ids.json")
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {dst}: {len(out)} cases, sentencepiece {spm.__version__}, thudm={thudm is not None}")


if __name__ == "__main__":
    main()
