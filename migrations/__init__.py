"""The Postgres schema as ordered Alembic migrations; apply them with ``onnx-web migrate``.

Each migration is its SQL: ``UPGRADE`` and ``DOWNGRADE`` statement lists, turned into Alembic's
``upgrade`` and ``downgrade`` by ``sql_steps``. ``revision`` and ``down_revision`` order them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence


def execute_all(statements: Iterable[str]) -> None:
    """Run a migration's statements in order, in the migration's transaction."""
    from alembic import op

    for statement in statements:
        op.execute(statement)


def sql_steps(
    upgrade: Sequence[str], downgrade: Sequence[str]
) -> tuple[Callable[[], None], Callable[[], None]]:
    """A migration's ``upgrade`` and ``downgrade``: each runs its statements in order."""
    return (lambda: execute_all(upgrade)), (lambda: execute_all(downgrade))
