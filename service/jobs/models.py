"""``ModelRecords``: the model store's registry, the one owner of the ``models`` table.

A published version is a row keyed by ``(name, content_hash)``. Its life: ``publishing`` (files
being uploaded; nobody offers it), ``ready`` (at most one per name; jobs may name it), ``deleting``
(replaced or dropped; its objects are being removed). ``service.modelstore`` uploads and pulls the
files; this module only speaks SQL (``models.sql``), plus the two worker and job columns the store
adds: a worker's cached models and a job's "loading model" progress.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib import resources
from typing import Any
from uuid import UUID

from sqlalchemy import Engine, Row, TextClause, text

from service.jobs.queries import parse_queries

SOURCE = resources.files(__package__).joinpath("models.sql").read_text()
#: Every statement on the registry by name.
MODEL_QUERIES: dict[str, TextClause] = {name: text(sql) for name, sql in parse_queries(SOURCE).items()}
#: The kinds a registered model may have: the models folder's kinds and its network folders.
MODEL_KINDS = ("diffusion", "correction", "upscaling", "text", "safety", "control", "inversion", "lora")
#: A model's variants: fp32 graphs every worker runs, fused fp16 graphs for CUDA workers.
MODEL_VARIANTS = ("fp32", "cuda")


class ModelState(StrEnum):
    """A published version's state (the ``model_state`` enum)."""

    PUBLISHING = "publishing"
    READY = "ready"
    DELETING = "deleting"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its path relative to the models folder, its sha256 and its size."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ModelVersion:
    """One published version of a model, as the registry records it."""

    name: str
    content_hash: str
    kind: str
    family: str | None
    #: Where the model sits below a models folder: a folder (``stable-diffusion-x``) or a file
    #: (``upscaling-x4.onnx``, ``lora/foo.safetensors``).
    path: str
    size_bytes: int
    files: tuple[ModelFile, ...]
    labels: Mapping[str, str]
    state: ModelState = ModelState.PUBLISHING
    created_at: datetime | None = None
    #: ``fp32`` (every worker runs it) or ``cuda`` (fused fp16 graphs, ``pipelines.gpu.optimize``).
    variant: str = "fp32"


@dataclass(frozen=True)
class WorkerStatus:
    """One live worker as the admin's status lists it."""

    id: str
    platform: str
    device: int | None
    #: Models with sessions loaded, most recently used first.
    models: tuple[str, ...]
    #: Models in its pull cache, most recently used first.
    cached_models: tuple[str, ...]
    jobs_done: int
    started_at: datetime
    heartbeat_age_s: float
    #: The running job's name, or None when idle.
    job: str | None
    #: ``{model, current, total}`` while that job's model is being pulled.
    loading: Mapping[str, Any] | None


