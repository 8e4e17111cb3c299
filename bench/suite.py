#!/usr/bin/env python3
"""``make bench``: the service's overheads, each measured against a baseline timed in the same run.

1. Queue throughput: claim + complete of no-op jobs with 8 concurrent workers
   (``bench/queue.py``), jobs/s.
2. Submit → success latency of a 1-step demo txt2img job through the whole local stack
   (gunicorn, Postgres, S3, one worker), p50/p99, against running the same resolved chain
   in-process on the same warm sessions: the difference is what the service adds.
3. Each image mode (txt2img, img2img, inpaint, upscale, highres) against the matching diffusers
   pipeline on the same weights, and the peak memory of a 2048x2048 tiled upscale
   (``bench/modes.py``, which prints its own table).
4. Output encoding (``bench.gpu.time_encodings``): the parallel PNG writer against Pillow's, on a
   photo-like and a noise image of 512² and 1024², ms and bytes.
5. Real worker processes (``bench/worker.py``, ``worker.json``): images/s with and without the
   output stage's overlap, 1 against 2 worker processes beside the core count, and the model
   loads that affinity saves when jobs of two models alternate.

Results are printed as a table and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

#: The benchmark's sections, in the order they run (the modes first: they want a quiet machine).
SECTIONS = ("modes", "queue", "latency", "encode", "worker")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def bench_queue(out_dir: Path) -> dict[str, Any]:
    target = out_dir / "queue.json"
    subprocess.run([sys.executable, "-m", "bench.queue", "--workers", "8", "--out", str(target)], check=True)
    return dict(json.loads(target.read_text()))


def bench_modes(out_dir: Path) -> dict[str, Any]:
    target = out_dir / "modes.json"
    subprocess.run([sys.executable, "-m", "bench.modes", "--out", str(target)], check=True)
    return dict(json.loads(target.read_text()))


def bench_encode() -> dict[str, Any]:
    """Each of ``bench.gpu.ENCODINGS`` on photo-like and noise images, 512² and 1024²."""
    import numpy as np
    from PIL import Image

    from bench.gpu import smooth_image, time_encodings

    results = {}
    for side in (512, 1024):
        noise = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        for kind, image in (("photo-like", smooth_image(side)), ("noise", Image.fromarray(noise))):
            results[f"{kind} {side}"] = time_encodings(image)
    return results


def bench_worker(out_dir: Path) -> dict[str, Any]:
    target = out_dir / "worker.json"
    subprocess.run([sys.executable, "-m", "bench.worker", "--out", str(target)], check=True)
    return dict(json.loads(target.read_text()))


def resolved_chain(query: dict[str, Any], models: Path) -> dict[str, Any]:
    """The chain the api stores for ``query``, built by the same code (the seed is fixed)."""
    import random

    from pipelines.models.registry import ModelRegistry
    from service.chains import build_txt2img
    from service.config import Config
    from service.params import load_params_doc, parse_request

    config = Config(models_path=models)
    request = parse_request(
        "txt2img",
        {k: str(v) for k, v in query.items()},
        params_doc=load_params_doc(config),
        registry=ModelRegistry(models),
        config=config,
        rng=random.Random(),
    )
    return build_txt2img(
        request, image_format=config.image_format, thumbnail_size=config.thumbnail_size
    ).chain


def bench_latency(runs: int) -> dict[str, Any]:
    from pipelines.chain import run_chain
    from pipelines.models.sessions import SessionCache
    from service.stack import LocalStack, StackOptions, free_port

    query: dict[str, str | int] = {
        "prompt": "a benchmark",
        "steps": 1,
        "seed": 7,
        "width": 256,
        "height": 256,
    }
    with tempfile.TemporaryDirectory() as tmp:
        stack = LocalStack(
            StackOptions(data_dir=Path(tmp), port=free_port(), models_path=Path(tmp) / "models")
        )
        stack.start()
        try:
            with httpx.Client(base_url=stack.url, timeout=60) as client:
                latencies = []
                for index in tqdm(range(runs + 2), desc="submit → success", unit="job"):
                    started = time.perf_counter()
                    name = client.post("/api/txt2img", params=query).json()["name"]
                    while True:
                        record = client.get("/api/job/status", params={"jobs": name}).json()[0]
                        if record["status"] in ("success", "failed", "cancelled"):
                            break
                        time.sleep(0.005)
                    if record["status"] != "success":
                        raise RuntimeError(f"benchmark job failed: {record}")
                    if index >= 2:  # the first jobs load the models
                        latencies.append((time.perf_counter() - started) * 1000)
        finally:
            stack.stop()
        models = Path(tmp) / "models"
        chain = resolved_chain(query, models)
        sessions = SessionCache(4)
        baseline = []
        for index in tqdm(range(runs + 2), desc="in-process baseline", unit="run"):
            started = time.perf_counter()
            run_chain(chain, models_path=models, sessions=sessions)
            if index >= 2:
                baseline.append((time.perf_counter() - started) * 1000)
    return {
        "runs": runs,
        "service_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
        "in_process_ms": {"p50": percentile(baseline, 50), "p99": percentile(baseline, 99)},
        "overhead_ms": {
            "p50": percentile(latencies, 50) - percentile(baseline, 50),
            "p99": percentile(latencies, 99) - percentile(baseline, 99),
        },
        "mean_overhead_ms": statistics.fmean(latencies) - statistics.fmean(baseline),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument("--runs", type=int, default=30, help="jobs timed for the latency figures")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    if "modes" in args.sections:
        results["modes"] = bench_modes(args.out.parent)
    if "queue" in args.sections:
        results["queue"] = bench_queue(args.out.parent)
    if "latency" in args.sections:
        results["latency"] = bench_latency(args.runs)
    if "encode" in args.sections:
        results["encode"] = bench_encode()
    if "worker" in args.sections:
        results["worker"] = bench_worker(args.out.parent)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| measure | value |\n|---|---|")
    if "queue" in results:
        print(f"| queue claim+complete, 8 workers | {results['queue'].get('jobs_per_s', 0):.0f} jobs/s |")
    if "latency" in results:
        lat = results["latency"]
        print(
            f"| submit → success p50 / p99 | {lat['service_ms']['p50']:.1f} / "
            f"{lat['service_ms']['p99']:.1f} ms |"
        )
        print(
            f"| same chain in-process p50 / p99 | {lat['in_process_ms']['p50']:.1f} / "
            f"{lat['in_process_ms']['p99']:.1f} ms |"
        )
        print(
            f"| service overhead p50 / p99 | {lat['overhead_ms']['p50']:.1f} / "
            f"{lat['overhead_ms']['p99']:.1f} ms |"
        )
    for image, encodings in results.get("encode", {}).items():
        default, before = (encodings[label] for label in list(encodings)[:2])
        print(
            f"| PNG of a {image} image: Pillow ÷ parallel writer, ms (bytes) | "
            f"{before['median_ms'] / default['median_ms']:.2f} ({before['bytes'] / default['bytes']:.3f}) |"
        )
    if "worker" in results:
        worker = results["worker"]
        overlap, scale, affinity = worker["overlap"], worker["scale_out"], worker["affinity"]
        print(
            f"| worker images/s, output overlap off / on | {overlap['without_images_per_s']:.2f} / "
            f"{overlap['with_images_per_s']:.2f} |"
        )
        print(
            f"| worker images/s, 1 / 2 processes on {worker['cpu_count']} cores | "
            f"{scale['one_worker_images_per_s']:.2f} / {scale['two_workers_images_per_s']:.2f} |"
        )
        print(
            f"| model loads, 2 models alternating, affinity off / on | "
            f"{affinity['without']['model_loads']} / {affinity['with']['model_loads']} |"
        )
    for name, row in results.get("modes", {}).get("modes", {}).items():
        print(f"| {name}: ours ÷ diffusers (median) | {row['ratio']:.2f} |")
    memory = results.get("modes", {}).get("memory", {})
    if "peak_rss_mib" in memory.get("tiled", {}):
        print(f"| 2048² tiled upscale peak RSS | {memory['tiled']['peak_rss_mib']:.0f} MiB |")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
