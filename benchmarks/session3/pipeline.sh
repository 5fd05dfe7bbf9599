#!/usr/bin/env bash
# Session 3's GPU work as ONE detached pipeline on the lent H100 (issues 4, 5, 6, 7, 10, 12).
# Launched by launch.sh (first device call) with setsid, so it outlives that call; later calls
# (poll.sh) bring the wheels the later stages need and copy the results back. Each stage logs to
# $R/logs/<stage>.log and appends "start/end rc=" lines to $R/status. DRY=1 runs every stage on
# the CPU with tiny sizes and budgets (a rehearsal: same commands, same files).
# STAGES="equal_time compare extras" runs only those stages (the next session's GPU work: the
# shipped distilled encoder stands in for a fresh distillation run).
set -u
J=${JOB:-/tmp/job}; R=$J/results; REPO=${REPO:-$(pwd)}; DRY=${DRY:-0}
mkdir -p $R/logs
export PYTHONPATH=$J/src:${EXTRA_SITE:-/tmp/site} PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export HRMEDSEG_COMMIT=${HRMEDSEG_COMMIT:-unknown} MPLBACKEND=Agg
PY=${PY:-python3}
if [ "$DRY" = 1 ]; then
  DEV=cpu; DMIN=0.15; SIZE=64; BUDGET=3; SWEEP=2; SEEDS=0,1; LRS=1e-3,2e-3; WORKERS=2
  BENCH="hrmedseg,qtseg,unet_small"; BSIZE=128; BASE=unet_small; ZS_LIMIT="--limit 3"; CMP_SIZE=64
  CMP_EPOCHS=1; EXTRA_Q=--quick
else
  DEV=cuda; DMIN=${DISTILL_MIN:-4.5}; SIZE=512; BUDGET=${BUDGET:-25}; SWEEP=${SWEEP:-18}; SEEDS=0,1,2
  LRS=5e-4,1e-3,2e-3; WORKERS=12; BSIZE=1024; BASE=unet_resnet34; ZS_LIMIT=""; CMP_SIZE=256
  BENCH="hrmedseg,qtseg_1024,unet,unetplusplus,attention_unet,unet_resnet34,unetplusplus_resnet34,segformer_b2,swin_unetr"
  CMP_EPOCHS=${CMP_EPOCHS:-15}; EXTRA_Q=""
fi
refresh() {  # take the latest code a later call may have brought (fixes for later stages)
  rm -rf $J/src.new && cp -r $REPO/src $J/src.new && rm -rf $J/src && mv $J/src.new $J/src
  rm -rf $J/bench && cp -r $REPO/benchmarks $J/bench
}
stage() {
  local name=$1; shift
  refresh
  echo "$(date -u +%T) start $name" >> $R/status
  ( "$@" ) > $R/logs/$name.log 2>&1
  echo "$(date -u +%T) end $name rc=$?" >> $R/status
}
wait_wheels() {
  [ "$DRY" = 1 ] && return 0
  for i in $(seq 1 600); do [ -f $J/wheels_ready ] && return 0; sleep 1; done
  echo "no wheels after 10 min" >> $R/status; return 1
}

