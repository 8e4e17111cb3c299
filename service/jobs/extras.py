"""``ExtrasRecords``: stored extras documents and the conversion jobs they start.

The one owner of ``extras_documents``; conversion jobs are rows of ``jobs`` (kind ``convert``,
inserted through ``JobStore.enqueue`` like any job), read here only to list them and to find the
ones still converting a model (``extras.sql``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from sqlalchemy import Engine, TextClause, text

from service.jobs.queries import parse_queries

SOURCE = resources.files(__package__).joinpath("extras.sql").read_text()
EXTRAS_QUERIES: dict[str, TextClause] = {name: text(sql) for name, sql in parse_queries(SOURCE).items()}
#: The ``kind`` of a conversion job.
CONVERT_KIND = "convert"


@dataclass(frozen=True)
class StoredDocument:
    """One accepted extras document."""

    version: int
    document: Mapping[str, Any]
    text: str
    created_at: datetime


@dataclass(frozen=True)
class ActiveConversion:
    """A conversion still pending or running: its job, model and the entry it converts."""

    job: str
    model: str
    entry_hash: str | None


@dataclass(frozen=True)
class Conversion:
    """A conversion job as the admin's Models tab lists it."""

    job: str
    model: str
    state: str
    section: str | None
    #: ``{model, stage, current, total}`` while it runs (``service.conversion`` writes it).
    loading: Mapping[str, Any] | None
    stages: tuple[int, int]
    steps: tuple[int, int]
    reason: str | None
    created_at: datetime
    updated_at: datetime


class ExtrasRecords:
    """Read and write extras documents and list conversions; each method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self._single = engine.execution_options(isolation_level="AUTOCOMMIT")

    def save(self, document: Mapping[str, Any], raw: str, sha256: str, created_by: str) -> int:
        """Store an accepted document as the current one; its version."""
        params = {"document": json.dumps(document), "text": raw, "sha256": sha256, "created_by": created_by}
        with self._single.connect() as conn:
            return int(conn.execute(EXTRAS_QUERIES["insert_document"], params).one().version)

    def latest(self) -> StoredDocument | None:
        """The current document, or None if none was ever stored."""
        with self._single.connect() as conn:
            row = conn.execute(EXTRAS_QUERIES["latest_document"]).first()
        return None if row is None else StoredDocument(row.version, row.document, row.text, row.created_at)

    def latest_version(self) -> int | None:
        """The current document's version (None: none stored); cheap enough to ask often."""
        with self._single.connect() as conn:
            version = conn.execute(EXTRAS_QUERIES["latest_version"]).scalar_one()
        return None if version is None else int(version)

    def active(self, models: Sequence[str]) -> list[ActiveConversion]:
        """Conversions of ``models`` still pending or running."""
        with self._single.connect() as conn:
            rows = conn.execute(EXTRAS_QUERIES["active_conversions"], {"names": list(models)})
            return [ActiveConversion(row.job, row.model, row.entry_hash) for row in rows]

    def recent(self, limit: int) -> list[Conversion]:
        """The newest ``limit`` conversion jobs, newest first."""
        with self._single.connect() as conn:
            rows = conn.execute(EXTRAS_QUERIES["recent_conversions"], {"limit": limit}).all()
        return [
            Conversion(
                job=row.job,
                model=row.model,
                state=row.state,
                section=row.section,
                loading=row.loading,
                stages=(row.stages_current, row.stages_total),
                steps=(row.steps_current, row.steps_total),
                reason=row.reason,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row in rows
        ]
