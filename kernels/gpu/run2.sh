#!/bin/bash
# Second device call: per-op profile of the 4-layer QLoRA step, no-checkpointing variant, full 7B shape.
set -u
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export RECIPE_CUDA_INCLUDE=/usr/local/cuda/include RECIPE_PTX_CACHE=/tmp/ptx PYTHONUNBUFFERED=1 NO_COLOR=1
R=.gpu/recipe; S=$OUT/summary.txt; E=$OUT/e2e.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a $S; }
mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem_$1.txt 2>/dev/null & echo $!; }
peak() { kill $1 2>/dev/null; wait $1 2>/dev/null; echo "$2 peak_mib=$(sort -n /tmp/mem_$2.txt | tail -1)" >> $S; }
tps() { grep 'tok/s' $E | tail -${1:-3} | sed 's/.*grad_norm [0-9.]* *//' | tr '\n' ' '; }
( python3 tests/reference/gpu_train_ref.py make /tmp/l4 --layers 4 > /tmp/make4.log 2>&1; for i in $(seq 12); do cat examples/quickstart/corpus.jsonl; done > /tmp/corpus.jsonl ) 
el "make4 $(tail -c 120 /tmp/make4.log | tr '\n' ' ')"
( python3 tests/reference/gpu_train_ref.py make /tmp/l32 --layers 32 > /tmp/make32.log 2>&1 ) &
mk=$!
G="tests/reference/gpu_train.toml --set vars.corpus=/tmp/corpus.jsonl --device cuda --cache-dir /tmp/c2"
echo "=== profile qlora x4" >> $E
RECIPE_CUDA_PROFILE=1 timeout 60 $R run $G --set vars.model_dir=/tmp/l4 --set steps.train.max_steps=4 > /tmp/prof.txt 2>&1; el "profile rc=$?"
grep -v '^\s*$' /tmp/prof.txt > $OUT/profile.txt
echo "=== qlora x4 no checkpointing" >> $E
p=$(mem nockpt); timeout 60 $R run $G --set vars.model_dir=/tmp/l4 --set steps.train.gradient_checkpointing=false >> $E 2>&1; rc=$?; peak $p nockpt; el "nockpt rc=$rc $(tps)"
echo "=== qlora x4 f32" >> $E
timeout 60 $R run $G --set vars.model_dir=/tmp/l4 --set steps.train.dtype=f32 --set steps.train.max_steps=4 >> $E 2>&1; el "f32 rc=$? $(tps 2)"
wait $mk; el "make32 $(tail -c 120 /tmp/make32.log | tr '\n' ' ')"; df -h /tmp | tail -1 >> $S
echo "=== qlora 7B (32 layers)" >> $E
p=$(mem q32); timeout 150 $R run $G --set vars.model_dir=/tmp/l32 >> $E 2>&1; rc=$?; peak $p q32; el "qlora7b rc=$rc $(tps)"
grep -E "ran \(|MiB|quantized" $E | tail -8 >> $S
echo "=== peft 7B" >> $E
p=$(mem p32); timeout 100 python3 tests/reference/gpu_train_ref.py train /tmp/l32 --steps 4 >> $E 2>&1; rc=$?; peak $p p32; el "peft7b rc=$rc $(grep tokens_per_s $E | tail -1)"
echo ==== profile head; head -45 $OUT/profile.txt | grep -A40 "cuda profile"
echo ==== summary; cat $S
