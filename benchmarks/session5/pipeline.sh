#!/usr/bin/env bash
# Session 5's GPU run (issues 12 and 7), one process per GPU. Started detached by
#   HRMEDSEG_COMMIT=... PIPELINE=benchmarks/session5/pipeline.sh bash benchmarks/session3/launch.sh 530
# with carry [".gpu/s3", ".whl"] (BUDGET=90 SWEEP=45 on two GPUs); poll.sh collects. DRY=1 rehearses on the CPU.
#  A. kvasir_early_training.py on the GPU at the equal-time scale (512², batch 16, bf16, 220 steps,
#     Kvasir-SEG train → val): why the session-4 GPU runs stayed on the all-background plateau
#     when the CPU runs did not, and which recipe variant escapes best; two variants per GPU.
#  B. pick_recipe.py applies the rule fixed in it (val Dice; default unless ≥ 2 points worse).
#  C. equal_time.py with that recipe for both models, minutes per run: BUDGET (s per comparison
#     run, default 120) and SWEEP (s per sweep run, default 60), dealt out over the GPUs.
#  D. on the last GPU once its lane is done: pooling profiles (direct vs separable with the
#     adjoint backward, fp32 and bf16, 1024², batch 16) and speed_gpu.py's profile and parity.
set -u
source "$(dirname "$0")/../pipeline_env.sh"
if [ "$DRY" = 1 ]; then
  DEV=cpu; N=2; W=0
  KARGS="--size 64 --batch 4 --steps 4 --warmup-steps 1 --val-every 2 --precision fp32 --workers 0"
  VARS=("default,loss_dice" "clip1")
  ARGS="--size 64 --budget-s 2 --sweep-budget-s 2 --lrs 1e-3,2e-3 --seeds 0 --workers 0 --batch 4 --precision fp32 --baseline unet_small --datasets dsb2018 --sweep-dataset dsb2018"
else
  DEV=cuda; N=$(nvidia-smi -L | wc -l)
  W=$(( ($(nproc) - 2) / N )); [ $W -gt 14 ] && W=14
  KARGS="--size 512 --batch 16 --steps 220 --warmup-steps 25 --val-every 20 --precision bf16 --workers $W --threads 2"
  if [ $N -ge 4 ]; then
    VARS=("default,lr_3e-3" "loss_dice,out_bias_prior" "dice_x3,clip1" "loss_dice_focal,no_warmup"); SCRATCH=0,1
  else   # two GPUs: three variants each, one scratch seed
    VARS=("default,loss_dice,clip1" "dice_x3,out_bias_prior,lr_3e-3"); SCRATCH=0
  fi
  ARGS="--size 512 --budget-s ${BUDGET:-120} --sweep-budget-s ${SWEEP:-60} --lrs 5e-4,1e-3,2e-3 --seeds 0,1,2 --scratch-seeds $SCRATCH --workers $W --baseline unet_resnet34"
fi
echo "$(date -u +%T) pipeline start (DRY=$DRY, $N lanes)" >> $R/status
wait_wheels
lane_env() { [ "$DEV" = cuda ] && export CUDA_VISIBLE_DEVICES=$1; true; }

# A. early training on the GPU, variants dealt over the GPUs (as many lanes as variant groups).
pids=""
for i in $(seq 0 $(( ${#VARS[@]} - 1 ))); do
  ( lane_env $(( i % N ))
    echo "$(date -u +%T) start early lane $i" >> $R/status
    $PY $J/bench/kvasir_early_training.py --device $DEV --data-root $J/data/kvasir-seg $KARGS \
      --variants ${VARS[$i]} --out $R/early_lane$i --work $J/early$i > $R/logs/early_lane$i.log 2>&1
    echo "$(date -u +%T) end early lane $i rc=$?" >> $R/status ) &
  pids="$pids $!"
done
wait $pids

# B. the recipe pick.
SETS=$($PY $J/bench/pick_recipe.py $R/kvasir_early_training $R/early_lane* 2> $R/logs/pick.log)
echo "$(date -u +%T) picked: [${SETS}] rc=$?" >> $R/status
SETARGS=""; for s in $SETS; do SETARGS="$SETARGS --set $s"; done

# C + D.
PS=1024; [ "$DRY" = 1 ] && PS=128
pids=""
for i in $(seq 0 $((N - 1))); do
  ( lane_env $i
    echo "$(date -u +%T) start equal_time lane $i" >> $R/status
    $PY $J/bench/equal_time.py --data-root $J/data --pretrained default --out $R/equal_time \
      --work $J/et --device $DEV --lane $i/$N $ARGS $SETARGS > $R/logs/equal_time_lane$i.log 2>&1
    echo "$(date -u +%T) end equal_time lane $i rc=$?" >> $R/status
    if [ $i = $((N - 1)) ]; then
      echo "$(date -u +%T) start pooling profiles" >> $R/status
      for dt in bf16 fp32; do for impl in direct separable; do
        $PY -m hrmedseg profile hrmedseg --size $PS --batch 16 --device $DEV --dtype $dt --no-macs \
          --set pool_impl=$impl --json $R/profile_pool_${impl}_$dt.json
      done; done > $R/logs/pooling.log 2>&1
      $PY $J/bench/speed_gpu.py $([ "$DRY" = 1 ] && echo --quick) --parts rates,profile,infer,parity,compile --budget-s 180 \
        -o $R/speed_gpu.json >> $R/logs/pooling.log 2>&1
      echo "$(date -u +%T) end pooling profiles rc=$?" >> $R/status
    fi ) &
  pids="$pids $!"
done
wait $pids
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
