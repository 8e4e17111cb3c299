"""A worker or an api started on a database whose schema is behind the code stops at once, with one
line saying which migration is missing and what to run, instead of failing on every query."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from psycopg import sql

from service.config import CONFIG_ERROR_EXIT
from service.db import (
    SchemaBehind,
    create_database,
    downgrade,
    libpq_url,
    make_engine,
    migration_scripts,
    require_current_schema,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HEAD = migration_scripts().get_current_head()
BEFORE_HEAD = migration_scripts().get_revision(HEAD).down_revision  # type: ignore[union-attr]


def behind_message(found: str) -> str:
    return f"the database schema is {found}, this code needs {HEAD}: run onnx-web migrate"


@pytest.fixture
def behind_url(database_url: str) -> str:
    """The test's database with the newest migration undone, as if the code were pulled after it."""
    downgrade(database_url, str(BEFORE_HEAD))
    return database_url


@pytest.fixture
def unmigrated_url(postgres_admin_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield create_database(postgres_admin_url, name)
    with psycopg.connect(libpq_url(postgres_admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def check(url: str) -> None:
    engine = make_engine(url)
    try:
        require_current_schema(engine)
    finally:
        engine.dispose()


def test_a_database_at_head_passes(database_url: str) -> None:
    check(database_url)


def test_a_database_behind_head_names_both_revisions(behind_url: str) -> None:
    with pytest.raises(SchemaBehind, match=behind_message(f"at {BEFORE_HEAD}")):
        check(behind_url)


def test_a_database_never_migrated_is_behind(unmigrated_url: str) -> None:
    with pytest.raises(SchemaBehind, match=behind_message(r"empty \(never migrated\)")):
        check(unmigrated_url)


def test_a_revision_of_newer_code_passes(database_url: str) -> None:
    """A rolling upgrade migrates first; the old processes keep running until replaced."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    check(database_url)


@pytest.mark.parametrize("command", ["worker", "api"])
def test_worker_and_api_on_a_schema_behind_exit_with_one_line(behind_url: str, command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", command, *(["--port", "9"] if command == "api" else [])],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "DATABASE_URL": behind_url,
            "S3_ENDPOINT": "127.0.0.1:9",
            "S3_ACCESS_KEY": "unused",
            "S3_SECRET_KEY": "unused",
        },
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == CONFIG_ERROR_EXIT, done.stderr
    assert done.stderr == f"onnx-web {command}: " + (
        f"{behind_message(f'at {BEFORE_HEAD}')} (for onnx-web run: restart it, its start migrates)\n"
    )
