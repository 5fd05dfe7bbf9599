#!/usr/bin/env bash
# Session 4's GPU work on a machine of two GPUs, detached (started by session3/launch.sh with
# PIPELINE=benchmarks/session4/pipeline.sh; poll.sh collects). Three phases:
#   1. both GPUs: DDP scaling of HRMedSeg at 1024² (1 vs 2 GPUs, issue 9)
#   2. two lanes side by side, one GPU each:
#        lane A (GPU 0): equal_time.py — lr sweep, then default HRMedSeg vs ResNet-34 U-Net at
#                        equal GPU time, Kvasir-SEG and DSB-2018, 3 seeds (issues 12, 5)
#        lane B (GPU 1): compare on DSB-2018 (issues 4, 6), pooling profiles + parity (issue 7),
#                        serve batching (issue 10), the 1-GPU DSB-2018 runs of issue 9
#   3. both GPUs: the 2-GPU DSB-2018 runs of issue 9, then the scaling report
# Each stage logs to $R/logs/<stage>.log and appends start/end lines to $R/status.
# DRY=1: every stage on the CPU with tiny sizes (a rehearsal of the same commands).
set -u
source "$(dirname "$0")/../pipeline_env.sh"
if [ "$DRY" = 1 ]; then
  DEV=cpu; NGPU=2; SIZE=64; BUDGET=3; SWEEP=2; SEEDS=0; LRS=1e-3; WORKERS=2; CMP_SIZE=64
  CMP_EPOCHS=1; DDP_SIZE=64; DDP_B=2; DDP_IT="--warmup 1 --iters 2"; REAL_EP=1; REAL_SIZE=64
  REAL_SEEDS=0; Q=--quick; BASE=unet_small; ETX="--batch 4 --precision fp32"; CMPX="train.precision=fp32 train.batch_size=4"
  GA=""; GB=""
else
  DEV=cuda; NGPU=$(nvidia-smi -L | wc -l); SIZE=512; BUDGET=${BUDGET:-25}; SWEEP=${SWEEP:-18}
  SEEDS=0,1,2; LRS=5e-4,1e-3,2e-3; WORKERS=12; CMP_SIZE=256; CMP_EPOCHS=${CMP_EPOCHS:-25}
  DDP_SIZE=1024; DDP_B=16; DDP_IT=""; REAL_EP=${REAL_EP:-30}; REAL_SIZE=256; REAL_SEEDS=${REAL_SEEDS:-0 1}
  Q=""; BASE=unet_resnet34; ETX=""; CMPX=""
  GA=0; GB=1   # the GPU of each lane
fi
stage() {
  local name=$1; shift
  echo "$(date -u +%T) start $name" >> $R/status
  ( "$@" ) > $R/logs/$name.log 2>&1
  echo "$(date -u +%T) end $name rc=$?" >> $R/status
}

ddp_scaling() {
  local rc=0
  $PY -m torch.distributed.run --nproc_per_node=1 $J/bench/ddp_scaling.py --out $R/ddp --device $DEV \
    --size $DDP_SIZE --batch $DDP_B $DDP_IT || rc=1
  [ "$NGPU" -ge 2 ] && $PY -m torch.distributed.run --nproc_per_node=$NGPU $J/bench/ddp_scaling.py --out $R/ddp --device $DEV \
    --size $DDP_SIZE --batch $DDP_B $DDP_IT || rc=1
  return $rc
}
REAL_OV="data.root=$J/data/dsb2018 data.size=[$REAL_SIZE,$REAL_SIZE] train.epochs=$REAL_EP data.workers=$WORKERS data.cache_dir=$J/cache/dsb_real train.batch_size=16 train.device=$DEV"
[ "$DRY" = 1 ] && REAL_OV="$REAL_OV train.precision=fp32 train.batch_size=4"
real_runs() {  # real_runs NPROC: the DSB-2018 runs of issue 9 on NPROC GPUs (1: plain, >1: torchrun)
  local n=$1 rc=0
  for s in $REAL_SEEDS; do
    local out=$R/ddp/real/w${n}_s$s t0=$(date +%s.%N)
    if [ "$n" = 1 ]; then
      $PY -m hrmedseg train $REAL_OV train.seed=$s --out $out --no-resume || rc=1
    else
      $PY -m torch.distributed.run --nproc_per_node=$n -m hrmedseg train $REAL_OV train.seed=$s \
        --out $out --no-resume || rc=1
    fi
    $PY -c "import json,sys; json.dump({'world_size': $n, 'seed': $s, 'wall_s': round($(date +%s.%N) - $t0, 1), 'overrides': sys.argv[1] + ' train.seed=$s'}, open('$out/run.json', 'w'))" "$REAL_OV" || rc=1
    rm -rf $out/checkpoints
  done
  return $rc
}
equal_time() {
  $PY $J/bench/equal_time.py --data-root $J/data --pretrained default --baseline $BASE \
    --out $R/equal_time --work $J/et --size $SIZE --budget-s $BUDGET --sweep-budget-s $SWEEP \
    --seeds $SEEDS --lrs $LRS --workers $WORKERS --device $DEV $ETX
}
compare() {
  $PY -m hrmedseg compare --config $J/bench/session3/compare_dsb2018_256.yaml -o $R/compare \
    --device $DEV data.root=$J/data/dsb2018 data.size=[$CMP_SIZE,$CMP_SIZE] \
    train.epochs=$CMP_EPOCHS data.workers=$WORKERS data.cache_dir=$J/cache/dsb_cmp $CMPX
}
extras() {
  local rc=0 psize=1024; [ "$DRY" = 1 ] && psize=128
  for impl in direct separable; do   # issue 7: the separable δ pooling, same harness as before
    $PY -m hrmedseg profile hrmedseg --size $psize --batch 16 --device $DEV --dtype bf16 --no-macs \
      --set pool_impl=$impl --json $R/profile_pool_$impl.json || rc=1
  done
  $PY $J/bench/speed_gpu.py $Q --parts parity -o $R/speed_gpu_parity.json || rc=1
  # The shipped full weight stays behind (64 MiB transfer): batching speed needs any weights.
  $PY -c "from hrmedseg.models import create_model; create_model('hrmedseg', pretrained=False).save_pretrained('$J/serve_model')" || rc=1
  $PY $J/bench/serve_batching.py $Q --model $J/serve_model -o $R/serve_batching_gpu.json || rc=1
  return $rc
}
lane_a() { [ -n "$GA" ] && export CUDA_VISIBLE_DEVICES=$GA; stage equal_time equal_time; }
lane_b() {
  [ -n "$GB" ] && export CUDA_VISIBLE_DEVICES=$GB
  stage compare compare
  stage extras extras
  stage real_w1 real_runs 1
}

echo "$(date -u +%T) pipeline start (DRY=$DRY, $NGPU GPUs)" >> $R/status
wait_wheels
stage ddp_scaling ddp_scaling
if [ "$NGPU" -ge 2 ]; then
  lane_a & PA=$!
  lane_b & PB=$!
  wait $PA $PB
  stage real_w$NGPU real_runs $NGPU
else   # one GPU came: the lanes one after the other, no multi-GPU runs
  GB=$GA; lane_a; lane_b
fi
$PY $J/bench/ddp_scaling.py --report $R/ddp >> $R/logs/ddp_scaling.log 2>&1
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
