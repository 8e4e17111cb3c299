"""Load ``queries.sql``: every runtime statement on the jobs, workers and API key tables, each named
and described."""

from __future__ import annotations

import re
from importlib import resources

from sqlalchemy import TextClause, text

#: ``-- name: <name>`` then a ``-- <description>`` line, then the statement up to the next header.
_HEADER = re.compile(r"^-- name: (?P<name>\w+)\n-- (?P<description>\S.*)\n", re.MULTILINE)


def parse_queries(source: str) -> dict[str, str]:
    """Split a named-query file into ``{name: sql}``, refusing blocks without a description or SQL."""
    headers = list(_HEADER.finditer(source))
    if not headers or source[: headers[0].start()].strip():
        raise ValueError("queries.sql must start with a '-- name:' header and a description line")
    queries: dict[str, str] = {}
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(source)
        body = source[header.end() : end].strip().rstrip(";").strip()
        name = header["name"]
        if not body or name in queries:
            raise ValueError(f"query {name!r} is empty or defined twice")
        queries[name] = _without_comment_lines(body)
    return queries


def _without_comment_lines(sql: str) -> str:
    """The statement without its whole-line ``--`` comments and blank lines. The comments are for
    readers of ``queries.sql``; psycopg caches the parsed form of statements up to 4 KiB only, and
    the claim with its comments is longer, so it would be parsed again on every call."""
    lines = (line.rstrip() for line in sql.splitlines())
    return "\n".join(line for line in lines if line and not line.lstrip().startswith("--"))


SOURCE = resources.files(__package__).joinpath("queries.sql").read_text()
#: Every statement by name, ready for ``Connection.execute`` with named binds.
QUERIES: dict[str, TextClause] = {name: text(sql) for name, sql in parse_queries(SOURCE).items()}
