"""Conversion jobs: a worker fetches an extras entry's source, converts it and publishes it.

A job of kind ``convert`` (``service.extras`` enqueues one per new or changed entry) carries the
entry in ``chain.convert``. It runs like an image job (claimed, leased, cancellable, retried,
failed with a reason) in three stages, each shown in the job's progress and, in more detail, in
its ``loading`` column (``{model, stage, current, total}``: bytes while downloading and
publishing, components while converting):

1. **download** (``service.sources``): a local path below the import folder, an
   http(s) URL (resumed, size-limited, sha256-checked), a Hugging Face hub id or a civitai id. A
   pickle checkpoint is refused unless the worker allows them (``ONNX_WEB_ALLOW_PICKLE``).
2. **convert**, by section and by what the source turned out to be:
   - diffusion: a diffusers folder (``pipelines.models.convert``), a single-file SD/SDXL
     checkpoint (``pipelines.models.single_file`` first), a folder already in our ONNX layout,
     or a zip of one (``pipeline: archive``; members checked before anything is written);
   - correction and upscaling: any architecture spandrel knows, exported to ONNX
     (``pipelines.models.upscalers``); its scale must match the entry's;
   - networks: LoRAs and inversions are kept as safetensors (a pickle, where allowed, is read
     with torch's weights-only loader and written as safetensors); ControlNets are converted;
3. **publish** (``service.modelstore.publish``): uploaded and registered ready, then tagged with
   the entry's hash so that saving the same entry again converts nothing.

Everything is written below a scratch folder of the job's own, removed at the end whatever
happens; nothing is published unless the conversion finished. The job's output is a small text
(``<job>_0.txt``): the published model, its content hash and size.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.context import Counter, Progress, StageText
from service.config import Config
from service.jobs.models import ModelRecords
from service.sources import (
    SourceError,
    SourceSettings,
    detect_format,
    fetch_source,
    require_loadable,
)
from service.storage import ObjectStore

log = logging.getLogger(__name__)

STAGES = ("download", "convert", "publish")
#: The most members and bytes a model archive may unpack to.
ARCHIVE_MAX_MEMBERS = 10_000
#: What a worker of each platform converts diffusion models to, unless configured.
DEFAULT_VARIANTS = {"cuda": ("fp32", "cuda")}
#: Failure reasons another attempt may cure.
RETRYABLE_CODES = frozenset({"download_failed"})


class ConversionFailed(Exception):
    """The entry cannot be converted; ``code`` is the job's failure reason.

    Only a download that failed (the network, the server) is worth another attempt; a bad source,
    a hash mismatch, a refused pickle or a checkpoint that is not what the entry says are not.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


@dataclass(frozen=True)
class ConversionSettings:
    """What a worker needs to convert: where to fetch and work, and what it may load."""

    sources: SourceSettings
    #: Scratch space; each job works in a folder of its own below it.
    work: Path
    progress_interval_s: float
    #: The variants a diffusion model is converted to: ``fp32`` (every worker), ``cuda`` (fused fp16).
    variants: tuple[str, ...] = ("fp32",)

    @classmethod
    def from_config(cls, config: Config) -> ConversionSettings:
        root = config.model_cache_path
        return cls(
            sources=SourceSettings(
                cache=root / ".downloads",
                import_root=config.import_path or config.models_path,
                max_bytes=config.download_max_bytes,
                allow_pickle=config.allow_pickle,
                civitai_token=config.civitai_token,
                civitai_root=config.civitai_root,
                hf_endpoint=config.hf_endpoint,
            ),
            work=root / ".convert",
            progress_interval_s=config.progress_interval_s,
            variants=config.convert_variants or DEFAULT_VARIANTS.get(config.worker_platform, ("fp32",)),
        )


