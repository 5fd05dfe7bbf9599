#!/usr/bin/env bash
# Later device calls: install carried wheels (once), then wait up to SECONDS (or until the
# pipeline is done), then copy the results so far to $OUT as one tarball and print the status.
set -u
J=${JOB:-/tmp/job}; R=$J/results; T=${1:-500}
if [ -d .whl ] && [ ! -f $J/wheels_ready ]; then
  mkdir -p /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  # Only the .whl2 packages this image lacks (its own torch stack stays in charge).
  for f in $(ls .whl2/*.whl 2>/dev/null); do
    mod=$(basename $f | cut -d- -f1 | tr 'A-Z' 'a-z'); [ "$mod" = pyyaml ] && mod=yaml
    python3 -c "import $mod" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $f
  done
  PYTHONPATH=/tmp/site python3 -c "import monai, albumentations; print('monai', monai.__version__, 'albumentations', albumentations.__version__)"
  PYTHONPATH=/tmp/site python3 -c "import segmentation_models_pytorch as smp; print('smp', smp.__version__)"
  PYTHONPATH=/tmp/site python3 -c "import fastapi, uvicorn, httpx; print('serve deps ok')"
  touch $J/wheels_ready   # tried: the stages report what is still missing themselves
fi
start=$(date +%s)
while [ $(( $(date +%s) - start )) -lt $T ] && [ ! -f $R/DONE ]; do sleep 5; done
cat $R/status; echo ---; for f in $R/logs/*.log; do echo "== $f"; tr '\r' '\n' < $f | grep -v -E '(it|img|batch)/s\]?$' | tail -n 6; done
tar czf ${OUT:-/tmp}/results_$(date +%H%M%S).tar.gz --exclude='results/distill/student' --exclude='*.safetensors' --exclude='*/checkpoints' --exclude='*/cache' -C $J results
[ -d $R/distill/student ] && tar czf ${OUT:-/tmp}/student.tar.gz -C $R/distill student
ls -la ${OUT:-/tmp}
