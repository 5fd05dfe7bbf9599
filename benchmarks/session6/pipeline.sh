#!/usr/bin/env bash
# Prepared in session 5 for the next GPU session (issues 12 and 7). Start detached by
#   HRMEDSEG_COMMIT=... PIPELINE=benchmarks/session6/pipeline.sh bash benchmarks/session3/launch.sh 530
# with carry [".gpu/s3", ".whl"] on one or two GPUs; poll.sh collects. DRY=1 rehearses on the CPU.
#  A. (issue 12, memory ratio) the equal-time runs of default HRMedSeg again with gradient
#     checkpointing (exact, less memory, more compute), same 90-s budget, lr 5e-4, 3 seeds,
#     Kvasir-SEG and DSB-2018; the U-Net and scratch runs of results/equal_time_h200x2_90s/ stay.
#  B. (issues 4/6 follow-up) HRMedSeg's row of the DSB-2018 compare at 256², rerun with the right
#     δ gradient; and peak memory at the equal-time setting (512², batch 16, bf16) for HRMedSeg
#     with and without checkpointing and the smp U-Net, one profile each.
#  C. (issue 7) speed_gpu.py: parity (now also the GPU fp32 path against the CPU), the bf16
#     profile and inference, and torch.compile with ~5 minutes for it.
#  D. (after B) one Kvasir-SEG equal-time run of HRMedSeg with train.compile_mode=reduce-overhead.
set -u
source "$(dirname "$0")/../pipeline_env.sh"
if [ "$DRY" = 1 ]; then
  DEV=cpu; N=2; W=0; PS=64; EPOCHS=1; Q=--quick; SPB=60; PM=hrmedseg,unet_small
  ARGS="--size 64 --budget-s 2 --seeds 0 --workers 0 --batch 4 --precision fp32 --datasets dsb2018"
else
  DEV=cuda; N=$(nvidia-smi -L | wc -l); [ $N -gt 2 ] && N=2
  W=$(( ($(nproc) - 2) / N )); [ $W -gt 14 ] && W=14; PS=512; EPOCHS=25; Q=; SPB=420
  PM=hrmedseg,unet_resnet34
  ARGS="--size 512 --budget-s ${BUDGET:-90} --seeds 0,1,2 --workers $W"
fi
echo "$(date -u +%T) pipeline start (DRY=$DRY, $N lanes)" >> $R/status
wait_wheels
lane_env() { [ "$DEV" = cuda ] && export CUDA_VISIBLE_DEVICES=$1; true; }
stage_b() {
  echo "$(date -u +%T) start compare" >> $R/status
  $PY -m hrmedseg compare --config $J/bench/session6/compare_hrmedseg_dsb2018_256.yaml -o $R/compare \
    --device $DEV data.root=$J/data/dsb2018 train.epochs=$EPOCHS data.workers=$W \
    data.cache_dir=$J/cache/dsb_cmp $([ "$DRY" = 1 ] && echo "data.size=[64,64] train.precision=fp32") \
    > $R/logs/compare.log 2>&1
  local rc=$?
  rm -rf $R/compare/*/checkpoints
  echo "$(date -u +%T) end compare rc=$rc" >> $R/status
  for ck in "" --grad-checkpointing; do
    $PY -m hrmedseg profile $PM --size $PS --batch 16 --device $DEV --dtype bf16 \
      --no-macs $ck --json $R/profile_${PS}_bf16${ck:+_ckpt}.json
  done > $R/logs/profile_512.log 2>&1
  echo "$(date -u +%T) end profiles rc=$?" >> $R/status
  # D. HRMedSeg looked launch-bound at 512² (slower than the U-Net in img/s): one Kvasir-SEG
  #    equal-time run with CUDA graphs (torch.compile mode reduce-overhead), compile time inside
  #    the 90-s budget. Skipped in the rehearsal (the CPU has no CUDA graphs).
  if [ "$DRY" != 1 ]; then
    echo "$(date -u +%T) start compiled equal_time" >> $R/status
    timeout 420 $PY $J/bench/equal_time.py --data-root $J/data --pretrained default \
      --out $R/equal_time_compiled --work $J/etc --device $DEV $ARGS --runs pretrained \
      --lrs 5e-4 --datasets kvasir-seg --seeds 0 --hr-set train.compile=true \
      --hr-set train.compile_mode=reduce-overhead > $R/logs/equal_time_compiled.log 2>&1
    echo "$(date -u +%T) end compiled equal_time rc=$?" >> $R/status
  fi
}
stage_c() {
  # Is PyTorch's channels-last avg_pool2d backward still wrong on this torch/card? (needs CUDA)
  [ "$DEV" = cuda ] && $PY $J/bench/session5/avgpool_nhwc_backward_repro.py \
    $R/avgpool_nhwc_backward_repro.json > $R/logs/avgpool_repro.log 2>&1
  echo "$(date -u +%T) start speed_gpu" >> $R/status
  $PY $J/bench/speed_gpu.py $Q --parts rates,parity,profile,infer,compile --budget-s $SPB \
    -o $R/speed_gpu.json > $R/logs/speed_gpu.log 2>&1
  echo "$(date -u +%T) end speed_gpu rc=$?" >> $R/status
}
pids=""
for i in $(seq 0 $((N - 1))); do
  ( lane_env $i
    echo "$(date -u +%T) start equal_time lane $i" >> $R/status
    $PY $J/bench/equal_time.py --data-root $J/data --pretrained default --out $R/equal_time_ckpt \
      --work $J/et --device $DEV --lane $i/$N --runs pretrained --lrs 5e-4 \
      --hr-set model.grad_checkpointing=true $ARGS > $R/logs/equal_time_lane$i.log 2>&1
    echo "$(date -u +%T) end equal_time lane $i rc=$?" >> $R/status
    if [ $N = 1 ]; then stage_b; stage_c
    elif [ $i = 0 ]; then stage_c
    else stage_b; fi ) &
  pids="$pids $!"
done
wait $pids
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