class StageReport:
    """A conversion's progress: the stage counter through the job's ``report``, details in ``loading``."""

    def __init__(
        self,
        model: str,
        report: Callable[[Progress], None],
        record: Callable[[Mapping[str, Any] | None], object],
        check: Callable[[], None],
        interval_s: float,
    ) -> None:
        self.model = model
        self.report = report
        self.record = record
        self.check = check
        self.interval_s = interval_s
        self.stage = STAGES[0]
        self._lines = 0
        self._last = float("-inf")

    def begin(self, stage: str) -> None:
        """Enter a stage: counted at once, its details reset."""
        self.check()
        self.stage = stage
        self._lines = 0
        self.report(Progress(stages=Counter(STAGES.index(stage), len(STAGES))))
        self._write(0, 0)

    def advance(self, done: int, total: int) -> None:
        """Stage-internal progress (bytes or components), written at most every ``interval_s``."""
        self.check()
        now = time.monotonic()
        if (done < total or total == 0) and now - self._last < self.interval_s:
            return
        self._write(done, total)

    def line(self, text: str) -> None:
        """A converter's progress line (one per component): logged at DEBUG, counted in ``current``."""
        log.debug("conversion progress", extra={"model": self.model, "stage": self.stage, "line": text})
        self._lines += 1
        self.advance(self._lines, 0)

    def finish(self) -> None:
        self.report(Progress(stages=Counter(len(STAGES), len(STAGES))))
        self.record(None)

    def _write(self, done: int, total: int) -> None:
        self._last = time.monotonic()
        self.record({"model": self.model, "stage": self.stage, "current": done, "total": total})


def run_conversion(
    spec: Mapping[str, Any],
    job_name: str,
    settings: ConversionSettings,
    store: ObjectStore,
    records: ModelRecords,
    progress: StageReport,
) -> list[StageText]:
    """Fetch, convert and publish one extras entry; the job's one text output.

    Raises:
        ConversionFailed: the source or the checkpoint cannot become this entry's model.
        Exception: the job's check (cancel, lost lease) or a dependency's failure, as for any job.
    """
    from service.modelstore import publish

    entry: Mapping[str, Any] = spec["entry"]
    name: str = spec["name"]
    kind: str = spec["kind"]
    work = settings.work / job_name
    started = time.monotonic()
    try:
        converted = convert_entry(spec, work, settings, progress)
        progress.begin("publish")
        labels = {"en": entry["label"]} if isinstance(entry.get("label"), str) else None
        published = []
        for folder in converted:
            done = publish(
                folder, store, records, name=name, kind=kind, labels=labels, progress=progress.advance
            )
            records.set_entry_hash(name, done.model.content_hash, spec["entry_hash"])
            published.append(done)
        progress.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "model": name,
        "kind": kind,
        "versions": [
            {
                "variant": done.model.variant,
                "content_hash": done.model.content_hash,
                "size_bytes": done.model.size_bytes,
                "files": len(done.model.files),
                "uploaded": done.uploaded,
            }
            for done in published
        ],
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("model converted", extra={"action": "converted", **summary})
    return [StageText(json.dumps(summary, indent=2), {"conversion": summary, "entry": spec["entry_hash"]})]


def convert_entry(
    spec: Mapping[str, Any], work: Path, settings: ConversionSettings, progress: StageReport
) -> list[Path]:
    """The download and convert stages of one entry: its model, laid out as in a models folder
    below ``work`` (emptied first), once per variant a diffusion model is made in (fp32 first);
    what ``onnx-web models import`` runs offline too.

    Raises:
        ConversionFailed: the source or the checkpoint cannot become this entry's model.
    """
    entry: Mapping[str, Any] = spec["entry"]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    progress.begin("download")
    try:
        source = fetch_source(
            entry["source"],
            settings.sources,
            sha256=entry.get("sha256"),
            progress=progress.advance,
            check=progress.check,
        )
        require_loadable(source, settings.sources.allow_pickle)
    except SourceError as err:
        raise ConversionFailed(err.code, str(err)) from None
    progress.begin("convert")
    return _convert(spec["section"], spec["kind"], spec["name"], entry, source, work, settings, progress)


def _convert(
    section: str,
    kind: str,
    name: str,
    entry: Mapping[str, Any],
    source: Path,
    work: Path,
    settings: ConversionSettings,
    progress: StageReport,
) -> list[Path]:
    """The converted model, laid out as in a models folder below ``work``: one path per variant."""
    found = detect_format(source)
    if kind in ("lora", "inversion"):
        return [_network_file(kind, name, source, found, work, settings.sources.allow_pickle)]
    if kind == "control":
        from pipelines.models.controlnets import CONTROL_FOLDER, convert_controlnet_folder

        _require(found in ("folder", "diffusers") and (source / "config.json").is_file(), source, found, kind)
        return [convert_controlnet_folder(source, work / CONTROL_FOLDER / name, progress=progress.line)]
    if section in ("correction", "upscaling"):
        return [_upscaler(section, name, entry, source, found, work)]
    if found == "zip":
        return [
            _onnx_folder(_unpack_model(source, work / "unpacked", settings.sources.max_bytes), work / name)
        ]
    if found == "diffusers" and _is_onnx_layout(source):
        return [_onnx_folder(source, work / name)]
    diffusers_folder = _diffusers_folder(entry, source, found, work, settings, progress)
    return _diffusion_variants(name, entry, diffusers_folder, work, settings.variants, progress)


