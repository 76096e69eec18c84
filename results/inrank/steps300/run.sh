set -x
B=target/release/lowrank
cp $B results/inrank/steps300/lowrank
B=results/inrank/steps300/lowrank
$B train --steps 300 --warmup 20 --eval-every 50 --rank-log-every 25 --checkpoint-every 0 --lowrank efficient --rank-alpha 0.99 --rank-warmup 10 --rank-gap 3 --stage1-steps 150 --out results/inrank/steps300/efficient-a99
$B train --steps 300 --warmup 20 --eval-every 50 --rank-log-every 25 --checkpoint-every 0 --lowrank dense --out results/inrank/steps300/dense
