#!/usr/bin/env bash
# The flagship command and nanoGPT's train.py on the same config and data, one after
# the other on one GPU, each timed as a whole process, with peak GPU memory from
# nvidia-smi (polled every 200 ms). Run from the repository root:
#   bash bench/flagship.sh DATA_FILE NANOGPT_DIR [LOG_DIR]
# TG_FLAGS are added to our command (e.g. "--dtype float32"), NANOGPT_FLAGS replace
# nanoGPT's precision flags (default "--compile=False --dtype=float32"; its own
# default is "--dtype=bfloat16" with compile on). SKIP_NANOGPT=1 runs ours alone.
# NANOGPT_DIR: a checkout of karpathy/nanoGPT whose data/shakespeare_char/ holds the
# train.bin / val.bin / meta.pkl that its prepare.py made from DATA_FILE.
set -u
data=$(realpath "$1"); nano=$2; logs=$(mkdir -p "${3:-.}" && cd "${3:-.}" && pwd)
run() {   # name, command...
    local name=$1; shift
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$logs/$name.mem" &
    local poll=$!
    local t0=$(date +%s%N)
    "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    local t1=$(date +%s%N)
    kill $poll
    local peak=$(sort -n "$logs/$name.mem" | tail -1)
    local ms=$(( (t1 - t0) / 1000000 ))
    printf '%-12s exit %s  %d.%03d s  peak GPU memory %s MiB (nvidia-smi)\n' "$name" $rc $((ms / 1000)) $((ms % 1000)) "$peak"
}
rm -rf out-flagship
run tensorgrad env PYTHONPATH=. python examples/train_shakespeare.py --device cuda --data "$data" \
    --out-dir out-flagship --no-progress ${TG_FLAGS:-}
[ -n "${SKIP_NANOGPT:-}" ] || (cd "$nano" && rm -rf out-shakespeare-char && \
 run nanogpt python train.py config/train_shakespeare_char.py ${NANOGPT_FLAGS:---compile=False --dtype=float32})
grep -h "iter 5000\|best\|val" "$logs/tensorgrad.log" | tail -4
grep -h "step 1750\|step 5000" "$logs/nanogpt.log"