def _diffusers_folder(
    entry: Mapping[str, Any],
    source: Path,
    found: str,
    work: Path,
    settings: ConversionSettings,
    progress: StageReport,
) -> Path:
    """The diffusers (PyTorch) folder a diffusion entry's source is, or becomes (single files)."""
    if found == "diffusers":
        return source
    if found in ("safetensors", "pickle"):
        from pipelines.models.single_file import CheckpointError, single_file_to_diffusers

        try:
            return single_file_to_diffusers(
                _as_safetensors(source, found, work),
                work / "diffusers",
                family=_family(entry),
                prediction_type=entry.get("prediction"),
                config=_config_folder(entry, settings),
                progress=progress.line,
            )
        except CheckpointError as err:
            raise ConversionFailed(err.code, str(err)) from None
    raise ConversionFailed(
        "bad_checkpoint",
        f"{source.name} is {found}: a diffusion entry needs a diffusers folder, a .safetensors checkpoint "
        "or a zip of a converted model",
    )


def _diffusion_variants(
    name: str,
    entry: Mapping[str, Any],
    diffusers_folder: Path,
    work: Path,
    variants: tuple[str, ...],
    progress: StageReport,
) -> list[Path]:
    """The ONNX folders of a diffusers folder: fp32 graphs, and fused fp16 ones for CUDA workers."""
    from pipelines.models.convert import convert_diffusers_folder

    cnet = entry.get("pipeline") == "controlnet"
    return [
        convert_diffusers_folder(
            diffusers_folder,
            work / variant / name,
            progress=progress.line,
            cnet=cnet,
            optimize="gpu" if variant == "cuda" else "none",
        )
        for variant in variants
    ]


def _config_folder(entry: Mapping[str, Any], settings: ConversionSettings) -> Path | None:
    """The diffusers config folder an entry's ``config`` names (a fine-tune's own configs), or None.

    onnx-web's ``config`` named an original LDM YAML file; single-file loading here takes the
    diffusers form of it: a folder with ``model_index.json`` and each part's config (a local
    folder below the import folder, or a hub id).
    """
    if not entry.get("config"):
        return None
    try:
        folder = fetch_source(entry["config"], settings.sources)
    except SourceError as err:
        raise ConversionFailed(err.code, f"config: {err}") from None
    if not (folder / "model_index.json").is_file():
        raise ConversionFailed(
            "bad_source", "config must be a diffusers config folder (with model_index.json)"
        )
    return folder


def _as_safetensors(source: Path, found: str, work: Path) -> Path:
    """A single-file checkpoint as a ``.safetensors`` file, which is what diffusers' loader reads
    safely: a pickle (allowed by then) is read with torch's weights-only loader and rewritten."""
    target = work / "checkpoint.safetensors"
    if found == "safetensors":
        if source.suffix == ".safetensors":
            return source
        target.symlink_to(source)
        return target
    state = _weights_only(source)
    nested = state.get("state_dict") if isinstance(state, dict) else None
    _save_tensors(nested if isinstance(nested, dict) else state, source, target)
    return target


def _family(entry: Mapping[str, Any]) -> str | None:
    """The single-file family an entry names (None: told by the checkpoint's keys)."""
    if entry.get("pipeline") == "txt2img-sdxl":
        return "sdxl"
    version = entry.get("version")
    if version in ("v2", "v2.1"):
        return "sd2-v" if entry.get("prediction") == "v_prediction" else "sd2"
    return "sd1" if version == "v1" else None


