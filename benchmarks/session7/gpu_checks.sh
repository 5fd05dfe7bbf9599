#!/usr/bin/env bash
# Session 7, third GPU call (one H200), in the foreground, results under $OUT:
#  1. the gpu-marked tests on a real GPU (until now they had only ever been skipped);
#  2. the trainer itself on the configuration that meets issue 7's speed and memory targets
#     together (speed_gpu: torch.compile with CUDA graphs + gradient checkpointing + the speed
#     switches), on real DSB-2018 images at 1024², batch 16, three epochs with validation:
#     no CUDA-graph error, the loss falls, and the trainer's own step rate.
# Device call: carry [".gpu/s6", ".whl", ".whl3"] (.whl3: pytest, pluggy, iniconfig, packaging,
# pytest-timeout wheels), HRMEDSEG_COMMIT=<sha> bash benchmarks/session7/gpu_checks.sh
set -u
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl .whl3/*.whl
export PYTHONPATH=$(pwd)/src:/tmp/site PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/device.txt
python3 -c "import torch; print(torch.__version__)" | tee -a $OUT/device.txt
echo "commit ${HRMEDSEG_COMMIT:-unknown} date $(date -u +%FT%TZ)" | tee -a $OUT/device.txt

timeout 120 python3 -m pytest -q -m gpu -o addopts="" -p no:cacheprovider -rA \
  tests/layers/test_pooling.py tests/data/test_fast_path.py > $OUT/pytest_gpu.log 2>&1
echo "pytest -m gpu rc=$?" | tee -a $OUT/device.txt; tail -n 15 $OUT/pytest_gpu.log

timeout ${TRAIN_S:-330} python3 -m hrmedseg train --config paper data.root=.gpu/s6/dsb2018 \
  "data.size=[1024,1024]" data.workers=14 data.cache_dir=/tmp/cache model.pretrained=none \
  train.epochs=3 train.batch_size=16 train.precision=bf16 train.compile=true \
  train.compile_mode=reduce-overhead model.grad_checkpointing=true train.eval_test=false \
  train.out_dir=$OUT/train_cudagraphs_ckpt_1024 > $OUT/train.log 2>&1
echo "train rc=$?" | tee -a $OUT/device.txt
rm -rf $OUT/train_cudagraphs_ckpt_1024/checkpoints
tr '\r' '\n' < $OUT/train.log | grep -v -E '(it|img|batch)/s\]?$' | tail -n 25
cat $OUT/train_cudagraphs_ckpt_1024/metrics.csv 2>/dev/null
