# Sourced by the detached GPU pipelines (session4/, session5/): the job folders, the environment
# every stage runs in, and a snapshot of the sources and scripts as they were at the start.
J=${JOB:-/tmp/job}; R=$J/results; REPO=${REPO:-$(pwd)}; DRY=${DRY:-0}
mkdir -p $R/logs
export PYTHONPATH=$J/src:${EXTRA_SITE:-/tmp/site} PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
export HRMEDSEG_COMMIT=${HRMEDSEG_COMMIT:-unknown} MPLBACKEND=Agg
# NVLink multicast stays off (the lent machines' rule), also for torchrun's children.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PY:-python3}
rm -rf $J/src.new && cp -r $REPO/src $J/src.new && rm -rf $J/src && mv $J/src.new $J/src
rm -rf $J/bench && cp -r $REPO/benchmarks $J/bench
wait_wheels() {  # launch.sh installs the carried wheels before starting the pipeline
  [ -f $J/wheels_ready ] || [ "$DRY" = 1 ] || { for i in $(seq 1 300); do [ -f $J/wheels_ready ] && break; sleep 1; done; }
}
