#!/usr/bin/env bash
# After sd15.sh on the same machine (its converted model in /tmp/bw): the SD 1.5 UNet replay at
# 1 job against 2, 4 and 8 (batch 2 against 4, 8 and 16), each kernel family per image, and the
# GPU memory in use once the five shapes are warmed. Carry [".whl"]; results under $OUT.
. scripts/gpu/setup.sh
timeout "${1:-300}" python3 - > "$OUT/scaling.log" 2>&1 <<'PY'
import json, os
from pathlib import Path
from bench.gpu import BATCH_JOBS, Timer, scaling_lines, unet_batch_scaling
from pipelines.gpu.runtime import Bucket, GpuSettings, device_memory_used, gpu_model

out = Path(os.environ["OUT"])
model = gpu_model(Path("/tmp/bw/models/sd15-gpu"), GpuSettings())
model.warm_up([*(Bucket(512, 512, jobs) for jobs in BATCH_JOBS), Bucket(512, 512, 1, guidance=False)])
print(f"GPU memory in use once warmed: {device_memory_used(0) / 2**30:.2f} GiB", flush=True)
report = {}
for jobs in BATCH_JOBS[1:]:
    report[str(jobs)] = unet_batch_scaling(model, 512, Timer("cuda"), out, (1, jobs))
    print("\n".join(scaling_lines(report[str(jobs)])), flush=True)
(out / "scaling.json").write_text(json.dumps(report, indent=1))
PY
echo "scaling rc=$?"; grep -v -e Warning -e W:onnxruntime "$OUT/scaling.log" | tail -40
