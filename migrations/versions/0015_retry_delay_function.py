"""``job_retry_delay``: the one definition of the backoff between a job's attempts.

``finish_failed`` (a failed attempt that may be retried) and ``rescue_expired`` (a job whose worker
stopped heartbeating, from its second rescue) both put a job back with ``retry_at`` in the future
(0014). Each spelled the delay out; they now call this function, so the two cannot drift apart:
``first_s`` after the first failure, doubling after each one up to ``max_s``, half of it random so
that jobs failed together by one outage do not all come back at once. Creating a function takes no
lock on ``jobs``.
"""

from __future__ import annotations

from migrations import sql_steps

revision = "0015"
down_revision = "0014"

UPGRADE = (
    """
    CREATE FUNCTION job_retry_delay(failures integer, first_s float8, max_s float8) RETURNS interval
    LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
        SELECT make_interval(secs => least(max_s, first_s * power(2, greatest(failures, 1) - 1))
            * (0.5 + random() / 2))
    $$
    """,
)
DOWNGRADE = ("DROP FUNCTION job_retry_delay(integer, float8, float8)",)

upgrade, downgrade = sql_steps(UPGRADE, DOWNGRADE)