def _upscaler(
    section: str, name: str, entry: Mapping[str, Any], source: Path, found: str, work: Path
) -> Path:
    from pipelines.models.upscalers import FACE_SIZE, SWINIR_TILE, convert_upscaler, load_checkpoint

    _require(found in ("safetensors", "pickle"), source, found, section)
    try:
        loaded = load_checkpoint(source)
    except Exception as err:  # spandrel's own errors for an unknown architecture or a bad file
        raise ConversionFailed("bad_checkpoint", f"spandrel cannot read {source.name}: {err}") from None
    scale = entry.get("scale")
    if section == "upscaling" and scale is not None and int(scale) != loaded.scale:
        found_scale = f"{loaded.architecture} x{loaded.scale}"
        raise ConversionFailed("bad_checkpoint", f"the entry says x{scale}, the checkpoint is {found_scale}")
    # Face models and SwinIR trace at a fixed size (see pipelines.models.upscalers).
    fixed = SWINIR_TILE if "swinir" in loaded.architecture.lower() else None
    fixed = FACE_SIZE if loaded.purpose == "FaceSR" else fixed
    return convert_upscaler(loaded, work / f"{name}.onnx", fixed_size=fixed)


def _network_file(kind: str, name: str, source: Path, found: str, work: Path, allow_pickle: bool) -> Path:
    dest = work / kind / f"{name}.safetensors"
    dest.parent.mkdir(parents=True)
    if found == "safetensors":
        shutil.copyfile(source, dest)
        return dest
    _require(found == "pickle" and allow_pickle, source, found, kind)
    _save_tensors(_weights_only(source), source, dest)
    return dest


def _weights_only(source: Path) -> Any:
    """A pickle checkpoint read with torch's weights-only unpickler (tensors and containers only)."""
    import torch

    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch refuses anything but tensors and plain containers
        raise ConversionFailed("bad_checkpoint", f"{source.name} holds more than tensors: {err}") from None


def _save_tensors(state: Any, source: Path, dest: Path) -> None:
    """Write the tensors of a (nested) state dict as safetensors."""
    from safetensors.torch import save_file

    tensors = {key: value.contiguous() for key, value in _flat_tensors(state).items()}
    if not tensors:
        raise ConversionFailed("bad_checkpoint", f"{source.name} holds no tensors")
    save_file(tensors, str(dest))


def _flat_tensors(state: Any, prefix: str = "") -> dict[str, Any]:
    """The tensors of a (nested) state dict, keyed by their dotted paths."""
    import torch

    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        found: dict[str, Any] = {}
        for key, value in state.items():
            found.update(_flat_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
        return found
    return {}


def _unpack_model(archive: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack a zip of a converted model after checking every member; the folder holding it."""
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        if len(members) > ARCHIVE_MAX_MEMBERS:
            raise ConversionFailed("bad_source", f"the archive has over {ARCHIVE_MAX_MEMBERS} members")
        if sum(member.file_size for member in members) > max_bytes:
            raise ConversionFailed("too_large", f"the archive unpacks to over {max_bytes} bytes")
        for member in members:
            path, shown = PurePosixPath(member.filename), repr(member.filename[:100])
            if path.is_absolute() or ".." in path.parts or "\\" in member.filename:
                raise ConversionFailed("bad_source", f"the archive member {shown} leaves its folder")
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise ConversionFailed("bad_source", f"the archive member {shown} is a link")
            if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
                raise ConversionFailed("pickle_refused", f"the archive holds a pickle, {shown}")
        zipped.extractall(dest)
    indexes = sorted(dest.rglob("model_index.json"), key=lambda path: len(path.parts))
    if not indexes:
        raise ConversionFailed("bad_checkpoint", "the archive has no model_index.json: not a converted model")
    return indexes[0].parent


def _is_onnx_layout(folder: Path) -> bool:
    return (folder / "unet" / "model.onnx").is_file() or (folder / "cnet" / "model.onnx").is_file()


def _onnx_folder(folder: Path, dest: Path) -> Path:
    """A folder already in our ONNX layout, copied under the model's name."""
    if not _is_onnx_layout(folder):
        raise ConversionFailed("bad_checkpoint", "the folder has no unet/model.onnx: not a converted model")
    if folder.resolve() != dest.resolve():
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(".*"))
    return dest


def _require(ok: bool, source: Path, found: str, kind: str) -> None:
    if not ok:
        raise ConversionFailed("bad_checkpoint", f"{source.name} ({found}) cannot become a {kind} model")
