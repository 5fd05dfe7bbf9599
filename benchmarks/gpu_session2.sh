#!/usr/bin/env bash
# Second GPU call of the first session: baseline/QTSeg profiles (issues 4, 6) and the Kvasir-SEG
# training with the paper recipe (issue 3). Run from the repo root on the device machine with the
# albumentations/MONAI wheels in .whl and the packed dataset in .gpu/data/kvasir.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=.gpu/src:/tmp/site PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export HRMEDSEG_COMMIT=${HRMEDSEG_COMMIT:-unknown}
R=${OUT:-/tmp}
P="python3 -m hrmedseg profile"
# U-Net 31 M at 1024²: batch 4 (batch 16 would need ~120 GB in fp32); the paper's figure is per image.
$P unet --size 1024 --batch 4 --dtype fp32 --json $R/profile_unet_1024_b4_fp32.json 2>&1 | tail -2
$P unet --size 1024 --batch 1 --dtype fp32 --no-macs --json $R/profile_unet_1024_b1_fp32.json 2>&1 | tail -2
$P unet,qtseg_1024 --size 1024 --batch 4 --dtype bf16 --no-macs --json $R/profile_unet_qtseg_1024_b4_bf16.json 2>&1 | tail -3
$P qtseg --size 512 --batch 16 --dtype fp32 --num-classes 2 --json $R/profile_qtseg_512_b16_fp32.json 2>&1 | tail -2
$P qtseg --size 512 --batch 16 --dtype bf16 --num-classes 2 --no-macs --json $R/profile_qtseg_512_b16_bf16.json 2>&1 | tail -2
$P qtseg_1024 --size 1024 --batch 16 --dtype fp32 --num-classes 2 --no-macs --json $R/profile_qtseg_1024_b16_fp32.json 2>&1 | tail -2
python3 - <<'PY'
import glob, json, os
out = os.environ.get("OUT", "/tmp")
rows = []
for f in sorted(glob.glob(f"{out}/profile_*.json")):
    rows += json.load(open(f))
json.dump(rows, open(f"{out}/profiles_session2.json", "w"), indent=2)
for f in glob.glob(f"{out}/profile_*.json"):
    os.remove(f)
PY
SRC=.gpu/src:/tmp/site DATA=.gpu/data/kvasir NAME=kvasir_paper bash benchmarks/train_real.sh \
  train.time_limit_min=${TRAIN_MIN:-4.5} train.epochs=200 "$@"
