#!/usr/bin/env bash
# The SD 1.5 benchmark (bench.gpu: build, convert beside PyTorch, every row; about 5 minutes on an
# H100). Carry [".whl"]; results under $OUT. Argument: the time limit in seconds (default 540).
# COMPILE picks the torch.compile baseline (default reduce-overhead). COMPILE=max-autotune after
# autotune.sh has filled the inductor cache on the same machine gives eager, max-autotune and ours
# in one run; CONV_BACKENDS as in autotune.sh. A second run on the same machine reuses the build and
# the conversion under /tmp/bw (--reuse: about 4 minutes less).
. scripts/gpu/setup.sh
nvidia-smi > "$OUT/nvidia-smi.txt"
timeout "${1:-540}" python3 -m bench.gpu --out "$OUT/sd15" --work /tmp/bw --workers 8 --reuse \
  --compile "${COMPILE:-reduce-overhead}" > "$OUT/sd15.log" 2>&1
echo "bench rc=$?"
tail -40 "$OUT/sd15.log"