distill() {
  $PY -m hrmedseg distill --student hrmedseg --teacher $J/teacher/mobile_sam_fp16.safetensors \
    --images $J/distill/train --val-images $J/distill/val -o $J/distill_run --epochs 1000 \
    --batch 16 --lr 1e-3 --augment strong --workers $WORKERS --time-limit-min $DMIN \
    --precision $([ "$DRY" = 1 ] && echo fp32 || echo bf16) --device $DEV --teacher-cache $J/tcache --size $([ "$DRY" = 1 ] && echo 256 || echo 1024)
  local rc=$?
  mkdir -p $R/distill
  cp -r $J/distill_run/student $J/distill_run/metrics.csv $J/distill_run/curve.png \
    $J/distill_run/summary.json $J/distill_run/distill_config.json $R/distill/ 2>/dev/null
  return $rc
}
zeroshot() {
  local rc=0
  for ds in kvasir-seg dsb2018 drive; do
    for enc in teacher student; do
      local e=teacher; [ $enc = student ] && e=$J/distill_run/student
      $PY -m hrmedseg zeroshot --encoder $e --sam $J/teacher/mobile_sam_fp16.safetensors \
        --data $J/data/$ds --split test -o $R/zeroshot/${ds}_$enc --batch 8 --device $DEV \
        --overlays 4 $ZS_LIMIT $([ "$DRY" = 1 ] && echo "--size 256") || rc=1
    done
  done
  $PY $J/bench/session3/tables.py zeroshot $R/zeroshot || rc=1
  return $rc
}
bench() {
  $PY -m hrmedseg benchmark --models $BENCH --size $BSIZE --batch 16 --device $DEV \
    --dtypes $([ "$DRY" = 1 ] && echo fp32 || echo fp32,bf16) --no-macs --warmup 2 --iters 5 -o $R/bench
}
PRE=$J/distill_run/student; [ -d $PRE ] || PRE=default   # the shipped distilled encoder
equal_time() {
  # smp missing on the device (wheels failed): MONAI's original U-Net stands in, and says so.
  $PY -c "import segmentation_models_pytorch" 2>/dev/null || { [ "$DRY" = 1 ] || BASE=unet; }
  echo "baseline: $BASE"
  $PY $J/bench/equal_time.py --data-root $J/data --pretrained $PRE \
    --baseline $BASE --out $R/equal_time --size $SIZE --budget-s $BUDGET --sweep-budget-s $SWEEP \
    --seeds $SEEDS --lrs $LRS --workers $WORKERS --device $DEV \
    $([ "$DRY" = 1 ] && echo "--batch 4 --precision fp32")
}
compare() {
  $PY -m hrmedseg compare --config $J/bench/session3/compare_dsb2018_256.yaml -o $R/compare \
    --device $DEV data.root=$J/data/dsb2018 data.size=[$CMP_SIZE,$CMP_SIZE] \
    train.epochs=$CMP_EPOCHS data.workers=$WORKERS data.cache_dir=$J/cache/dsb_cmp \
    $([ "$DRY" = 1 ] && echo "train.precision=fp32 train.batch_size=4")
}
extras() {
  local rc=0
  $PY $J/bench/speed_gpu.py $EXTRA_Q -o $R/speed_gpu.json || rc=1
  # issue 7: the separable δ pooling against the direct one, same harness (profile_core.sh's)
  for impl in direct separable; do
    $PY -m hrmedseg profile hrmedseg --size $BSIZE --batch 16 --device $DEV --dtype bf16 --no-macs \
      --set pool_impl=$impl --json $R/profile_pool_$impl.json || rc=1
  done
  $PY $J/bench/serve_batching.py $EXTRA_Q -o $R/serve_batching_gpu.json || rc=1
  return $rc
}

echo "$(date -u +%T) pipeline start (DRY=$DRY)" >> $R/status
$PY - <<PYEOF >> $R/status 2>&1
import json, os
from pathlib import Path
J = Path("$J")
for part, names in (("train", ("train",)), ("val", ("val",))):
    out = J / "distill" / part
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for ds in ("kvasir-seg", "dsb2018", "drive"):
        sp = json.loads((J / "data" / ds / "splits.json").read_text())
        files = {p.stem: p for p in (J / "data" / ds / "images").iterdir()}
        for name in names:
            for stem in sp.get(name) or []:
                link = out / f"{ds}__{files[stem].name}"
                if not link.exists():
                    link.symlink_to(files[stem].resolve())
                n += 1
    print(f"distill {part}: {n} images (train = train splits; val = val splits; test never)")
PYEOF
STAGES=${STAGES:-distill zeroshot bench equal_time compare extras}
for st in $STAGES; do
  case $st in
    distill|zeroshot) stage $st $st ;;
    *) [ -f $J/wheels_ready ] || { wait_wheels && echo "$(date -u +%T) wheels ok" >> $R/status; }
       stage $st $st ;;
  esac
done
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
