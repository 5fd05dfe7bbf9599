#!/usr/bin/env bash
# Session 6's GPU pipeline (issue 7 first). Start detached by
#   HRMEDSEG_COMMIT=... PIPELINE=benchmarks/session6/pipeline.sh bash benchmarks/session3/launch.sh 500
# with carry [".gpu/s3", ".whl"] on two GPUs (one works: the lanes then run one after the
# other); poll.sh collects. DRY=1 rehearses on the CPU.
#  lane 0 (issue 7): the avg_pool2d reproducer, then speed_gpu.py at 1024², batch 16: parity
#     (with the fast_norm path and a U-Net bf16 yardstick), the bf16 profile with the per-op
#     bandwidth table, inference, the switchable fast paths side by side, and torch.compile
#     (training step, inference in default and CUDA-graph modes, fp32 parity), ~6 min for it.
#  lane 1: HRMedSeg's DSB-2018 compare row at 256² with the right δ gradient; 512² bf16 memory
#     profiles of HRMedSeg (with and without checkpointing) and the smp U-Net (the equal-time
#     setting of issue 12); then speed_gpu.py at 512², batch 16 — the variants and the
#     compiled step — to see whether compiling lifts HRMedSeg's launch-bound 512² rate.
# Dropped from the session-5 plan: the equal-time runs with checkpointing (10 GPU-minutes), and
# a compiled equal-time run (its compile time would count against its own 90-s budget).
set -u
source "$(dirname "$0")/../pipeline_env.sh"
if [ "$DRY" = 1 ]; then
  DEV=cpu; N=1; W=0; PS=64; EPOCHS=1; Q=--quick; SPB=90; SPB512=60; PM=hrmedseg,unet_small
  S512="--size 64 --batch 2"
else
  DEV=cuda; N=$(nvidia-smi -L | wc -l); [ $N -gt 2 ] && N=2
  W=8; PS=512; EPOCHS=25; Q=; SPB=450; SPB512=300; PM=hrmedseg,unet_resnet34
  S512="--size 512 --batch 16 --infer-batch 16"
fi
echo "$(date -u +%T) pipeline start (DRY=$DRY, $N lanes)" >> $R/status
wait_wheels
lane_env() { [ "$DEV" = cuda ] && export CUDA_VISIBLE_DEVICES=$1; true; }
lane0() {
  # Is PyTorch's channels-last avg_pool2d backward still wrong on this torch/card? (needs CUDA)
  [ "$DEV" = cuda ] && $PY $J/bench/session5/avgpool_nhwc_backward_repro.py \
    $R/avgpool_nhwc_backward_repro.json > $R/logs/avgpool_repro.log 2>&1
  echo "$(date -u +%T) start speed_gpu 1024" >> $R/status
  $PY $J/bench/speed_gpu.py $Q --parts rates,parity,profile,infer,variants,compile --compile \
    --budget-s $SPB -o $R/speed_gpu.json > $R/logs/speed_gpu.log 2>&1
  echo "$(date -u +%T) end speed_gpu 1024 rc=$?" >> $R/status
}
lane1() {
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
  $PY $J/bench/speed_gpu.py $Q $S512 --parts rates,variants,compile --compile \
    --compile-infer-modes default --budget-s $SPB512 -o $R/speed_gpu_512.json \
    > $R/logs/speed_gpu_512.log 2>&1
  echo "$(date -u +%T) end speed_gpu 512 rc=$?" >> $R/status
}
if [ $N = 1 ]; then
  lane0; lane1
else
  ( lane_env 0; lane0 ) & p0=$!
  ( lane_env 1; lane1 ) & p1=$!
  wait $p0 $p1
fi
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
