"""Database plumbing: engines from a URL, and applying the Alembic migrations in ``migrations/``.

Every process (api, worker, ``onnx-web migrate``, ``onnx-web run``, the test fixtures) builds its
engine through ``make_engine`` and migrates through ``upgrade_head``, so URL handling and timeouts
live in one place.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import NullPool

from service.breaker import Breaker
from service.config import DB_MAX_OVERFLOW, DB_POOL_SIZE, Config
from service.errors import ConfigError

#: Postgres refusing, timing out or dropping the connection (the pool's wait included): an outage
#: a client may retry, answered 503. Any other database error is a bug.
DATABASE_OUTAGES: tuple[type[sqlalchemy.exc.SQLAlchemyError], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)
DRIVER = "postgresql+psycopg"
#: Schemes people write in ``DATABASE_URL`` (Heroku-style ``postgres://`` included), all served by psycopg 3.
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"})
#: How long a thread waits for a pooled connection before the pool's TimeoutError.
POOL_TIMEOUT_S = 10.0
#: Shorter than gunicorn's 30 s worker timeout, so a stuck query becomes an error, not a killed worker.
STATEMENT_TIMEOUT_S = 10.0
#: libpq waits forever for a server that does not answer; an unreachable Postgres must be an error.
#: Every connection the service opens has it: the pools, the LISTEN connections, migrations.
CONNECT_TIMEOUT_S = 5
#: The longest an api thread holds one pooled connection (checkout to return) before the watchdog
#: shuts its socket: past the statement timeout, which a frozen server never enforces.
API_DEADLINE_S = STATEMENT_TIMEOUT_S + 2.0
#: After a connection ran into its deadline, checkouts fail at once for this long, then one probes.
OUTAGE_COOLDOWN_S = 5.0
#: A connect failing this close to ``CONNECT_TIMEOUT_S`` ran into it: the server did not answer.
CONNECT_SLACK_S = 0.5
#: The pool record's ``info`` key saying its connection was shut by the watchdog.
FIRED = "onnx_web_deadline_passed"
#: ``migrations/`` is installed beside ``service/``, in a checkout and in a wheel alike.
ALEMBIC_INI = Path(__file__).resolve().parent.parent / "migrations" / "alembic.ini"
NO_DATABASE_URL = (
    'DATABASE_URL is not set (see README "Running in production"; for the database of onnx-web run, '
    "copy DATABASE_URL from DATA_DIR/stack.json while it runs)"
)


log = logging.getLogger(__name__)


class SchemaBehind(ConfigError):
    """The database's schema is older than this code's migrations: the code would fail on it."""


def sqlalchemy_url(url: str | URL) -> URL:
    """Turn a ``postgres://``/``postgresql://`` URL into SQLAlchemy's psycopg 3 form.

    Query parameters pass through untouched, so a unix-socket URL such as
    ``postgresql://postgres:@/postgres?host=/tmp/pg`` keeps working. An empty URL (``DATABASE_URL``
    unset) is a ``ConfigError`` saying so, the one line every command prints for it.
    """
    if isinstance(url, str) and not url.strip():
        raise ConfigError(NO_DATABASE_URL)
    parsed = make_url(url)
    if parsed.drivername not in POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {parsed.drivername}://…")
    return parsed.set(drivername=DRIVER)


def libpq_url(url: str | URL) -> str:
    """The same database as a plain ``postgresql://`` URI, for direct psycopg connections."""
    return sqlalchemy_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def make_engine(
    url: str | URL,
    *,
    pool_size: int = DB_POOL_SIZE,
    max_overflow: int = DB_MAX_OVERFLOW,
    statement_timeout_s: float | None = STATEMENT_TIMEOUT_S,
    application_name: str = "onnx-web",
    deadline_s: float | None = None,
) -> Engine:
    """Build a pooled engine of at most ``pool_size + max_overflow`` connections; each is checked
    before use, so a restarted Postgres heals the pool.

    ``deadline_s`` bounds how long a thread may hold one connection, the check included
    (``ConnectionWatchdog``): the api's threads must answer 503, not wait on a frozen server.
    """
    connect_args: dict[str, str | int] = {
        "application_name": application_name,
        "connect_timeout": CONNECT_TIMEOUT_S,
    }
    if statement_timeout_s is not None:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    engine = sqlalchemy.create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT_S,
        # The watchdog checks each connection itself, under its deadline.
        pool_pre_ping=deadline_s is None,
        connect_args=connect_args,
    )
    sqlalchemy.event.listen(engine, "handle_error", _read_only_is_an_outage, retval=True)
    if deadline_s is not None:
        ConnectionWatchdog(deadline_s).attach(engine)
    return engine


