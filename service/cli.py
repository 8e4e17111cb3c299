"""``onnx-web``: one command with a subcommand per process of the service.

onnx-web run       the whole service locally: embedded Postgres and S3, api, one worker
onnx-web api       the api under gunicorn (production; needs DATABASE_URL and S3_*)
onnx-web worker    a worker process for one device (--device N: the CUDA device)
onnx-web migrate   apply database migrations
onnx-web gc        delete output objects no job records (crashed or fenced attempts)
onnx-web convert   build demo models or convert checkpoints to ONNX (--optimize gpu: fused fp16)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.config import Config

log = logging.getLogger("service.cli")


def _run(args: argparse.Namespace) -> int:
    from service import logs
    from service.stack import LocalStack, StackOptions, cuda_device_count

    gpus = cuda_device_count() if args.workers_per_gpu is not None else 0
    if args.workers_per_gpu is not None and gpus == 0:
        sys.exit(
            "onnx-web run: --workers-per-gpu needs CUDA devices, and torch found none "
            "(use --workers for CPU workers)"
        )
    logs.configure("INFO", "text")

    def on_terminate(signum: int, frame: object) -> None:
        # SIGTERM (a supervisor, `kill`) stops everything as Ctrl-C does, children included.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_terminate)
    data_dir = Path(args.data_dir).resolve()
    stack = LocalStack(
        StackOptions(
            data_dir=data_dir,
            port=args.port,
            host=args.host,
            workers=args.workers,
            models_path=Path(args.models).resolve() if args.models else None,
            build_demo=not args.no_demo,
            workers_per_gpu=args.workers_per_gpu,
            gpus=gpus,
        )
    )
    try:
        stack.start()
        print(
            f"\nonnx-web is running: {stack.url}/  (data in {data_dir}; Ctrl-C stops everything)\n",
            flush=True,
        )
        return stack.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C or SIGTERM (a supervisor forwarding it) must not cut the shutdown short
        # and leave Postgres or S3 running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


def _api(args: argparse.Namespace) -> int:
    config = Config.from_env()
    bind = f"{args.host or config.host}:{args.port or config.port}"
    workers = str(args.workers or config.api_workers)
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        workers,
        "--timeout",
        "60",
        "--graceful-timeout",
        "20",
        "--worker-tmp-dir",
        tempfile.gettempdir(),
        "service.app:get_app()",
    ]
    os.execvp(argv[0], argv)


def worker_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The worker's ``Config``: the environment, with ``--device`` over ``ONNX_WEB_DEVICE``."""
    overrides = {} if args.device is None else {"device": args.device}
    return Config.from_env(environ, **overrides)


def _worker(args: argparse.Namespace) -> int:
    from service import logs
    from service.db import make_engine
    from service.jobs.notify import Notifier
    from service.jobs.store import JobStore
    from service.storage import from_config
    from service.worker import Worker, worker_sessions

    config = worker_config(args)
    logs.configure(config.log_level, config.log_format)
    engine = make_engine(config.database_url)
    store = from_config(config)
    store.ensure_bucket()
    worker = Worker(
        config,
        jobs=JobStore(engine, lease_s=config.lease_s, affinity_window_s=config.affinity_window_s),
        store=store,
        sessions=worker_sessions(config),
        notifier=Notifier(config.database_url),
    )
    worker.install_signal_handlers()
    worker.warm_up()
    worker.run(max_jobs=args.max_jobs)
    return 0


def _gc(args: argparse.Namespace) -> int:
    from service import logs
    from service.db import make_engine
    from service.gc import collect_orphans
    from service.jobs.store import JobStore
    from service.storage import from_config

    config = Config.from_env()
    logs.configure(config.log_level, config.log_format)
    jobs = JobStore(
        make_engine(config.database_url), lease_s=config.lease_s, affinity_window_s=config.affinity_window_s
    )
    found = collect_orphans(jobs, from_config(config), dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{found.objects} output objects of {found.jobs} jobs; "
        f"{found.orphans} orphaned, {verb} {found.orphans}"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service.db import upgrade_head

    config = Config.from_env()
    upgrade_head(config.database_url)
    print("database is at the latest migration")
    return 0


def _device_index(value: str) -> int:
    """``--device``: a CUDA device index, 0 or more."""
    if not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a CUDA device index (0, 1, ...), got {value!r}")
    return int(value)


def _positive_count(value: str) -> int:
    """A count of processes, 1 or more."""
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``onnx-web`` argument parser with every subcommand."""
    from pipelines.models.cli import add_convert_arguments, run_convert

    parser = argparse.ArgumentParser(
        prog="onnx-web", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the whole service locally on embedded Postgres and S3")
    run.add_argument("--port", type=int, default=5000, help="api port (default 5000, as onnx-web)")
    run.add_argument("--host", default="127.0.0.1", help="api address (default 127.0.0.1)")
    run.add_argument(
        "--data-dir", default="var", help="where Postgres, S3 and demo models live (default ./var)"
    )
    run.add_argument("--models", help="models folder (default DATA_DIR/models, demo models built there)")
    run.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    run.add_argument(
        "--workers-per-gpu",
        type=_positive_count,
        metavar="K",
        help="start K CUDA workers on each CUDA device torch finds, instead of --workers",
    )
    run.add_argument("--no-demo", action="store_true", help="do not build demo models")
    run.set_defaults(func=_run)

    api = commands.add_parser(
        "api", help="serve the api with gunicorn (reads DATABASE_URL, S3_*, ONNX_WEB_*)"
    )
    api.add_argument("--host", help="bind address (default ONNX_WEB_HOST or 0.0.0.0)")
    api.add_argument("--port", type=int, help="port (default ONNX_WEB_PORT or 5000)")
    api.add_argument(
        "--workers", type=int, help="gunicorn worker processes (default ONNX_WEB_API_WORKERS or 2)"
    )
    api.set_defaults(func=_api)

    worker = commands.add_parser("worker", help="claim and run jobs on this machine's device")
    worker.add_argument("--max-jobs", type=int, help="exit after this many jobs (default: run until SIGTERM)")
    worker.add_argument(
        "--device",
        type=_device_index,
        metavar="N",
        help="the CUDA device this worker runs on (default ONNX_WEB_DEVICE or 0)",
    )
    worker.set_defaults(func=_worker)

    migrate = commands.add_parser("migrate", help="apply database migrations to DATABASE_URL")
    migrate.set_defaults(func=_migrate)

    gc = commands.add_parser(
        "gc", help="delete output objects of crashed or fenced attempts (run on a schedule)"
    )
    gc.add_argument("--dry-run", action="store_true", help="count the orphans without deleting them")
    gc.set_defaults(func=_gc)

    add_convert_arguments(commands)
    commands.choices["convert"].set_defaults(func=run_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnx-web`` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
