"""How long a fresh worker takes to run its first job of a model it must pull from the model store.

Usage: ``python -m bench.model_pull --out bench-results/model_pull.json`` (``--model-folder DIR`` to
time a converted folder of your own instead of the txt2img demo model).

An embedded Postgres and SeaweedFS are started, the model is published to the store
(``service.modelstore.publish``), and then, in this process, a worker's parts start from nothing:
an empty ``ModelCache`` and an empty ``SessionCache``. Three phases are timed in turn:

1. **pull**: ``ModelCache.ensure`` (download, sha256 check and install of every file);
2. **session build**: one ONNX Runtime session per ``.onnx`` file of the pulled folder, as the
   worker's first job creates them;
3. **first image**: the txt2img chain of the job, as the worker runs it, with those sessions.

Python's and ONNX Runtime's imports are before the clock starts (a worker pays them at start-up,
before its first claim).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.chain import run_chain
from pipelines.models.convert import convert_diffusers_folder
from pipelines.models.demo import DEMO_MODELS, torch_source_path, write_demo_checkpoint
from pipelines.models.registry import ModelRegistry
from pipelines.models.sessions import CPU_PROVIDER, SessionCache, SessionSettings
from service.chains import build_txt2img
from service.config import Config
from service.db import create_database, make_engine, upgrade_head
from service.jobs.models import ModelRecords
from service.modelstore import ModelCache, publish
from service.params import load_params_doc, parse_request
from service.stack import EmbeddedS3, temporary_postgres
from service.storage import S3ObjectStore, parse_endpoint


def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def txt2img_chain(models: Path, name: str, size: int, steps: int) -> dict[str, Any]:
    """The chain the api builds for a txt2img request of ``name`` (seed fixed)."""
    config = Config(models_path=models)
    request = parse_request(
        "txt2img",
        {
            "prompt": "a model pull benchmark",
            "model": name,
            "steps": steps,
            "width": size,
            "height": size,
            "seed": 7,
        },
        params_doc=load_params_doc(config),
        registry=ModelRegistry(models, ()),
        config=config,
        rng=random.Random(7),
    )
    return dict(build_txt2img(request, image_format="png", thumbnail_size=64).chain)


def measure(source: Path, work: Path, *, size: int, steps: int) -> dict[str, Any]:
    """Publish ``source`` and time a fresh worker's pull, session build and first image of it."""
    name = source.name
    with temporary_postgres("onnx-web-bench-pull-") as (_, admin_url):
        database = create_database(admin_url, "model_pull")
        upgrade_head(database)
        s3 = EmbeddedS3(work / "s3")
        credentials = s3.start()
        try:
            endpoint, secure = parse_endpoint(credentials.endpoint)
            store = S3ObjectStore(
                endpoint, credentials.access_key, credentials.secret_key, "bench-models", secure=secure
            )
            store.ensure_bucket()
            records = ModelRecords(make_engine(database))
            published, publish_s = timed(lambda: publish(source, store, records))
            version = records.ready_model(name)
            assert version is not None
            chain = txt2img_chain(source.parent, name, size, steps)

            cache = ModelCache(work / "cache", 10**12, store, records)
            sessions = SessionCache(4, SessionSettings(providers=(CPU_PROVIDER,)))
            _, pull_s = timed(lambda: cache.ensure(version))
            onnx_files = sorted((cache.root / version.path).rglob("*.onnx"))
            _, session_s = timed(lambda: [sessions.get(path) for path in onnx_files])
            loads_before = sessions.loads
            result, image_s = timed(lambda: run_chain(chain, models_path=cache.root, sessions=sessions))
            assert result.outputs, "the chain made no image"
        finally:
            s3.stop()
    return {
        "model": name,
        "files": len(published.model.files),
        "bytes": published.model.size_bytes,
        "size": size,
        "steps": steps,
        "publish_s": round(publish_s, 3),
        "pull_s": round(pull_s, 3),
        "pull_mb_per_s": round(published.model.size_bytes / 1e6 / pull_s, 1),
        "session_build_s": round(session_s, 3),
        "sessions": len(onnx_files),
        "first_image_s": round(image_s, 3),
        "sessions_loaded_by_the_job": sessions.loads - loads_before,
        "total_s": round(pull_s + session_s + image_s, 3),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-folder", type=Path, help="a converted model folder (default: the demo model)"
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="onnx-web-bench-pull-"))
    try:
        source = args.model_folder
        if source is None:
            name = DEMO_MODELS[0].name
            write_demo_checkpoint(torch_source_path(work / "models", name))
            source = convert_diffusers_folder(
                torch_source_path(work / "models", name), work / "models" / name
            )
        figures = measure(Path(source).resolve(), work, size=args.size, steps=args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
