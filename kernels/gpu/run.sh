#!/bin/bash
# One device call (kernels/NOTES.md): selftest, end-to-end runs, peft reference, kernel bench.
set -u
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}
export RECIPE_CUDA_INCLUDE=/usr/local/cuda/include RECIPE_PTX_CACHE=/tmp/ptx PYTHONUNBUFFERED=1 NO_COLOR=1
R=.gpu/recipe; S=$OUT/summary.txt; E=$OUT/e2e.txt; M=$OUT/mem.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 ))s] $*" | tee -a $S; }
{ date -u; nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv; ls /usr/local/cuda/lib64 | grep -i nvrtc; python3 -c 'import torch,transformers,peft;print(torch.__version__,transformers.__version__,peft.__version__)'; } > $OUT/env.txt 2>&1
el "env done: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
# the random 7B-shaped model dir (4 layers) while the selftest runs
( python3 tests/reference/gpu_train_ref.py make /tmp/l7b ${MAKE_ARGS:---layers 4} > /tmp/make.log 2>&1; for i in $(seq 12); do cat examples/quickstart/corpus.jsonl; done > /tmp/corpus.jsonl ) &
mk=$!
timeout 110 $R selftest --device cuda > $OUT/selftest.txt 2>&1; el "selftest rc=$? pass=$(grep -c PASS $OUT/selftest.txt) fail=$(grep -c -E 'FAIL|ERROR' $OUT/selftest.txt)"
grep -E 'FAIL|ERROR' $OUT/selftest.txt | head -20 | tee -a $S
echo "=== quickstart cuda" >> $E
timeout 50 $R run recipes/quickstart.toml --device cuda --cache-dir /tmp/c1 >> $E 2>&1; el "quickstart cuda rc=$?"
wait $mk; cat /tmp/make.log >> $E; el "make: $(tail -c 300 /tmp/make.log | tr '\n' ' ')"
mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > /tmp/mem_$1.txt 2>/dev/null & echo $!; }
peak() { kill $1 2>/dev/null; wait $1 2>/dev/null; echo "$2 peak_mib=$(sort -n /tmp/mem_$2.txt | tail -1) base_mib=$(head -1 /tmp/mem_$2.txt)" | tee -a $M >> $S; }
G="tests/reference/gpu_train.toml --set vars.model_dir=/tmp/l7b --set vars.corpus=/tmp/corpus.jsonl --device cuda"
echo "=== qlora 7B-shape x4 layers" >> $E
p=$(mem qlora); timeout 100 $R run $G --cache-dir /tmp/c2 >> $E 2>&1; rc=$?; peak $p qlora; el "qlora rc=$rc $(grep 'tok/s' $E | tail -3 | tr '\n' '|')"
echo "=== lora bf16 base 7B-shape x4 layers" >> $E
p=$(mem lora); timeout 80 $R run $G --cache-dir /tmp/c2 --set steps.train.model=base --set steps.train.optim=adamw >> $E 2>&1; rc=$?; peak $p lora; el "lora rc=$rc $(grep 'tok/s' $E | tail -3 | tr '\n' '|')"
echo "=== peft reference" >> $E
p=$(mem peft); timeout 70 python3 tests/reference/gpu_train_ref.py train /tmp/l7b --steps 5 >> $E 2>&1; rc=$?; peak $p peft; el "peft rc=$rc $(grep tokens_per_s $E | tail -1)"
timeout 75 $R bench --device cuda > $OUT/bench.txt 2>&1; el "bench rc=$?"
cat $OUT/bench.txt | tail -16
echo ==== summary; cat $S
