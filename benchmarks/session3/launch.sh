#!/usr/bin/env bash
# First device call: stage the carried data/teacher to /tmp/job, start pipeline.sh detached,
# then poll until this call's time is nearly used. Usage: bash benchmarks/session3/launch.sh SECONDS
# (PIPELINE=path picks another pipeline, e.g. benchmarks/session4/pipeline.sh; STAGES="..."
# selects session 3's pipeline stages; DATA_DIR=.gpu/s6 stages another packed-data folder;
# .whl/.whl2 carried in this call are installed first.)
set -u
J=${JOB:-/tmp/job}; mkdir -p $J/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
cp -r ${DATA_DIR:-.gpu/s3} $J/data || exit 1   # DATA_DIR: a leaner folder when a run needs less
[ -d .gpu/teacher ] && cp -r .gpu/teacher $J/teacher   # only the distill/zeroshot stages need it
du -sh $J/*
if [ -d .whl ]; then bash benchmarks/session3/poll.sh 0 > /dev/null; fi   # installs the wheels
REPO=$(pwd) setsid nohup bash ${PIPELINE:-benchmarks/session3/pipeline.sh} > $J/results/pipeline.out 2>&1 < /dev/null &
sleep 2
bash benchmarks/session3/poll.sh ${1:-500}
