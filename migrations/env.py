"""Alembic environment: run the migrations on one connection, serialized and with short timeouts.

``service.db.migrate`` hands in an open connection through ``config.attributes``; the ``alembic``
command line gets one from ``DATABASE_URL``.
"""

from __future__ import annotations

import os

import sqlalchemy
from alembic import context
from sqlalchemy.pool import NullPool

from service.db import sqlalchemy_url

#: Arbitrary constant key of the advisory lock that serializes concurrent migrators
#: (several api pods starting at once, or a Job racing ``make run``).
MIGRATION_LOCK_KEY = 0x6F6E6E78
#: Fail fast instead of queueing behind live traffic: a migration that cannot get its lock in
#: a few seconds is retried by the operator, it does not stall every request behind it.
LOCK_TIMEOUT = "4s"
STATEMENT_TIMEOUT = "5s"


def run_migrations(connection: sqlalchemy.Connection) -> None:
    """Take the migration lock, set the timeouts, and apply the pending revisions in one transaction."""
    # Taken before the timeouts, so a second migrator waits for the first one instead of failing.
    connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.execute(
        sqlalchemy.text(
            "SELECT set_config('lock_timeout', :lock, true), set_config('statement_timeout', :stmt, true)"
        ),
        {"lock": LOCK_TIMEOUT, "stmt": STATEMENT_TIMEOUT},
    )
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Use the connection handed in by ``service.db``, else open one to ``DATABASE_URL``."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = sqlalchemy.create_engine(sqlalchemy_url(os.environ["DATABASE_URL"]), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            run_migrations(connection)
    finally:
        engine.dispose()


main()
