# Sourced by each job in scripts/gpu on the lent GPU machine: installs onnxruntime-gpu, assembled
# from the five pieces of ../shared/gpu/make-chunks.sh in /tmp/ort, and the carried wheels (.whl/)
# into /tmp/site once per machine (docs/gpu.md, "Commands (fifth round)").
# BASELINES_ONLY=1 (autotune.sh: PyTorch alone) installs the carried wheels without onnxruntime-gpu,
# so it can run in the same call as the first piece.
if [ "${BASELINES_ONLY:-0}" = 1 ]; then
  [ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
elif [ ! -d /tmp/site/onnxruntime ]; then
  cd /tmp/ort && [ -f part ] && mv part onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl; cd - >/dev/null
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/ort/*.whl .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
# torch.compile's cache (autotune choices, compiled kernels) in a known place. autotune.sh returns it
# in pieces under $OUT/inductor; copied to .inductor/<card> (h100, h200) here and carried back to a
# fresh machine of that card, it spares the benchmarking done before (the lease can be lost between
# calls, and sessions end). Each card has its own: autotune choices are made for one card.
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
# max-autotune's convolutions: cuDNN alone unless CONV_BACKENDS says otherwise (ATEN,TRITON).
export TORCHINDUCTOR_MAX_AUTOTUNE_CONV_BACKENDS="${CONV_BACKENDS:-ATEN}"
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -io 'h[0-9]\{3\}' | tr 'H' 'h')
export CARD
echo "card: ${CARD:-unknown}"
# INDUCTOR_SEED=h100 starts a card that has no cache of its own from another card's (carry
# .inductor/h100): the H100 and the H200 are both sm_90, so Triton's compiled kernels (most of
# max-autotune's time) are reused, while Inductor keys its autotune choices and compiled graphs by the
# card's name, so those are benchmarked and made again on this card.
if [ ! -d /tmp/inductor ]; then
  for from in "$CARD" ${INDUCTOR_SEED:-}; do
    if ls ".inductor/$from"/part-* >/dev/null 2>&1; then
      mkdir -p /tmp/inductor && cat ".inductor/$from"/part-* | tar -xzf - -C /tmp/inductor && echo "inductor cache restored from $from"
      break
    fi
  done
fi
[ "${BASELINES_ONLY:-0}" = 1 ] || python3 -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())"
