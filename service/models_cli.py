"""``onnx-web models``: publish converted models to the model store, list and withdraw them.

Reads ``DATABASE_URL`` and the ``S3_*`` settings like every other process; ``publish`` shows a
progress bar of the bytes uploaded. ``onnx-web convert diffusers --publish`` ends in the same
``publish``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.config import DOWNLOAD_MAX_BYTES, Config, parse_bytes
from service.jobs.models import MODEL_KINDS, ModelRecords

#: What converting here imports, from the ``worker`` extra (``models import``).
CONVERT_MODULES = ("tqdm", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "safetensors")


def add_models_arguments(commands: Any) -> None:
    """Add ``models publish``, ``models list`` and ``models delete`` to the command line."""
    models = commands.add_parser("models", help="publish models to the model store workers pull from")
    actions = models.add_subparsers(dest="models_action", required=True)
    publish = actions.add_parser(
        "publish", help="upload a converted model (a folder or a file of a models folder) and register it"
    )
    publish.add_argument(
        "source", type=Path, help="e.g. models/stable-diffusion-onnx-v1-5 or models/lora/x.safetensors"
    )
    publish.add_argument("--name", help="name jobs use (default: the folder's name, the file's stem)")
    publish.add_argument("--kind", choices=MODEL_KINDS, help="default: told by the name or the folder")
    publish.add_argument("--label", help="the label the GUI shows (en)")
    actions.add_parser("list", help="the ready models of the store")
    delete = actions.add_parser("delete", help="withdraw a model; workers drop their copies at next use")
    delete.add_argument("name")
    imported = actions.add_parser(
        "import",
        help="convert an extras document's entries here, from any source a conversion job takes, "
        "into the models folder (or the store with --publish)",
    )
    imported.add_argument("extras", type=Path, help="an extras document (JSON or YAML)")
    imported.add_argument("--only", action="append", metavar="NAME", help="this entry only (repeatable)")
    imported.add_argument(
        "--models", type=Path, default=Path("models"), help="models folder (default: %(default)s)"
    )
    imported.add_argument(
        "--import-root",
        type=Path,
        default=Path("."),
        help="the folder local sources are read from, and never outside of (default: %(default)s)",
    )
    imported.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickle checkpoints (.ckpt, .pt, .pth, .bin): they can run code; only for files you trust",
    )
    imported.add_argument(
        "--max-bytes", type=parse_bytes, default=DOWNLOAD_MAX_BYTES, help="largest download (e.g. 20G)"
    )
    imported.add_argument(
        "--publish", action="store_true", help="upload to the model store (DATABASE_URL, S3_*) instead"
    )
    models.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    """Run a parsed ``models`` command; returns the process exit status."""
    from service import logs
    from service.cli import require_extra
    from service.db import make_engine
    from service.modelstore import withdraw
    from service.storage import from_config

    if args.models_action == "import":
        require_extra("worker", CONVERT_MODULES)
    if args.models_action == "import" and not args.publish:
        return import_entries(args, store=None, records=None)
    config = Config.from_env()
    logs.configure(config.log_level, "text")
    records = ModelRecords(make_engine(config.database_url))
    if args.models_action == "list":
        for model in records.ready():
            print(f"{model.kind:<10} {model.name:<40} {model.size_bytes:>14} {model.content_hash[:12]}")
        return 0
    store = from_config(config)
    store.ensure_bucket()
    if args.models_action == "import":
        return import_entries(args, store=store, records=records)
    if args.models_action == "delete":
        removed = withdraw(args.name, store, records)
        print(f"withdrew {removed} version(s) of {args.name}")
        return 0 if removed else 1
    return publish_folder(args.source, store, records, name=args.name, kind=args.kind, label=args.label)


def convert_and_publish(run_convert: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``onnx-web convert``, then, with ``--publish``, ``models publish`` of the converted folder."""
    source = getattr(args, "src", None)
    if source is not None and not source.exists():
        # Else a name that is no folder is taken for a hub id, and fails on the network.
        print(f"cannot convert {source}: no such file or folder", file=sys.stderr)
        return 2
    status = run_convert(args)
    if status or not getattr(args, "publish", False):
        return status
    from service.db import make_engine
    from service.storage import from_config

    config = Config.from_env()
    records = ModelRecords(make_engine(config.database_url))
    store = from_config(config)
    store.ensure_bucket()
    return publish_folder(args.models / args.name, store, records, name=None, kind="diffusion", label=None)


