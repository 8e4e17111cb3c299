"""The api's side of models as data: accept an extras document, start its conversions, list them.

``PUT /api/extras`` (``save``) validates the whole document first (``service.extras_document``):
any problem is a 400 listing every ``(field, rule)`` and nothing is stored or enqueued. A valid
document is stored as the new current version (``ExtrasRecords``) and each entry is compared with
the model store:

- its model is ready and was converted from this same entry (``models.entry_hash``): unchanged;
- a conversion of this same entry is still pending or running: unchanged (it is on its way);
- a conversion of another version of the entry is still pending or running: a 409 naming the
  entry and its job, and nothing is stored: cancel that job or wait for it (onnx-web answered 409
  while any conversion ran; here only the entries that would race are refused);
- its model is in the server's read-only models folder (the demo models, a hand-filled folder):
  skipped, as onnx-web skipped a conversion whose destination existed;
- otherwise one conversion job (kind ``convert``) is enqueued; a worker fetches the source,
  converts it and publishes it to the store (``service.conversion``).

``sources`` entries are accepted and reported as skipped: they were downloads for onnx-web's own
helpers, and nothing here uses them. ``delete_model`` withdraws a model from the store unless a
waiting or running job still names it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import Conflict, InvalidParams, NotFound
from service.extras_document import Entry, ExtrasInvalid, parse_document, validate_document
from service.jobs.extras import CONVERT_KIND, ExtrasRecords
from service.jobs.models import ModelRecords
from service.jobs.store import JobStore, NewJob
from service.storage import ObjectStore

log = logging.getLogger(__name__)

#: The stages of a conversion job, in order, as its progress counts them.
CONVERSION_STAGES = ("download", "convert", "publish")
#: Conversions the Models tab lists.
RECENT_CONVERSIONS = 50
SOURCES_SKIPPED = "sources entries are downloads for onnx-web's own helpers; this server needs none"
IN_MODELS_FOLDER = "already in the server's models folder (not converted again, as in onnx-web)"


class InvalidDocument(InvalidParams):
    """400: an extras document breaks rules; ``problems`` lists each ``(field, rule)``."""

    def __init__(self, invalid: ExtrasInvalid) -> None:
        self.problems = invalid.problems
        first = invalid.problems[0]
        super().__init__(first.field or "body", first.rule)
        self.details = {"errors": [problem.to_dict() for problem in invalid.problems]}


class ConversionConflict(Conflict):
    """409: entries changed while a conversion of their previous version is still on its way."""

    def __init__(self, conflicts: list[dict[str, str]]) -> None:
        names = ", ".join(item["name"] for item in conflicts[:5])
        super().__init__(
            f"a conversion of {names} is still pending or running: cancel it or wait for it, then save again"
        )
        self.details = {"conflicts": conflicts}


class ModelInUse(Conflict):
    """409: jobs still need the model an admin asked to delete."""


@dataclass
class SaveResult:
    """What ``PUT /api/extras`` answers (onnx-web's GUI reads ``file``, ``successful``, ``errors``)."""

    version: int
    conversions: list[dict[str, str]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": f"extras/{self.version}",
            "version": self.version,
            "successful": [item["name"] for item in self.conversions] + self.unchanged,
            "errors": [],
            "conversions": self.conversions,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


class ExtrasService:
    """Stored extras documents, their conversions and the store's models, for the admin routes."""

    def __init__(
        self,
        jobs: JobStore,
        records: ExtrasRecords,
        models: ModelRecords,
        store: ObjectStore,
        max_attempts: int,
        models_path: Path,
    ) -> None:
        self.jobs = jobs
        #: The read-only models folder: an entry whose model is there is not converted.
        self.models_path = models_path
        self.records = records
        self.models = models
        self.store = store
        self.max_attempts = max_attempts

    def current_text(self, fallback: str | None) -> str:
        """The current document as it was sent; else ``fallback`` (the first extras file); else ``{}``."""
        stored = self.records.latest()
        if stored is not None:
            return stored.text
        return fallback if fallback is not None else "{}"

    def save(self, raw: bytes, created_by: str) -> SaveResult:
        """Validate, store and start the conversions of an extras document.

        Raises:
            InvalidDocument: the document breaks a rule (nothing stored).
            ConversionConflict: an entry changed while its earlier conversion is on its way.
        """
        try:
            document = validate_document(parse_document(raw))
        except ExtrasInvalid as invalid:
            raise InvalidDocument(invalid) from None
        local = [entry for entry in document.entries if self._in_models_folder(entry)]
        names = [entry.name for entry in document.entries if entry not in local]
        ready = self.models.entry_hashes(names)
        active = {item.model: item for item in self.records.active(names)}
        todo: list[Entry] = []
        unchanged: list[str] = []
        conflicts: list[dict[str, str]] = []
        for entry in document.entries:
            if entry in local:
                continue
            running = active.get(entry.name)
            if running is not None and running.entry_hash != entry.entry_hash:
                conflicts.append({"name": entry.name, "field": entry.field, "job": running.job})
            elif ready.get(entry.name) == entry.entry_hash or running is not None:
                unchanged.append(entry.name)
            else:
                todo.append(entry)
        if conflicts:
            raise ConversionConflict(conflicts)
        text = raw.decode("utf-8")
        version = self.records.save(document.data, text, hashlib.sha256(raw).hexdigest(), created_by)
        result = SaveResult(
            version,
            unchanged=unchanged,
            skipped=[{"name": entry.name, "reason": IN_MODELS_FOLDER} for entry in local]
            + [{"name": name, "reason": SOURCES_SKIPPED} for name in document.sources],
        )
        for entry in todo:
            job = self._enqueue(entry, version, created_by)
            result.conversions.append(
                {"name": entry.name, "section": entry.section, "job": job, "state": "pending"}
            )
        log.info(
            "extras document saved",
            extra={
                "action": "extras_saved",
                "version": version,
                "conversions": len(result.conversions),
                "unchanged": len(unchanged),
                "by": created_by,
            },
        )
        return result

    def overview(self) -> dict[str, Any]:
        """``GET /api/models``: the store's models in every state and the recent conversions."""
        return {
            "models": [
                {
                    "name": model.name,
                    "kind": model.kind,
                    "family": model.family,
                    "content_hash": model.content_hash,
                    "variant": model.variant,
                    "size_bytes": model.size_bytes,
                    "state": model.state.value,
                    "created": model.created_at.isoformat() if model.created_at else None,
                    "labels": dict(model.labels),
                }
                for model in self.models.listed()
            ],
            "conversions": [
                {
                    "job": item.job,
                    "name": item.model,
                    "section": item.section,
                    "state": item.state,
                    "stage": (item.loading or {}).get("stage") if item.state == "running" else None,
                    "progress": _progress(item.loading, item.stages),
                    "reason": item.reason,
                    "created": item.created_at.isoformat(),
                    "updated": item.updated_at.isoformat(),
                }
                for item in self.records.recent(RECENT_CONVERSIONS)
            ],
        }

    def delete_model(self, name: str) -> int:
        """Withdraw every version of a model; the number withdrawn.

        Raises:
            NotFound: the store holds no such model.
            ModelInUse: waiting or running jobs still name it.
        """
        from service.modelstore import withdraw

        needing = self.models.jobs_needing(name)
        if needing:
            raise ModelInUse(f"{needing} waiting or running job(s) name {name!r}; delete it once they end")
        removed = withdraw(name, self.store, self.models)
        if not removed:
            raise NotFound(f"the model store holds no model named {name!r}")
        log.info("model deleted", extra={"action": "model_deleted", "model": name, "versions": removed})
        return removed

    def _in_models_folder(self, entry: Entry) -> bool:
        """Whether the read-only models folder holds the entry's model (the demo's, a hand-filled one)."""
        from service.modelstore import in_folder

        place = (
            entry.name
            if entry.kind in ("diffusion", "correction", "upscaling")
            else f"{entry.kind}/{entry.name}"
        )
        return in_folder(self.models_path, place)

    def _enqueue(self, entry: Entry, version: int, owner: str) -> str:
        job_id = uuid.uuid4()
        name = f"convert_{version}_{entry.name}_{job_id.hex[:8]}"
        self.jobs.enqueue(
            NewJob(
                id=job_id,
                name=name,
                kind=CONVERT_KIND,
                chain={"convert": {**conversion_spec(entry), "version": version}},
                model=entry.name,
                platform=None,
                max_attempts=self.max_attempts,
                owner=owner,
                stages_total=len(CONVERSION_STAGES),
            )
        )
        return name


def conversion_spec(entry: Entry) -> dict[str, Any]:
    """What a conversion job carries: the entry and where it came from."""
    return {
        "section": entry.section,
        "index": entry.index,
        "name": entry.name,
        "kind": entry.kind,
        "entry": dict(entry.entry),
        "entry_hash": entry.entry_hash,
    }


def _progress(loading: Any, stages: tuple[int, int]) -> dict[str, int]:
    if isinstance(loading, dict) and "current" in loading:
        return {"current": int(loading["current"]), "total": int(loading.get("total", 0))}
    return {"current": stages[0], "total": stages[1]}
