"""The Postgres schema as ordered Alembic migrations; apply them with ``onnx-web migrate``."""

from __future__ import annotations

from collections.abc import Iterable


def execute_all(statements: Iterable[str]) -> None:
    """Run a migration's statements in order, in the migration's transaction."""
    from alembic import op

    for statement in statements:
        op.execute(statement)
