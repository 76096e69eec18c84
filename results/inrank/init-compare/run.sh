for init in random spectral function-closed function; do
  target/release/lowrank train --steps 100 --eval-every 25 --rank-log-every 25 --checkpoint-every 0 --lowrank efficient --rank-warmup 10 --rank-gap 3 --stage1-steps 50 --lowrank-init $init --out results/inrank/init-compare/$init
done