class ModelRecords:
    """Read and change the registry; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")

    def version(self, name: str, content_hash: str) -> ModelVersion | None:
        """The version ``(name, content_hash)`` in any state, or None."""
        with self._single.connect() as conn:
            row = conn.execute(
                MODEL_QUERIES["select_version"], {"name": name, "content_hash": content_hash}
            ).first()
        return None if row is None else _version(row)

    def begin_publish(self, model: ModelVersion) -> bool:
        """Record ``model`` as publishing; False when that exact version is already ready."""
        params = {
            "name": model.name,
            "content_hash": model.content_hash,
            "variant": model.variant,
            "kind": model.kind,
            "family": model.family,
            "path": model.path,
            "size_bytes": model.size_bytes,
            "files": json.dumps([item.to_dict() for item in model.files]),
            "labels": json.dumps(dict(model.labels)),
        }
        with self._single.connect() as conn:
            return conn.execute(MODEL_QUERIES["begin_publish"], params).rowcount == 1

    def mark_ready(self, name: str, content_hash: str) -> list[str]:
        """Offer a fully uploaded version, retiring the name's previous one in the same transaction.

        Returns the content hashes retired (their objects are to be deleted).

        Raises:
            LookupError: the version is not publishing (someone deleted it meanwhile).
        """
        params = {"name": name, "content_hash": content_hash}
        with self._engine.begin() as conn:
            retired = [row.content_hash for row in conn.execute(MODEL_QUERIES["retire_ready"], params)]
            if conn.execute(MODEL_QUERIES["mark_ready"], params).first() is None:
                raise LookupError(f"model {name!r} version {content_hash[:12]} is no longer publishing")
        return retired

    def mark_deleting(self, name: str) -> list[str]:
        """Withdraw every version of ``name``; the content hashes whose objects are to be deleted."""
        with self._single.connect() as conn:
            return [row.content_hash for row in conn.execute(MODEL_QUERIES["mark_deleting"], {"name": name})]

    def forget(self, name: str, content_hash: str) -> None:
        """Delete a ``deleting`` version's row once its objects are gone."""
        with self._single.connect() as conn:
            conn.execute(MODEL_QUERIES["delete_version"], {"name": name, "content_hash": content_hash})

    def deleting(self) -> list[tuple[str, str]]:
        """``(name, content_hash)`` of the versions whose objects are still to be removed."""
        with self._single.connect() as conn:
            return [(row.name, row.content_hash) for row in conn.execute(MODEL_QUERIES["select_deleting"])]

    def ready(self) -> list[ModelVersion]:
        """Every ready model, by kind then name."""
        with self._single.connect() as conn:
            return [_version(row) for row in conn.execute(MODEL_QUERIES["select_ready"])]

    def listed(self) -> list[ModelVersion]:
        """Every version in every state (publishing, ready, deleting), for the admin's list."""
        with self._single.connect() as conn:
            return [_version(row) for row in conn.execute(MODEL_QUERIES["select_listed"])]

    def ready_model(self, name: str, variant: str = "fp32") -> ModelVersion | None:
        """The ready version a job's model name (or path below a models folder) means to a worker of
        ``variant``: that variant if the store has it, else fp32; None when there is neither."""
        with self._single.connect() as conn:
            row = conn.execute(
                MODEL_QUERIES["select_ready_model"], {"name": name, "variant": variant}
            ).first()
        return None if row is None else _version(row)

    def record_worker_cache(self, worker_id: str, models: Sequence[str]) -> None:
        """Record the models in a worker's pull cache (after its row was announced)."""
        with self._single.connect() as conn:
            conn.execute(
                MODEL_QUERIES["record_worker_cache"], {"id": worker_id, "models": json.dumps(list(models))}
            )

    def record_loading(
        self, job_id: UUID, worker_id: str, attempt: int, loading: Mapping[str, Any] | None
    ) -> bool:
        """Record what a running job's worker is pulling (None: nothing); False when fenced."""
        params = {
            "job_id": job_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "loading": None if loading is None else json.dumps(dict(loading)),
        }
        with self._single.connect() as conn:
            return conn.execute(MODEL_QUERIES["record_loading"], params).rowcount == 1

    def entry_hashes(self, names: Sequence[str]) -> dict[str, str | None]:
        """The ready ones of ``names`` and the extras entry each was converted from (None: by hand)."""
        with self._single.connect() as conn:
            rows = conn.execute(MODEL_QUERIES["ready_entry_hashes"], {"names": list(names)})
            return {row.name: row.entry_hash for row in rows}

    def set_entry_hash(self, name: str, content_hash: str, entry_hash: str) -> None:
        """Record which extras entry the ready version ``(name, content_hash)`` was converted from."""
        params = {"name": name, "content_hash": content_hash, "entry_hash": entry_hash}
        with self._single.connect() as conn:
            conn.execute(MODEL_QUERIES["set_entry_hash"], params)

    def jobs_needing(self, name: str) -> int:
        """How many waiting or running jobs name the model (as theirs or a stage's model)."""
        with self._single.connect() as conn:
            return int(conn.execute(MODEL_QUERIES["jobs_needing_model"], {"name": name}).scalar_one())

    def worker_status(self, max_age_s: float) -> list[WorkerStatus]:
        """Workers seen within ``max_age_s`` seconds, each with its cached models and current job."""
        with self._single.connect() as conn:
            rows = conn.execute(MODEL_QUERIES["select_worker_status"], {"max_age_s": max_age_s}).all()
        return [
            WorkerStatus(
                **{**row._mapping, "models": tuple(row.models), "cached_models": tuple(row.cached_models)}
            )
            for row in rows
        ]


def _version(row: Row[Any]) -> ModelVersion:
    return ModelVersion(
        name=row.name,
        content_hash=row.content_hash,
        kind=row.kind,
        family=row.family,
        path=row.path,
        size_bytes=row.size_bytes,
        files=tuple(ModelFile(item["path"], item["sha256"], int(item["size"])) for item in row.files),
        labels=dict(row.labels),
        state=ModelState(row.state),
        created_at=row.created_at,
        variant=row.variant,
    )