def _read_only_is_an_outage(context: sqlalchemy.engine.ExceptionContext) -> BaseException | None:
    """A write refused as read-only is an outage (``OperationalError``), and ends its connection.

    Postgres refuses writes so on a standby and on a primary demoted by a failover; a session stays
    where it connected, so the pool drops the connection, and the next one may reach the new
    primary. Callers then wait it out or answer 503, as for any outage, where an ``InternalError``
    was a 500 in the api and ended the worker and the background loops that met it.
    """
    original = context.original_exception
    if not isinstance(original, psycopg.errors.ReadOnlySqlTransaction):
        return None
    context.is_disconnect = True
    return sqlalchemy.exc.OperationalError(context.statement, context.parameters, original)


def config_engine(config: Config, *, deadline_s: float | None = None) -> Engine:
    """The engine of a long-lived process (the api, a worker): ``config``'s database and pool bounds."""
    return make_engine(
        config.database_url,
        pool_size=config.db_pool_size,
        max_overflow=config.db_max_overflow,
        deadline_s=deadline_s,
    )


class ConnectionWatchdog:
    """Bound the time a thread holds a pooled connection, and fail fast while Postgres is not answering.

    A Postgres that accepts bytes but never answers (a frozen server, a network black hole, a
    stopped VM) leaves libpq waiting forever: ``connect_timeout`` covers only new connections and
    ``statement_timeout`` is enforced by the very server that is frozen. Each checkout here is armed
    with a deadline; a connection still out when it passes has its socket shut, so the waiting
    thread gets an ``OperationalError`` (a 503) and the pool discards the connection. For
    ``cooldown_s`` afterwards every checkout fails at once, instead of each waiting out a deadline
    of its own; then one checkout probes the server, and the first that succeeds ends the outage.

    The pool's own pre-ping is replaced by a ping made under the deadline.
    """

    def __init__(self, deadline_s: float, cooldown_s: float = OUTAGE_COOLDOWN_S) -> None:
        self.deadline_s = deadline_s
        #: Armed connections by their pool record: (deadline, DBAPI connection, pool record).
        self._armed: dict[int, tuple[float, Any, Any]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: A probe may first wait out its connect timeout, then its deadline.
        self.breaker = Breaker(cooldown_s, probe_s=deadline_s + CONNECT_TIMEOUT_S)

    def attach(self, engine: Engine) -> None:
        """Listen to ``engine``'s pool and start the watchdog's thread."""
        self._dialect = engine.dialect
        sqlalchemy.event.listen(engine, "do_connect", self._on_connect)
        sqlalchemy.event.listen(engine, "checkout", self._on_checkout)
        for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
            sqlalchemy.event.listen(engine, name, self._on_release)
        threading.Thread(target=self._watch, name="db-watchdog", daemon=True).start()

    def _admit(self) -> None:
        """Raise while an outage is known; after its cooldown, one thread at a time probes."""
        if not self.breaker.admit():
            raise psycopg.OperationalError(
                f"the database did not answer within {self.deadline_s:g} s; not asking it again yet"
            )

    def _on_connect(self, dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        """Connect (as the pool would) once admitted; a connect that ran into its timeout, or a
        probe's that failed at all, starts a cooldown, as a shut connection does."""
        self._admit()
        started = time.monotonic()
        try:
            return dialect.connect(*cargs, **cparams)
        except psycopg.Error:
            if self.breaker.open or time.monotonic() - started >= CONNECT_TIMEOUT_S - CONNECT_SLACK_S:
                self.breaker.failed()
            raise

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self._admit()
        with self._lock:
            record.info.pop(FIRED, None)
            self._armed[id(record)] = (time.monotonic() + self.deadline_s, dbapi_connection, record)
            self._changed.notify()
        try:
            # SQLAlchemy's own pre-ping (SELECT 1 outside a transaction), here under the deadline.
            self._dialect.do_ping(dbapi_connection)
        except psycopg.Error as err:
            if record.info.get(FIRED):
                raise psycopg.OperationalError(
                    f"the database did not answer within {self.deadline_s:g} s"
                ) from err
            # Closed since its last use (a restarted server): the pool connects afresh.
            raise sqlalchemy.exc.DisconnectionError(str(err)) from err
        self.breaker.succeeded()

    def _on_release(self, dbapi_connection: Any, record: Any, *rest: Any) -> None:
        with self._lock:
            self._armed.pop(id(record), None)

    def _watch(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                due = [key for key, (deadline, _, _) in self._armed.items() if deadline <= now]
                for key in due:
                    _, connection, record = self._armed.pop(key)
                    record.info[FIRED] = True
                    # Shut under the lock: a released connection is never shut, nor its reused fd.
                    self._shut(connection)
                    self.breaker.failed()
                if due:
                    log.warning(
                        "database connection past its deadline; shut",
                        extra={"action": "database", "count": len(due), "deadline_s": self.deadline_s},
                    )
                nearest = min((deadline for deadline, _, _ in self._armed.values()), default=now + 1.0)
                self._changed.wait(max(0.01, nearest - now))

    @staticmethod
    def _shut(connection: Any) -> None:
        """Shut the connection's socket both ways: a thread waiting on it wakes to an error."""
        try:
            if connection.closed:
                return
            sock = socket.socket(fileno=os.dup(connection.fileno()))
        except (OSError, psycopg.Error):
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()


def alembic_config(connection: sqlalchemy.Connection) -> AlembicConfig:
    """The settings of ``migrations/alembic.ini``, bound to an open connection for ``env.py``."""
    config = AlembicConfig(ALEMBIC_INI)
    config.attributes["connection"] = connection
    return config


def upgrade_head(url: str | URL, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (``onnx-web migrate`` and the test fixtures)."""
    _run_alembic(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str | URL, revision: str = "base") -> None:
    """Downgrade the database at ``url`` to ``revision``; ``base`` removes every object the
    migrations made."""
    _run_alembic(url, lambda config: command.downgrade(config, revision))


def migration_scripts() -> ScriptDirectory:
    """This code's migrations (``migrations/versions``), read from the files alone."""
    return ScriptDirectory.from_config(AlembicConfig(ALEMBIC_INI))


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, as Alembic recorded it; None when it was never migrated.

    Alembic owns its version table: it looks the table up, then reads its one row.
    """
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current_schema(engine: Engine) -> None:
    """Raise ``SchemaBehind`` when the database lacks migrations this code has (api and worker start).

    A revision this code does not know was made by newer code (a rolling upgrade migrates before
    the old processes are gone), whose migrations keep the old code working: that passes.
    """
    scripts = migration_scripts()
    head = scripts.get_current_head()
    current = current_revision(engine)
    known = {script.revision for script in scripts.walk_revisions()}
    if current == head or (current is not None and current not in known):
        return
    found = f"at {current}" if current is not None else "empty (never migrated)"
    raise SchemaBehind(
        f"the database schema is {found}, this code needs {head}: run onnx-web migrate "
        "(for onnx-web run: restart it, its start migrates)"
    )


def create_database(admin_url: str | URL, name: str) -> str:
    """Create database ``name`` on the server of ``admin_url`` unless it exists; return its URL."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(admin_url, name)


def database_url(url: str | URL, name: str) -> str:
    """The URL of database ``name`` on the same server as ``url`` (same credentials and socket)."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _run_alembic(url: str | URL, step: Callable[[AlembicConfig], None]) -> None:
    # NullPool: a migration is a one-off connection, nothing should stay open afterwards.
    engine = sqlalchemy.create_engine(
        sqlalchemy_url(url), poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
    )
    try:
        with engine.begin() as connection:
            step(alembic_config(connection))
    finally:
        engine.dispose()
