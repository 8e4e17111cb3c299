#!/usr/bin/env bash
# The SD 1.5 benchmark (bench.gpu: build, convert beside PyTorch, every row; about 5 minutes on an
# H100). Carry [".whl"]; results under $OUT.
. scripts/gpu/setup.sh
nvidia-smi > "$OUT/nvidia-smi.txt"
timeout 540 python3 -m bench.gpu --out "$OUT/sd15" --work /tmp/bw --workers 8 --compile reduce-overhead \
  > "$OUT/sd15.log" 2>&1
echo "bench rc=$?"
tail -40 "$OUT/sd15.log"
