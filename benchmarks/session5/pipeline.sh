#!/usr/bin/env bash
# The next equal-GPU-time run (issue 12), prepared in session 4: the same comparison as
# results/equal_time_h200/ but minutes per run instead of 25 s, dealt out over every GPU of the
# machine (equal_time.py --lane I/N, one process per GPU, shared --out). Started detached by
#   HRMEDSEG_COMMIT=... PIPELINE=benchmarks/session5/pipeline.sh bash benchmarks/session3/launch.sh 530
# with carry [".gpu/s3", ".whl"]; poll.sh collects. Budgets: BUDGET (s per comparison run,
# default 120) and SWEEP (s per sweep run, default 60): 6 sweep + 14 comparison runs, about
# 12 min on four GPUs, then the pooling profiles of issue 7 (~2 min). DRY=1 rehearses on the CPU.
set -u
source "$(dirname "$0")/../pipeline_env.sh"
if [ "$DRY" = 1 ]; then
  DEV=cpu; N=2; ARGS="--size 64 --budget-s 2 --sweep-budget-s 2 --lrs 1e-3,2e-3 --seeds 0 --workers 0 --batch 4 --precision fp32 --baseline unet_small --datasets dsb2018 --sweep-dataset dsb2018"
else
  DEV=cuda; N=$(nvidia-smi -L | wc -l)
  W=$(( ($(nproc) - 2) / N )); [ $W -gt 14 ] && W=14
  ARGS="--size 512 --budget-s ${BUDGET:-120} --sweep-budget-s ${SWEEP:-60} --lrs 5e-4,1e-3,2e-3 --seeds 0,1,2 --workers $W --baseline unet_resnet34"
fi
echo "$(date -u +%T) pipeline start (DRY=$DRY, $N lanes)" >> $R/status
wait_wheels
pids=""
for i in $(seq 0 $((N - 1))); do
  ( [ "$DEV" = cuda ] && export CUDA_VISIBLE_DEVICES=$i
    echo "$(date -u +%T) start equal_time lane $i" >> $R/status
    $PY $J/bench/equal_time.py --data-root $J/data --pretrained default --out $R/equal_time \
      --work $J/et --device $DEV --lane $i/$N $ARGS > $R/logs/equal_time_lane$i.log 2>&1
    echo "$(date -u +%T) end equal_time lane $i rc=$?" >> $R/status ) &
  pids="$pids $!"
done
wait $pids
# Issue 7: time the separable pooling's adjoint backward against the direct pooling, fp32 and bf16
# (same harness as results/speed_h200/), and its GPU parity.
PS=1024; [ "$DRY" = 1 ] && PS=128
( [ "$DEV" = cuda ] && export CUDA_VISIBLE_DEVICES=0
  echo "$(date -u +%T) start pooling profiles" >> $R/status
  for dt in bf16 fp32; do for impl in direct separable; do
    $PY -m hrmedseg profile hrmedseg --size $PS --batch 16 --device $DEV --dtype $dt --no-macs \
      --set pool_impl=$impl --json $R/profile_pool_${impl}_$dt.json
  done; done > $R/logs/pooling.log 2>&1
  $PY $J/bench/speed_gpu.py $([ "$DRY" = 1 ] && echo --quick) --parts parity -o $R/speed_gpu_parity.json >> $R/logs/pooling.log 2>&1
  echo "$(date -u +%T) end pooling profiles rc=$?" >> $R/status )
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
