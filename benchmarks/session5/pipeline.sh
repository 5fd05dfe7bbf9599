#!/usr/bin/env bash
# The next equal-GPU-time run (issue 12), prepared in session 4: the same comparison as
# results/equal_time_h200/ but minutes per run instead of 25 s, dealt out over every GPU of the
# machine (equal_time.py --lane I/N, one process per GPU, shared --out). Started detached by
#   HRMEDSEG_COMMIT=... PIPELINE=benchmarks/session5/pipeline.sh bash benchmarks/session3/launch.sh 530
# with carry [".gpu/s3", ".whl"]; poll.sh collects. Budgets: BUDGET (s per comparison run,
# default 120) and SWEEP (s per sweep run, default 60): 6 sweep + 14 comparison runs, about
# 12 min on four GPUs. DRY=1 rehearses on the CPU with tiny sizes.
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
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
