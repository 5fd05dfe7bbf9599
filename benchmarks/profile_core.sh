#!/usr/bin/env bash
# Issue 2: profile HRMedSeg at 1024x1024 (fp32 and bf16, batch 16) on the lent GPU.
# Run on the device machine from the repo root; SRC points at a clean export of the package.
set -uo pipefail
SRC=${SRC:-src}
export PYTHONPATH=$SRC PYTHONUNBUFFERED=1
RES=${RES:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
for dt in fp32 bf16; do
  python3 -m hrmedseg profile hrmedseg,hrmedseg_lean --size 1024 --batch 16 --device cuda \
    --dtype $dt --warmup 3 --iters 10 --json $RES/profile_hrmedseg_1024_b16_$dt.json
done
python3 -m hrmedseg profile hrmedseg --size 1024 --batch 1 --device cuda --dtype fp32 \
  --warmup 3 --iters 20 --no-macs --json $RES/profile_hrmedseg_1024_b1_fp32.json
python3 -m hrmedseg profile hrmedseg --size 1024 --batch 16 --device cuda --dtype bf16 \
  --grad-checkpointing --no-macs --json $RES/profile_hrmedseg_1024_b16_bf16_ckpt.json
