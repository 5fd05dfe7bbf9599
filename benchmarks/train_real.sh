#!/usr/bin/env bash
# Issue 3: train a model on a packed real dataset on the lent GPU and collect the run's results.
# Usage (device machine, repo root): SRC=.gpu/src DATA=.gpu/data/dsb2018 NAME=dsb2018_paper \
#   bash benchmarks/train_real.sh [extra section.key=value overrides]
set -uo pipefail
SRC=${SRC:-src}; DATA=${DATA:?}; NAME=${NAME:?}
export PYTHONPATH=$SRC PYTHONUNBUFFERED=1 HRMEDSEG_COMMIT=${HRMEDSEG_COMMIT:-unknown}
RUN=/tmp/runs/$NAME
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
LOG=${OUT:-/tmp}/${NAME}_log.txt
python3 -m hrmedseg train --config ${RECIPE:-paper} data.root=$DATA train.out_dir=$RUN \
  data.workers=${WORKERS:-12} "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -E '(it|batch|img|file)/s\]$' > $LOG
grep -E '^\[epoch|resolution|Error|error|Traceback' $LOG | tail -n 80; tail -n 30 $LOG
# What comes back: one tarball of the run (no optimizer state) and the best weights.
cd $RUN && tar czf ${OUT:-/tmp}/${NAME}_run.tar.gz --exclude='state.pt' --exclude='checkpoints/last' . \
  && cp checkpoints/best/model.safetensors ${OUT:-/tmp}/${NAME}_best.safetensors \
  && cp checkpoints/best/config.json ${OUT:-/tmp}/${NAME}_best_config.json
ls -la ${OUT:-/tmp}
