"""``onnx-web models``: publish converted models to the model store, list and withdraw them.

Reads ``DATABASE_URL`` and the ``S3_*`` settings like every other process; ``publish`` shows a
progress bar of the bytes uploaded. ``onnx-web convert diffusers --publish`` ends in the same
``publish``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.config import Config
from service.jobs.models import MODEL_KINDS, ModelRecords


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
    models.set_defaults(func=run_models)


def run_models(args: argparse.Namespace) -> int:
    """Run a parsed ``models`` command; returns the process exit status."""
    from service import logs
    from service.db import make_engine
    from service.modelstore import withdraw
    from service.storage import from_config

    config = Config.from_env()
    logs.configure(config.log_level, "text")
    records = ModelRecords(make_engine(config.database_url))
    if args.models_action == "list":
        for model in records.ready():
            print(f"{model.kind:<10} {model.name:<40} {model.size_bytes:>14} {model.content_hash[:12]}")
        return 0
    store = from_config(config)
    store.ensure_bucket()
    if args.models_action == "delete":
        removed = withdraw(args.name, store, records)
        print(f"withdrew {removed} version(s) of {args.name}")
        return 0 if removed else 1
    return publish_folder(args.source, store, records, name=args.name, kind=args.kind, label=args.label)


def convert_and_publish(run_convert: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``onnx-web convert``, then, with ``--publish``, ``models publish`` of the converted folder."""
    status = run_convert(args)
    if status or not getattr(args, "publish", False):
        return status
    from service.db import make_engine
    from service.storage import from_config

    config = Config.from_env()
    store = from_config(config)
    store.ensure_bucket()
    records = ModelRecords(make_engine(config.database_url))
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
