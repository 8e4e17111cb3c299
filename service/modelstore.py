"""The model store: converted models published to the object store, pulled by workers into a cache.

Publishing (``publish``) hashes every file of a model, uploads them under
``models/<name>/<content hash>/<path>`` and only then turns the registry row ``ready``
(``service.jobs.models``): a half-published model is never offered, and publishing the same
content again changes nothing. The content hash is the sha256 of the sorted ``path, sha256, size``
lines of the files, so it names exactly what a worker will find after a pull.

A worker's ``ModelCache`` is a models folder of its own (``ONNX_WEB_MODEL_CACHE``). When a claimed
job names a model that the read-only local folder (``ONNX_WEB_MODEL_PATH``, checked first) does not
hold, the cache pulls it from the store:

- **one download per model**: a pull holds an exclusive ``flock`` on ``.store/<name>.lock``, so a
  second pull of the same model, from another thread or another worker sharing the folder, waits
  and then finds it installed;
- **verified**: every file is written to a temporary name while its sha256 is computed, and kept
  only if hash and size match the registry; a mismatch deletes it and fails the job with a reason
  naming the file;
- **restartable**: verified files wait in ``.partial/<name>-<hash>/`` until the whole model is
  there, then the model is moved into place with one rename and its manifest
  (``.store/<name>.json``) is written last: a crash leaves either no model or a complete one, and
  the next pull keeps the verified files of the interrupted one;
- **bounded**: the sizes of installed models stay within ``ONNX_WEB_MODEL_CACHE_BYTES``; the least
  recently used models that no running job holds are evicted to make room;
- **current**: each job asks the registry for the ready version; a cached copy of a version that was
  replaced is replaced, and one of a model no longer registered is dropped.

The chain of a job that needs a pulled model runs on the cache folder, where every entry of the
local folder is linked in too, so a pulled model and a local LoRA or upscaler meet in one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from pipelines.diffusion.prompt_grammar import PromptSyntaxError, parse_stages
from pipelines.models.layout import GPU_MARKER
from pipelines.models.registry import (
    KIND_PREFIXES,
    NETWORK_TYPES,
    ModelRegistry,
    PublishedModel,
    model_family,
)
from service.errors import NotFound, StorageError
from service.jobs.extras import ExtrasRecords
from service.jobs.models import MODEL_KINDS, ModelFile, ModelRecords, ModelVersion
from service.logs import OutageLog
from service.retries import first_line
from service.storage import ObjectStore, model_key, model_prefix

log = logging.getLogger(__name__)

HASH_CHUNK_BYTES = 1024 * 1024
#: A file whose download broke off is fetched again from its start this many times in all.
FILE_ATTEMPTS = 3
#: Folders of a models folder that hold many models each; linked entry by entry, not whole.
CONTAINER_FOLDERS = (*KIND_PREFIXES, *NETWORK_TYPES)
#: Network folders whose files a prompt names by stem (``<lora:name:1.0>``).
NETWORK_FOLDERS = ("lora", "inversion")
STORE_DIR = ".store"
PARTIAL_DIR = ".partial"
TRASH_DIR = ".trash"
OCTET_STREAM = "application/octet-stream"

#: ``(model name, bytes done, bytes in all)``, told as a pull advances.
PullProgress = Callable[[str, int, int], None]


class ModelUnavailable(FileNotFoundError):
    """A job names a model neither the local folder nor the registry holds (a retry cannot help)."""

    code = "model_missing"


class ModelCorrupt(ValueError):
    """A pulled file failed its sha256 or size check; it was deleted and nothing was cached."""

    code = "model_corrupt"


class ModelCacheFull(RuntimeError):
    """The cache cannot make room for a model: it is larger than the bound, or the rest is in use."""

    code = "model_cache_full"


#: The store's failures a job's record names by their ``code``.
MODEL_STORE_ERRORS = ModelUnavailable | ModelCorrupt | ModelCacheFull


# --- publishing ------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: Iterable[ModelFile]) -> str:
    """The hash naming a model's content: sha256 of its sorted ``path\\tsha256\\tsize`` lines."""
    lines = sorted(f"{item.path}\t{item.sha256}\t{item.size}\n" for item in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def infer_kind(place: str) -> str:
    """A model's kind from its place below a models folder (``lora/x.safetensors`` is a lora)."""
    parts = PurePosixPath(place).parts
    if len(parts) > 1 and parts[0] in MODEL_KINDS:
        return parts[0]
    for kind, prefixes in KIND_PREFIXES.items():
        if parts[0].startswith(prefixes):
            return kind
    raise ValueError(f"cannot tell the kind of model {place!r}: pass --kind ({', '.join(MODEL_KINDS)})")


def describe_model(
    source: Path, *, name: str | None = None, kind: str | None = None, labels: Mapping[str, str] | None = None
) -> ModelVersion:
    """The registry row of the model at ``source`` (a folder or a file inside a models folder).

    Its place below the models folder is its name, under the kind's sub-folder when ``source`` is
    in one (``lora/foo.safetensors``); single files keep their extension, as the folder has them.
    """
    source = source.resolve()
    if not source.exists():
        raise FileNotFoundError(f"no model at {source}")
    in_container = source.parent.name in CONTAINER_FOLDERS
    place = f"{source.parent.name}/{source.name}" if in_container else source.name
    name = name or (source.stem if source.is_file() else source.name)
    if kind is None and (source / "model_index.json").is_file():
        kind = "diffusion"  # a diffusers folder, whatever its name
    kind = kind or infer_kind(place)
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    paths = [source] if source.is_file() else sorted(item for item in source.rglob("*") if item.is_file())
    base = source.parent.parent if in_container else source.parent
    files = tuple(
        ModelFile(path.relative_to(base).as_posix(), sha256_file(path), path.stat().st_size)
        for path in paths
        if not path.name.startswith(".")
    )
    if not files:
        raise ValueError(f"model {source} holds no files")
    return ModelVersion(
        name=name,
        # Fused fp16 graphs (``convert --optimize gpu``) run on CUDA workers only.
        variant="cuda" if source.is_dir() and (source / GPU_MARKER).is_file() else "fp32",
        content_hash=content_hash(files),
        kind=kind,
        family=model_family(source) if kind == "diffusion" and source.is_dir() else None,
        path=place,
        size_bytes=sum(item.size for item in files),
        files=files,
        labels=dict(labels or {}),
    )


@dataclass(frozen=True)
class Published:
    """What ``publish`` did: the version, and whether it uploaded anything."""

    model: ModelVersion
    uploaded: bool
    #: Content hashes of versions this one replaced (their objects were deleted).
    retired: tuple[str, ...] = ()


def publish(
    source: Path,
    store: ObjectStore,
    records: ModelRecords,
    *,
    name: str | None = None,
    kind: str | None = None,
    labels: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Published:
    """Upload the model at ``source`` and register it ready; a no-op for content already ready.

    Files go up first (each a single object, its sha256 in its metadata), the row turns ``ready``
    last. A file already stored with the same sha256 (an interrupted publish) is not sent again.
    """
    model = describe_model(source, name=name, kind=kind, labels=labels)
    if not records.begin_publish(model):
        log.info("model already published", extra={"action": "publish", "model": model.name})
        return Published(model, uploaded=False)
    base = source.resolve().parent
    if source.resolve().parent.name in CONTAINER_FOLDERS:
        base = base.parent
    done = 0
    progress(done, model.size_bytes)
    for item in model.files:
        key = model_key(model.name, model.content_hash, item.path)
        if not _stored_already(store, key, item):
            store.put_file(key, base / item.path, OCTET_STREAM, {"sha256": item.sha256})
        done += item.size
        progress(done, model.size_bytes)
    retired = records.mark_ready(model.name, model.content_hash)
    for old in retired:
        remove_version(store, records, model.name, old)
    log.info(
        "model published",
        extra={
            "action": "publish",
            "model": model.name,
            "hash": model.content_hash,
            "bytes": model.size_bytes,
            "files": len(model.files),
        },
    )
    return Published(model, uploaded=True, retired=tuple(retired))


def withdraw(name: str, store: ObjectStore, records: ModelRecords) -> int:
    """Remove every version of ``name`` from the store; workers drop their copy at next use."""
    hashes = records.mark_deleting(name)
    for old in hashes:
        remove_version(store, records, name, old)
    return len(hashes)


def remove_version(store: ObjectStore, records: ModelRecords, name: str, old_hash: str) -> None:
    """Delete a retired version's objects, then its row (a failure leaves it ``deleting`` to retry)."""
    store.delete_prefix(model_prefix(name, old_hash))
    records.forget(name, old_hash)


def sweep_deleting(store: ObjectStore, records: ModelRecords) -> int:
    """Finish removing versions left ``deleting`` (a removal that failed or was cut short); how many.

    A version whose objects cannot be deleted now stays ``deleting`` for the next sweep.
    """
    swept = 0
    for name, old_hash in records.deleting():
        try:
            remove_version(store, records, name, old_hash)
        except StorageError as err:
            log.warning(
                "could not remove a deleted model's objects",
                extra={"action": "sweep", "model": name, "hash": old_hash[:12], "error": str(err)},
            )
            continue
        swept += 1
    return swept


def _stored_already(store: ObjectStore, key: str, item: ModelFile) -> bool:
    try:
        info = store.stat(key)
    except NotFound:
        return False
    return info.size == item.size and info.metadata.get("sha256") == item.sha256


# --- the worker's cache ----------------------------------------------------------------------------


def job_model_names(chain: Mapping[str, Any], model: str | None) -> list[str]:
    """The models a job's chain names: its diffusion model, upscalers, face correctors, and the
    LoRAs and inversions its prompts name (as ``lora/<name>``, ``inversion/<name>``)."""
    names = [model] if model else []
    for stage in chain.get("stages", []):
        params = stage.get("params", {})
        for key in ("model", "upscale_model", "correction_model"):
            value = params.get(key)
            if isinstance(value, str) and value:
                names.append(value)
        for key in ("prompt", "negative_prompt"):
            value = params.get(key)
            if isinstance(value, str) and "<" in value:
                names += prompt_networks(value)
    return list(dict.fromkeys(names))


def prompt_networks(prompt: str) -> list[str]:
    """``lora/<name>`` and ``inversion/<name>`` for each network a prompt's tokens name.

    The api parsed the prompt before queueing it; one that does not parse names nothing here.
    """
    try:
        stages = parse_stages(prompt)
    except PromptSyntaxError:
        return []
    return [f"lora/{n.name}" for p in stages for n in p.loras] + [
        f"inversion/{n.name}" for p in stages for n in p.inversions
    ]


def in_folder(folder: Path, name: str) -> bool:
    """Whether a models folder holds the model a chain names: a folder, ``<name>.onnx``, or for
    ``lora/<name>`` and ``inversion/<name>`` a weights file of that stem."""
    parts = [part for part in name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    if not parts:
        return False
    path = folder.joinpath(*parts)
    if len(parts) == 2 and parts[0] in NETWORK_FOLDERS and path.parent.is_dir():
        return any(item.stem == parts[1] and item.is_file() for item in path.parent.iterdir())
    return path.exists() or path.with_name(path.name + ".onnx").exists()


@dataclass(frozen=True)
class Manifest:
    """What the cache records of one installed model (``.store/<name>.json``)."""

    name: str
    content_hash: str
    path: str
    size_bytes: int


class ModelCache:
    """A worker's bounded, verified local cache of models pulled from the store.

    ``prepare`` is the one entry point: it makes every model a job names available and says which
    folder the job's chain must run on; the models stay pinned (never evicted) until the
    ``prepare`` block ends.
    """

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        store: ObjectStore,
        records: ModelRecords,
        *,
        on_drop: Callable[[Path], object] = lambda path: None,
        variant: str = "fp32",
    ) -> None:
        self.root = Path(root).resolve()
        #: The variant this worker runs best: pulled where the store has it, else fp32.
        self.variant = variant
        self.max_bytes = max_bytes
        self.store = store
        self.records = records
        #: Told of each model removed from the cache (evicted, replaced or withdrawn), so the
        #: worker can drop its sessions.
        self.on_drop = on_drop
        #: Files downloaded since start (tests count them: a coalesced pull downloads nothing).
        self.downloads = 0
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()
        for folder in (STORE_DIR, PARTIAL_DIR, TRASH_DIR):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / TRASH_DIR, ignore_errors=True)
        (self.root / TRASH_DIR).mkdir(exist_ok=True)

    # -- what a job uses -----------------------------------------------------------------------

    @contextlib.contextmanager
    def prepare(
        self, local: Path, names: Sequence[str], progress: PullProgress = lambda name, done, total: None
    ) -> Iterator[Path]:
        """The folder to run a chain naming ``names`` on, with every model there and pinned.

        ``local`` when it holds them all; else the cache folder, after pulling what is missing
        and linking ``local``'s entries in.

        Raises:
            ModelUnavailable: a model is in neither place (a cached copy of it is dropped).
            ModelCorrupt: a pulled file failed its check.
            ModelCacheFull: there is no room for a model.
        """
        missing = [name for name in names if not in_folder(local, name)]
        if not missing:
            yield local
            return
        pinned: list[str] = []
        try:
            for name in missing:
                version = self.records.ready_model(name, self.variant)
                if version is None:
                    self._drop_named(name)
                    raise ModelUnavailable(
                        f"model {name!r} is neither in the models folder nor in the model store"
                    )
                with self._lock:
                    self._pins[version.name] += 1
                pinned.append(version.name)
                self.ensure(version, progress)
            link_entries(local, self.root)
            yield self.root
        finally:
            with self._lock:
                self._pins.subtract(pinned)

    def cached(self) -> list[str]:
        """Names of the installed models (as jobs name them), most recently used first."""
        manifests = sorted(self._manifests(), key=lambda item: item[1], reverse=True)
        return [self._request_name(manifest) for manifest, _ in manifests]

    # -- pulling -------------------------------------------------------------------------------

    def ensure(self, version: ModelVersion, progress: PullProgress = lambda name, done, total: None) -> bool:
        """Install ``version`` unless it is; True when it was downloaded now.

        Concurrent calls for one model, in this process or another on the same folder, download it
        once: the others wait on the model's lock and find it installed.
        """
        with self._model_lock(version.name):
            current = self._manifest(version.name)
            installed = current is not None and (self.root / current.path).exists()
            if installed and current is not None and current.content_hash == version.content_hash:
                self._touch(version.name)
                return False
            self._make_room(version)
            started = time.monotonic()
            staged = self._download(version, progress)
            self._install(version, staged, current)
            log.info(
                "model pulled",
                extra={
                    "action": "model_pull",
                    "model": version.name,
                    "hash": version.content_hash,
                    "bytes": version.size_bytes,
                    "ms": int((time.monotonic() - started) * 1000),
                },
            )
            return True

    def _download(self, version: ModelVersion, progress: PullProgress) -> Path:
        """Every file of ``version`` verified under ``.partial/``; the staging folder."""
        staging = self.root / PARTIAL_DIR / f"{version.name}-{version.content_hash}"
        done = 0
        progress(version.name, done, version.size_bytes)
        for item in version.files:
            target = staging / item.path
            if not (target.is_file() and _matches(target, item)):
                fetched = partial(_advance, progress, version.name, done, version.size_bytes)
                self._fetch_file(version, item, target, fetched)
            done += item.size
            progress(version.name, done, version.size_bytes)
        return staging

    def _fetch_file(
        self, version: ModelVersion, item: ModelFile, target: Path, fetched: Callable[[int], None]
    ) -> None:
        """Download one file to ``target`` through a temporary name, checking its sha256 and size.

        ``fetched`` is told the bytes read so far after each chunk; what it raises (a cancel) ends
        the download with the temporary file deleted.
        """
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f"{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        key = model_key(version.name, version.content_hash, item.path)
        for attempt in range(1, FILE_ATTEMPTS + 1):
            digest, size = hashlib.sha256(), 0
            try:
                with self.store.get_stream(key) as stream, temporary.open("wb") as file:
                    for chunk in stream:
                        digest.update(chunk)
                        size += len(chunk)
                        file.write(chunk)
                        fetched(size)
            except StorageError:
                temporary.unlink(missing_ok=True)
                if attempt == FILE_ATTEMPTS:
                    raise
                log.warning(
                    "model file download broke off; starting it again",
                    extra={"action": "model_pull", "model": version.name, "file": item.path, "try": attempt},
                )
                continue
            except NotFound as err:
                temporary.unlink(missing_ok=True)
                raise ModelCorrupt(
                    f"model {version.name!r}: file {item.path} is missing from the store"
                ) from err
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            break
        self.downloads += 1
        if digest.hexdigest() != item.sha256 or size != item.size:
            temporary.unlink(missing_ok=True)
            log.error(
                "model file failed its check",
                extra={"action": "model_pull", "model": version.name, "file": item.path, "bytes": size},
            )
            raise ModelCorrupt(
                f"model {version.name!r}: file {item.path} failed its check "
                f"(sha256 {digest.hexdigest()[:12]}…, {size} bytes; "
                f"expected {item.sha256[:12]}…, {item.size} bytes); the file was deleted"
            )
        os.replace(temporary, target)

    def _install(self, version: ModelVersion, staged: Path, current: Manifest | None) -> None:
        """Move a verified model into place with one rename; its manifest is written last."""
        if current is not None:
            self._remove(current)
        for leftover in staged.rglob("*.tmp"):  # a download a crash interrupted
            leftover.unlink(missing_ok=True)
        destination = self.root / version.path
        self._discard(destination)  # a model whose manifest was never written (a crash)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / version.path, destination)
        shutil.rmtree(staged, ignore_errors=True)
        manifest = Manifest(version.name, version.content_hash, version.path, version.size_bytes)
        _write_json(self._manifest_path(version.name), manifest.__dict__)

    # -- room ------------------------------------------------------------------------------------

    def _make_room(self, version: ModelVersion) -> None:
        """Evict least recently used models nobody holds until ``version`` fits."""
        if version.size_bytes > self.max_bytes:
            raise ModelCacheFull(
                f"model {version.name!r} ({version.size_bytes} bytes) is larger than the model cache "
                f"({self.max_bytes} bytes, ONNX_WEB_MODEL_CACHE_BYTES)"
            )
        manifests = sorted(self._manifests(), key=lambda item: item[1])  # oldest use first
        used = sum(manifest.size_bytes for manifest, _ in manifests if manifest.name != version.name)
        for manifest, _ in manifests:
            if used + version.size_bytes <= self.max_bytes:
                return
            with self._lock:
                pinned = self._pins[manifest.name] > 0
            if pinned or manifest.name == version.name:
                continue
            log.info(
                "model evicted from the cache",
                extra={"action": "model_evict", "model": manifest.name, "bytes": manifest.size_bytes},
            )
            self._remove(manifest)
            used -= manifest.size_bytes
        if used + version.size_bytes > self.max_bytes:
            raise ModelCacheFull(
                f"no room for model {version.name!r} ({version.size_bytes} bytes): the models in use "
                f"fill the cache ({used} of {self.max_bytes} bytes)"
            )

    def _drop_named(self, name: str) -> None:
        """Drop the cached copy of a model the registry no longer offers."""
        for manifest, _ in self._manifests():
            if name in (manifest.name, self._request_name(manifest)):
                with self._model_lock(manifest.name):
                    log.info(
                        "model withdrawn: dropped from the cache",
                        extra={"action": "model_drop", "model": name},
                    )
                    self._remove(manifest)

    def _remove(self, manifest: Manifest) -> None:
        """Forget a model (manifest first: a crash after that leaves only files to clean)."""
        self._manifest_path(manifest.name).unlink(missing_ok=True)
        path = self.root / manifest.path
        self._discard(path)
        self.on_drop(path)

    def _discard(self, path: Path) -> None:
        """Move ``path`` out of the way at once, then delete it."""
        if not path.exists() and not path.is_symlink():
            return
        if path.is_symlink():
            path.unlink()
            return
        trash = self.root / TRASH_DIR / uuid.uuid4().hex
        os.replace(path, trash)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)

    # -- manifests -------------------------------------------------------------------------------

    def _manifest_path(self, name: str) -> Path:
        return self.root / STORE_DIR / f"{name}.json"

    def _manifest(self, name: str) -> Manifest | None:
        try:
            return Manifest(**json.loads(self._manifest_path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _manifests(self) -> list[tuple[Manifest, float]]:
        """Every installed model with its last use (its manifest's mtime)."""
        found = []
        for path in (self.root / STORE_DIR).glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                found.append((Manifest(**json.loads(path.read_text())), path.stat().st_mtime))
        return found

    def _touch(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self._manifest_path(name))

    def _request_name(self, manifest: Manifest) -> str:
        """The name a job gives a model: its place, without ``.onnx`` for single files."""
        return manifest.path.removesuffix(".onnx")

    @contextlib.contextmanager
    def _model_lock(self, name: str) -> Iterator[None]:
        with (self.root / STORE_DIR / f"{name}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def link_entries(local: Path, view: Path) -> None:
    """Link every entry of the local models folder into ``view`` (models, extras, wildcards).

    Kind and network folders become real folders of links, so pulled models can sit beside local
    ones; an entry ``view`` already has (a pulled model) is left alone, but a link to anywhere else
    than ``local``'s entry (another stack's models folder, an older copy) is pointed at it.
    """
    if not local.is_dir():
        return
    for entry in local.iterdir():
        if entry.name.startswith("."):
            continue
        target = view / entry.name
        if entry.is_dir() and entry.name in CONTAINER_FOLDERS:
            if target.is_symlink():
                target.unlink()
            target.mkdir(exist_ok=True)
            for child in entry.iterdir():
                _link(child, target / child.name)
        else:
            _link(entry, target)


def _link(source: Path, target: Path) -> None:
    """Make ``target`` a link to ``source``, unless it is one or is a real file or folder (a pulled model).

    The new link is made under a temporary name and renamed over ``target``, so that workers
    sharing the folder never find the name missing while it is replaced.
    """
    wanted = source.resolve()
    if target.is_symlink():
        if target.resolve() == wanted:
            return
    elif target.exists():
        return
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.link")
    temporary.symlink_to(wanted, target_is_directory=source.is_dir())
    try:
        os.replace(temporary, target)
    except IsADirectoryError:
        pass  # another worker sharing the folder pulled a model folder there meanwhile: it stays
    finally:
        temporary.unlink(missing_ok=True)


def _advance(progress: PullProgress, name: str, before: int, total: int, got: int) -> None:
    """Tell ``progress`` of ``got`` more bytes of the file being fetched after ``before`` others."""
    progress(name, before + got, total)


def _matches(path: Path, item: ModelFile) -> bool:
    return path.stat().st_size == item.size and sha256_file(path) == item.sha256


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    temporary = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


class LoadingReport:
    """A job's "loading model" progress: written to its row at most every ``interval_s``, cleared
    by ``finish`` once the chain can start."""

    def __init__(
        self,
        records: ModelRecords,
        job_id: Any,
        worker_id: str,
        attempt: int,
        interval_s: float,
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self.records = records
        #: Raises when the job must stop (cancelled, lease lost): a pull stops between chunks.
        self.check = check
        self.job_id = job_id
        self.worker_id = worker_id
        self.attempt = attempt
        self.interval_s = interval_s
        self.reported = False
        self._last = float("-inf")

    def __call__(self, name: str, done: int, total: int) -> None:
        self.check()
        now = time.monotonic()
        if done < total and now - self._last < self.interval_s:
            return
        self._last = now
        self.reported = True
        self.records.record_loading(
            self.job_id, self.worker_id, self.attempt, {"model": name, "current": done, "total": total}
        )

    def finish(self) -> None:
        if self.reported:
            self.records.record_loading(self.job_id, self.worker_id, self.attempt, None)


# --- the api's view --------------------------------------------------------------------------------

#: How long an api process lists the store's models before asking the registry again.
PUBLISHED_REFRESH_S = 5.0


class PublishedModels:
    """Falcon middleware keeping the api's ``ModelRegistry`` in step with the store's ready models.

    Before an ``/api`` request, at most every ``interval_s``, the ready models are read and handed
    to the registry, which lists and accepts them like the folder's own: in that request until the
    first read succeeds, in the background after it, so a slow or frozen database never holds a
    request that needs no database (the settings, the docs). With Postgres away the last list stays
    (the request itself will answer 503 where it needs the database).
    """

    def __init__(
        self,
        records: ModelRecords,
        registry: ModelRegistry,
        extras: ExtrasRecords | None = None,
        interval_s: float = PUBLISHED_REFRESH_S,
    ) -> None:
        self.records = records
        self.registry = registry
        #: The stored extras documents: the newest one's labels, tokens and strings are listed too.
        self.extras = extras
        self._extras_version: int | None = None
        self.interval_s = interval_s
        self._next = float("-inf")
        self._lock = threading.Lock()
        #: Whether a read succeeded: from then on reads run in the background.
        self._loaded = False
        #: Whether a background read is under way (one at a time).
        self._reading = False
        self._outage = OutageLog(
            log, "could not read the model store's registry", "read the model store's registry again", 60.0
        )

    def process_request(self, req: Any, resp: Any) -> None:
        if req.path.startswith("/api"):
            self.refresh()

    def refresh(self) -> None:
        """Read the ready models if the last read is older than ``interval_s``: now, until one read
        succeeded, then in a background thread while requests go on with the last list."""
        with self._lock:
            now = time.monotonic()
            if now < self._next or self._reading:
                return
            self._next = now + self.interval_s
            self._reading = self._loaded
        if not self._loaded:
            self._read()
            return
        threading.Thread(target=self._read_in_background, name="published-models", daemon=True).start()

    def _read_in_background(self) -> None:
        try:
            self._read()
        finally:
            with self._lock:
                self._reading = False

    def _read(self) -> None:
        try:
            ready = self.records.ready()
            self._refresh_extras()
        except SQLAlchemyError as err:  # away, or its pool exhausted: keep the last list
            self._outage.failed(first_line(err), action="models")
            return
        self._outage.recovered(action="models")
        self._loaded = True
        self.registry.set_published(
            [
                PublishedModel(
                    name=model.name,
                    kind=model.kind,
                    path=model.path,
                    family="sdxl" if model.family == "sdxl" else "sd",
                    size_bytes=model.size_bytes,
                )
                for model in ready
            ]
        )

    def _refresh_extras(self) -> None:
        """Hand the registry the newest stored extras document, read again only when a newer one exists."""
        if self.extras is None:
            return
        version = self.extras.latest_version()
        if version == self._extras_version:
            return
        stored = self.extras.latest()
        self.registry.set_stored_extras(None if stored is None else stored.document)
        self._extras_version = None if stored is None else stored.version