def publish_folder(
    source: Path, store: Any, records: ModelRecords, *, name: str | None, kind: str | None, label: str | None
) -> int:
    """Publish one model with a progress bar on stderr; prints its name and content hash."""
    from service.modelstore import publish

    try:
        with _progress_bar(f"publish {source.name}") as progress:
            done = publish(
                source,
                store,
                records,
                name=name,
                kind=kind,
                labels={"en": label} if label else None,
                progress=progress,
            )
    except (ValueError, FileNotFoundError) as err:
        print(f"cannot publish {source}: {err}", file=sys.stderr)
        return 2
    verb = "published" if done.uploaded else "already published"
    print(f"{verb} {done.model.name} {done.model.content_hash}")
    return 0


def import_entries(args: argparse.Namespace, *, store: Any, records: ModelRecords | None) -> int:
    """``models import``: each selected entry downloaded and converted here, then installed in the
    models folder or published; a failed entry is reported and the others go on (exit status 1)."""
    from service.conversion import ConversionFailed, ConversionSettings, StageReport, convert_entry
    from service.extras import conversion_spec
    from service.extras_document import ExtrasInvalid, parse_document, validate_document
    from service.sources import SourceSettings

    try:
        document = validate_document(parse_document(args.extras.read_bytes()))
    except (OSError, ExtrasInvalid) as err:
        problems = getattr(err, "problems", ())
        for problem in problems or [err]:
            print(f"{args.extras}: {problem}", file=sys.stderr)
        return 2
    wanted = set(args.only or ())
    entries = [
        entry
        for entry in document.entries
        if not wanted or entry.name in wanted or entry.entry["name"] in wanted
    ]
    if wanted and not entries:
        print(f"no entry named {', '.join(sorted(wanted))} in {args.extras}", file=sys.stderr)
        return 2
    cache = args.models / ".cache"
    settings = ConversionSettings(
        sources=SourceSettings(
            cache=cache,
            import_root=args.import_root,
            max_bytes=args.max_bytes,
            allow_pickle=args.allow_pickle,
            civitai_token=os.environ.get("ONNX_WEB_CIVITAI_TOKEN") or None,
        ),
        work=cache / "convert",
        progress_interval_s=0.1,
    )
    failed = 0
    for entry in entries:
        spec = conversion_spec(entry)
        work = settings.work / entry.name
        with _StageBars(entry.name) as bars:
            report = StageReport(entry.name, lambda progress: None, bars.record, lambda: None, 0.1)
            try:
                (converted,) = convert_entry(spec, work, settings, report)
            except ConversionFailed as err:
                print(f"cannot convert {entry.field} ({entry.name}): {err.code}: {err}", file=sys.stderr)
                failed += 1
                continue
        try:
            if store is not None and records is not None:
                status = publish_folder(
                    converted, store, records, name=entry.name, kind=entry.kind, label=entry.label
                )
                failed += status != 0
            else:
                print(install(converted, work, args.models))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def install(converted: Path, work: Path, models: Path) -> Path:
    """Move a converted model from its work folder to the same place below ``models``, replacing
    what was there only once the new one is in place beside it."""
    dest = models / converted.relative_to(work)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(f".{dest.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.move(converted, staged)
    if dest.is_dir():
        old = dest.with_name(f".{dest.name}.old")
        dest.rename(old)
        staged.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staged.replace(dest)
    return dest


class _StageBars:
    """One progress bar per conversion stage (bytes while downloading, components while converting)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bar: Any = None
        self.stage: str | None = None

    def __enter__(self) -> _StageBars:
        return self

    def record(self, loading: Any) -> None:
        if loading is None:
            return
        from tqdm import tqdm

        if loading["stage"] != self.stage:
            self.close()
            self.stage = loading["stage"]
            unit = "B" if self.stage != "convert" else " parts"
            self.bar = tqdm(
                desc=f"{self.name}: {self.stage}", unit=unit, unit_scale=unit == "B", file=sys.stderr
            )
        if loading["total"]:
            self.bar.total = loading["total"]
        self.bar.update(loading["current"] - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __exit__(self, *exc: object) -> None:
        self.close()


class _progress_bar:
    """A tqdm bar of bytes (tqdm comes with the worker's libraries); plain lines without it."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.bar: Any = None

    def __enter__(self) -> Callable[[int, int], None]:
        try:
            from tqdm import tqdm
        except ImportError:
            return lambda done, total: print(f"{self.title}: {done}/{total} bytes", file=sys.stderr)

        def update(done: int, total: int) -> None:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.title, unit="B", unit_scale=True, file=sys.stderr)
            self.bar.update(done - self.bar.n)

        return update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
