"""${message}

Say why the change is needed, what it locks and for how long on a live table.
"""

from __future__ import annotations

from migrations import sql_steps

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}

UPGRADE: tuple[str, ...] = ()
DOWNGRADE: tuple[str, ...] = ()

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)
