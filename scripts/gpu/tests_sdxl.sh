#!/usr/bin/env bash
# The CUDA tests (marked gpu; --confcutdir keeps the root conftest's Postgres and S3 fixtures out),
# then SDXL from the weightless graphs in .sdxlgraph (bench.gpu_prebuilt) where they were carried.
# Carry [".whl", ".sdxlgraph"].
. scripts/gpu/setup.sh
timeout 240 python3 -m pytest -q -p no:cacheprovider -p pytest_timeout --confcutdir=tests/unit/pipelines -m gpu \
  tests/unit/pipelines/test_gpu_runtime.py tests/unit/pipelines/test_networks.py tests/unit/pipelines/test_sdxl_gpu.py \
  > "$OUT/gpu-tests.log" 2>&1
echo "tests rc=$?"; grep -E "passed|failed|^FAILED|^ERROR" "$OUT/gpu-tests.log" | tail -15
if [ ! -d .sdxlgraph/sdxl-gpu ]; then
  echo "sdxl skipped: no .sdxlgraph/sdxl-gpu here (docs/gpu.md, \"Commands (fifth round)\", makes it)"; exit 0
fi
mkdir -p /tmp/models && rm -rf /tmp/models/sdxl-gpu && cp -r .sdxlgraph/sdxl-gpu /tmp/models/
timeout 300 python3 -m bench.gpu_prebuilt run --folder /tmp/models/sdxl-gpu --out "$OUT/sdxl" > "$OUT/sdxl.log" 2>&1
echo "sdxl rc=$?"; tail -16 "$OUT/sdxl.log"
