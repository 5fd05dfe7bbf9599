#!/usr/bin/env bash
# Session 6, second GPU call: speed_gpu.py alone on one idle H200. The first call's numbers ran
# beside another lane (data loading, inductor's compile workers) and HRMedSeg's step is bound by
# kernel launches, so its timings moved by up to 50 % between parts. Parity is not rerun (its
# values do not depend on load): the eager profile, inference, the speed switches side by side,
# and torch.compile — training and inference with all switches, CUDA graphs (reduce-overhead),
# the plain model, and the fp32 step (vs the authors' fp32 figures) — most wanted first,
# inside one 10-minute call.
#   DATA_DIR=.gpu/s6 PIPELINE=benchmarks/session6/speed_clean.sh bash benchmarks/session3/launch.sh 560
set -u
source "$(dirname "$0")/../pipeline_env.sh"
echo "$(date -u +%T) pipeline start (DRY=$DRY)" >> $R/status
wait_wheels
if [ "$DRY" = 1 ]; then
  ARGS="--quick --size 64 --batch 2 --budget-s 60"
else
  ARGS="--budget-s ${SPB:-520}"
fi
# Second call: PARTS=rates,compile RUNS=<checkpointing with compile, CUDA graphs' parity and
# memory> (benchmarks/README.md, session 6).
PARTS=${PARTS:-rates,profile,infer,variants,compile}
RUNS=${RUNS:-train:all:default,train:all:reduce-overhead,infer:all:reduce-overhead,train_fp32:plain:default,infer:plain:reduce-overhead,train:plain:default}
$PY $J/bench/speed_gpu.py $ARGS --parts $PARTS --compile --compile-runs $RUNS \
  -o $R/speed_gpu.json > $R/logs/speed_gpu.log 2>&1
echo "$(date -u +%T) end speed_gpu rc=$?" >> $R/status
echo "$(date -u +%T) pipeline done" >> $R/status
touch $R/DONE
