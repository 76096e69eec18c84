#!/usr/bin/env bash
# Every method of `lowrank train` on the tiny model and the built-in corpus, in f32 (--device cpu)
# and in the CUDA backend's precision (--device cpu-bf16: bf16 weights and activations, f32 master
# weights and optimiser state), 300 steps each, same seed and data: how much does bf16 compute move
# each method's validation loss? Then DLRA and efficient InRank at two more seeds, since a low-rank
# run's escape from the unigram plateau can shift by chance. Writes runs/ and table.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bin=${LOWRANK:-../../target/release/lowrank}
common=(--steps 300 --warmup 30 --eval-every 50 --eval-batches 16 --checkpoint-every 0)
mkdir -p runs
[[ -d runs/base ]] || "$bin" train "${common[@]}" --out runs/base > runs/base.log 2>&1
declare -A methods=(
  [dense]=""
  [efficient]="--lowrank efficient --rank-init 8"
  [inrank]="--lowrank inrank --rank-init 8"
  [dln]="--mlp-dln --rank-init 16"
  [dlra]="--lowrank dlra --rank-init 16 --dlra-window 10"
  [lora]="--lowrank lora --lowrank-layers all --rank-init 8 --lora-base runs/base"
)
for m in dense efficient inrank dln dlra lora; do
  for dev in cpu cpu-bf16; do
    out=runs/$m-$dev
    [[ -f $out/metrics.jsonl ]] && continue
    # shellcheck disable=SC2086
    "$bin" train "${common[@]}" --device $dev ${methods[$m]} --out $out > $out.log 2>&1
  done
done
for seed in 1 2; do
  for m in dlra efficient; do
    for dev in cpu cpu-bf16; do
      out=runs/$m-$dev-seed$seed
      [[ -f $out/metrics.jsonl ]] && continue
      # shellcheck disable=SC2086
      "$bin" train "${common[@]}" --seed $seed --device $dev ${methods[$m]} --out $out > $out.log 2>&1
    done
  done
done
# Past the plateau: DLRA for 1500 steps (warm-up 300, as results/inrank found low-rank runs want),
# two seeds, both precisions.
long=(--steps 1500 --warmup 300 --eval-every 100 --eval-batches 16 --checkpoint-every 0)
for seed in 1337 1; do
  for dev in cpu cpu-bf16; do
    out=runs/dlra-long-$dev-seed$seed
    [[ -f $out/metrics.jsonl ]] && continue
    # shellcheck disable=SC2086
    "$bin" train "${long[@]}" --seed $seed --device $dev ${methods[dlra]} --out $out > $out.log 2>&1
  done
done
val() { tail -1 "runs/$1/metrics.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["val_loss"])'; }
{
  echo "| method | val loss f32 | val loss bf16 | bf16 − f32 |"
  echo "|---|---|---|---|"
  for run in dense efficient inrank dln dlra lora dlra@seed1 dlra@seed2 efficient@seed1 efficient@seed2 dlra-long@seed1337 dlra-long@seed1; do
    m=${run%@*}; s=""; [[ $run == *@* ]] && s=-${run#*@}
    a=$(val "$m-cpu$s"); b=$(val "$m-cpu-bf16$s")
    python3 -c "print(f'| ${run/@/, } | {$a:.4f} | {$b:.4f} | {$b - $a:+.4f} |')"
  done
} > table.md
cat table.md
