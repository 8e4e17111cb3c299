#!/usr/bin/env bash
# torch.compile(max-autotune) of the SD 1.5 UNet, by default with the convolutions left to cuDNN: the GEMMs are
# autotuned (33 shapes; on an H100, 26 in a 540 s command, the other 7 and the compile in 400 s more).
# Run it twice on the same machine (the inductor cache under /tmp keeps each choice), without the
# conversion of sd15.sh beside it; argument: the time limit in seconds. Carry [".whl"].
# The cache comes back as $OUT/inductor/part-*: copied to .inductor/<card> (h100, h200) and carried,
# a fresh machine of the same card starts from it. ONLY_CARD=h200 ends at once on another card.
# CONV_BACKENDS=ATEN,TRITON also autotunes the convolutions with Triton (about 15 minutes on an H100).
# INDUCTOR_SEED=h100 (carry [".whl", ".inductor/h100"]) starts an H200 without a cache of its own from
# the H100's compiled kernels (setup.sh says why that is sound); its choices are still benchmarked here.
if [ -n "${ONLY_CARD:-}" ] && ! nvidia-smi --query-gpu=name --format=csv,noheader | grep -qi "$ONLY_CARD"; then
  echo "not an $ONLY_CARD: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"; exit 0
fi
BASELINES_ONLY=1 . scripts/gpu/setup.sh
timeout "${1:-560}" python3 -m bench.gpu --baselines-only --compile max-autotune --out "$OUT/mat" --work /tmp/bw \
  > "$OUT/mat.log" 2>&1
echo "autotune rc=$?"; grep -c "SingleProcess AUTOTUNE" "$OUT/mat.log"; tail -6 "$OUT/mat.log"
mkdir -p "$OUT/inductor" && tar -czf - -C /tmp/inductor . | split -b 15M -a 1 - "$OUT/inductor/part-"
ls -l "$OUT/inductor"
