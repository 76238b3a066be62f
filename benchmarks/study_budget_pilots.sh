#!/usr/bin/env bash
# Issue 29 pilots: short Fashion-MNIST searches (fixed epochs, so results do not depend on load), 2 at a time,
# 1 thread each. usage: benchmarks/study_budget_pilots.sh OUTDIR NAME... (names below; docs/study-budget.md).
# A finished pilot is skipped, an interrupted one resumed; benchmarks/study_budget_pilots.py makes the table.
set -u
OUT=$1; shift
BNAS=${BNAS:-.venv/bin/bnas}
base="--dataset fashion-mnist --subset 4000 --init-channels 8 --threads 1 --quiet --eval-every 2 --log-every 8"
declare -A P
P[clr-paper]="--method clr --batch-size 64 --epochs 10"
P[clr-auto]="--method clr --batch-size 64 --epochs 10 --arch-lr auto"
P[clr-auto-w3]="--method clr --batch-size 64 --epochs 10 --arch-lr auto --arch-start-epoch 3"
P[clr-auto-w3-b128]="--method clr --batch-size 128 --epochs 10 --arch-lr auto --arch-start-epoch 3"
P[clr-c6e3-w3-p0]="--method clr --batch-size 64 --epochs 10 --arch-lr 6e-3 --clr-power 0 --arch-start-epoch 3"
P[bnasd-auto]="--method bnas-d --batch-size 64 --epochs 10 --arch-lr auto"
P[bnasd-auto-w3]="--method bnas-d --batch-size 64 --epochs 10 --arch-lr auto --arch-start-epoch 3"
P[clr-auto-w3-s8k]="--method clr --batch-size 64 --epochs 5 --subset 8000 --arch-lr auto --arch-start-epoch 1"
P[clr-s3-w3]="--method clr --batch-size 64 --epochs 10 --arch-lr auto --arch-lr-sum 3 --arch-start-epoch 3"
P[clr-s6-w3]="--method clr --batch-size 64 --epochs 10 --arch-lr auto --arch-lr-sum 6 --arch-start-epoch 3"
P[bnasd-s3-w3]="--method bnas-d --batch-size 64 --epochs 10 --arch-lr auto --arch-lr-sum 3 --arch-start-epoch 3"
P[clr-s3-w3-b128]="--method clr --batch-size 128 --epochs 10 --arch-lr auto --arch-lr-sum 3 --arch-start-epoch 3"
P[clr-s3-w1-s8k]="--method clr --batch-size 64 --epochs 5 --subset 8000 --arch-lr auto --arch-lr-sum 3 --arch-start-epoch 1"
P[clr-s3-w0]="--method clr --batch-size 64 --epochs 10 --arch-lr auto --arch-lr-sum 3"
P[clr-auto-w3-p0]="--method clr --batch-size 64 --epochs 10 --arch-lr auto --arch-start-epoch 3 --clr-power 0"
for name in "$@"; do
  [ -f "$OUT/$name/summary.json" ] && continue
  args=${P[$name]}
  echo "$(date +%T) start $name: $args"
  ( OMP_NUM_THREADS=1 $BNAS search $base $args --out "$OUT/$name" --seed 0 > "$OUT/$name.log" 2>&1 || \
    OMP_NUM_THREADS=1 $BNAS search $base $args --out "$OUT/$name" --seed 0 --resume >> "$OUT/$name.log" 2>&1
    echo "$(date +%T) done $name rc=$?" )
done
