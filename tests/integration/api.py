"""The api in-process (Falcon's test client) on the test's real Postgres and S3, for api tests."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any, Literal

import falcon.testing
from PIL import Image
from sqlalchemy.exc import OperationalError

from pipelines.models.registry import ModelRegistry
from service.app import create_app
from service.config import Config
from service.events import EventHub
from service.jobs.keys import KeyStore
from service.jobs.store import JobStore, JobView, NewJob
from service.output_names import image_name, sidecar_name, thumbnail_name
from service.storage import ObjectStore, output_key
from tests.fixtures.postgres import new_job

ADMIN_TOKEN = "admin-secret"


def make_models(root: Path) -> Path:
    """A models folder the api can list: one SD 1.5 model, an upscaler and a wildcard file."""
    (root / "stable-diffusion-onnx-v1-5").mkdir(parents=True)
    (root / "upscaling-real-esrgan-x4-plus.onnx").write_bytes(b"")
    (root / "wildcard").mkdir()
    (root / "wildcard" / "animals.txt").write_text("cat\ndog\n")
    return root


def api_client(
    jobs: JobStore,
    store: ObjectStore,
    models: Path,
    tmp_path: Path,
    keys: KeyStore | None = None,
    events: EventHub | None = None,
    **config: Any,
) -> falcon.testing.TestClient:
    """A test client of the whole api, on these parts, with ``config`` over the test defaults."""
    settings = Config(
        models_path=models,
        bundle_path=tmp_path / "bundle",
        s3_bucket=store.bucket,
        admin_token=ADMIN_TOKEN,
        **config,
    )
    app = create_app(
        settings, jobs=jobs, store=store, registry=ModelRegistry(models, ()), keys=keys, events=events
    )
    return falcon.testing.TestClient(app)


def error_of(result: falcon.testing.Result) -> str:
    """The ``error`` of a JSON error answer (and that it is JSON)."""
    assert result.headers["content-type"].startswith("application/json"), result.text
    return str(result.json["error"])


def job_name() -> str:
    """A name of the shape the output pattern accepts: ``<mode>_<seed>_<sha256>_<unix seconds>``."""
    return f"txt2img_7_{uuid.uuid4().hex * 2}_1713300000"


def png(colour: tuple[int, int, int], size: int = 8) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(data, format="PNG")
    return data.getvalue()


def succeed(
    job_store: JobStore, object_store: ObjectStore, name: str, owner: str = "anonymous"
) -> dict[str, bytes]:
    """Run job ``name`` (of ``owner``) to success with one image, its thumbnail and sidecar; their
    bytes by file name."""
    job_store.enqueue(new_job(name=name, owner=owner))
    claimed = job_store.claim("w-1", platform="cpu", held_models=())
    assert claimed is not None and claimed.name == name
    image, thumb = image_name(name, 0, "png"), thumbnail_name(name, 0, "png")
    files = {
        image: png((200, 10, 10), 16),
        thumb: png((10, 200, 10)),
        sidecar_name(image): json.dumps({"outputs": [image]}).encode(),
    }
    keys = {}
    for file, data in files.items():
        keys[file] = output_key(name, claimed.attempt, file)
        kind = "application/json" if file.endswith(".json") else "image/png"
        object_store.put_bytes(keys[file], data, kind)
    assert job_store.finish_success(
        claimed.id,
        "w-1",
        claimed.attempt,
        outputs=[image],
        thumbnails=[thumb],
        metadata=[{}],
        output_keys=keys,
        steps=(1, 1),
        stages=(1, 1),
        tiles=(0, 0),
    )
    return files


class DatabaseLost(JobStore):
    """A ``JobStore`` whose next ``enqueue`` fails as a database outage does, the row committed
    first (``after_commit``: the reply was lost, as on a connection dropped right after COMMIT
    reached the server) or not (``before_commit``: the row never came)."""

    fail_next: Literal["after_commit", "before_commit"] | None = None

    def enqueue(self, job: NewJob, **kwargs: Any) -> JobView:
        failing, self.fail_next = self.fail_next, None
        if failing == "after_commit":
            super().enqueue(job, **kwargs)
        if failing is not None:
            raise OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))
        return super().enqueue(job, **kwargs)
