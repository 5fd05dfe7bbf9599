#!/usr/bin/env bash
# Last device call of session 3 (a fresh machine; the pipeline's machine had been given back):
# the equal-GPU-time comparison, reduced to one seed and one lr (the remaining device time), then
# the speed/parity/tiling profile. Usage: HRMEDSEG_COMMIT=... bash benchmarks/session3/final.sh
set -u
mkdir -p /tmp/site /tmp/res
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
for f in .whl2/*.whl; do
  mod=$(basename $f | cut -d- -f1 | tr 'A-Z' 'a-z'); [ "$mod" = pyyaml ] && mod=yaml
  python3 -c "import $mod" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $f
done
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 MPLBACKEND=Agg
timeout ${ET_S:-270} python3 benchmarks/equal_time.py --data-root .gpu/s3 --pretrained default \
  --baseline unet_resnet34 --out /tmp/res/equal_time --work /tmp/et --size 512 --budget-s 22 \
  --sweep-budget-s 8 --lrs 1e-3 --seeds 0 --workers 10 --device cuda > /tmp/res/equal_time.log 2>&1
echo "equal_time rc=$?"
tr '\r' '\n' < /tmp/res/equal_time.log | grep -E '^\[equal_time\]|Error' | cut -c1-330
timeout ${SPEED_S:-135} python3 benchmarks/speed_gpu.py --parts rates,parity,profile,infer,tiled \
  --budget-s 110 -o /tmp/res/speed_gpu.json > /tmp/res/speed.log 2>&1
echo "speed rc=$?"; tail -n 22 /tmp/res/speed.log
tar czf ${OUT:-/tmp}/final.tar.gz -C /tmp res
