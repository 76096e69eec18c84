#!/usr/bin/env bash
# LoRA against full fine-tuning on a domain shift, on the CPU with the tiny model: pre-train on the
# built-in corpus of stories (dense, 1500 steps, the recipe of results/inrank's warmup300), then
# fine-tune on Rust and CUDA source (this repository's own src/, tests/, benches/ and kernels/ at a
# pinned commit, one file per document, 10 % of the files held out), 600 steps each:
#   - full fine-tuning (--init-from), at two learning rates;
#   - LoRA on every linear layer (--lowrank lora --lowrank-layers all, α = 2r) at r = 2, 8, 32
#     (learning rate 3e-3), and r = 8 at 1e-2;
#   - LoRA that also trains the embeddings (--lora-embeddings; the LM head is tied to them) at
#     r = 8 and 32, learning rate 1e-3 with the factors at 3× (--factor-lr-scale 3).
# What each learns: `lowrank eval` of its final checkpoint on the whole held-out code; what it
# forgets: the same on the stories' validation split; and a sample of each (samples.txt). Two runs
# at a time on the 2 cores; a run whose log says it is done is not run again.
set -euo pipefail
cd "$(dirname "$0")"
bin=$(realpath "${LOWRANK_BIN:-../../target/release/lowrank}")
commit=7814539c9ca86137ea0ac9e3d7aaf2f7cd692fe6
work=${LORA_WORK:-/tmp/lora-work}
mkdir -p "$work/text"
# The code corpus: a flat folder of the tracked Rust and CUDA sources at the pinned commit.
rm -rf "$work/text" && mkdir -p "$work/text"
git -C ../.. archive "$commit" src tests benches kernels | tar -x -C "$work/text"
find "$work/text" -type f ! \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' \) -delete
find "$work/text" -type f | while read -r f; do mv "$f" "$work/text/$(echo "${f#$work/text/}" | tr / _).txt"; done
find "$work/text" -mindepth 1 -type d -empty -delete
"$bin" tokenize "$work/text" --out "$work/code" --name code --val-fraction 0.1 --overwrite
code="--data $work/code/code_train_*.bin"

finished() { grep -qs '^done:' "$1.log"; }
finished base || "$bin" train --steps 1500 --warmup 300 --eval-every 100 --rank-log-every 0 --checkpoint-every 500 --out base > base.log 2>&1
ft="$code --steps 600 --warmup 60 --eval-every 50 --rank-log-every 0 --checkpoint-every 0"
run() { local out=$1; shift; finished "$out" || "$bin" train $ft "$@" --out "$out" > "$out.log" 2>&1; }
lora() { local out=$1 r=$2; shift 2; run "$out" --lowrank lora --lowrank-layers all --lora-base base --rank-init "$r" "$@"; }
run full-lr3e-4 --init-from base --lr 3e-4 & run full-lr1e-3 --init-from base --lr 1e-3 & wait
lora lora-r2-lr3e-3 2 --lr 3e-3 & lora lora-r8-lr3e-3 8 --lr 3e-3 & wait
lora lora-r32-lr3e-3 32 --lr 3e-3 & lora lora-r8-lr1e-2 8 --lr 1e-2 & wait
emb="--lora-embeddings --lr 1e-3 --factor-lr-scale 3"
lora lora-emb-r8 8 $emb & lora lora-emb-r32 32 $emb & wait
runs="full-lr3e-4 full-lr1e-3 lora-r2-lr3e-3 lora-r8-lr3e-3 lora-r32-lr3e-3 lora-r8-lr1e-2 lora-emb-r8 lora-emb-r32"
# Each final checkpoint on both validation splits, whole: held-out code (what it learnt) and the
# stories (what it forgot); the base is the starting point of both.
for d in base $runs; do
  echo "$d code: $("$bin" eval --ckpt "$d" --seq 64 --data "$work/code/code_val_*.bin")"
  echo "$d stories: $("$bin" eval --ckpt "$d" --seq 64 --builtin)"
done | tee eval.txt
# What each writes after the start of a Rust function (the same seed for all).
for d in base $runs; do
  printf '== %s\n' "$d"
  "$bin" sample --ckpt "$d" --prompt 'pub fn forward(&self, x: &[f32]) -> Vec<f32> {' --tokens 60 --seed 1
  echo
done > samples.txt
# shellcheck disable=SC2086
"$bin" plot $runs --compare compare.png > compare.txt
for d in base $runs; do rm -rf "$d"/checkpoint-* "$d"/latest; "$bin" plot "$d" > /dev/null; done
