"""Wildcard lists and ``__name__`` expansion in prompts (contract §9.2, §11.3).

Lists live under ``<models>/wildcard/``:

- ``**/*.txt``: one entry per line, trimmed; blank lines and lines starting with ``#`` are skipped.
  The name is the path below ``wildcard/`` without its extension (``colors/warm``). Several files
  with the same name concatenate.
- ``**/*.json``, ``**/*.yaml``, ``**/*.yml``: nested objects; every list of strings becomes a
  wildcard named ``<file path without extension>/<key>/<subkey>…``. Other values are skipped with a
  warning, and so is a file that does not parse.

Names always use ``/``, on every OS; a prompt may spell the separator ``\\`` (as onnx-web on
Windows does) and still find the list.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

#: ``__name__`` where name is letters, digits, ``_``, ``-``, ``/`` or ``\``. Non-greedy, so that
#: ``__a__ __b__`` finds two wildcards rather than one called ``a__ __b``.
WILDCARD_PATTERN = re.compile(r"__([\w/\\-]+?)__")
TEXT_SUFFIXES = (".txt",)
STRUCTURED_SUFFIXES = (".json", ".yaml", ".yml")
#: How many ``__name__`` a text may replace, nested ones included. Every draw takes an entry out of
#: its list, so expansion always ends; this bounds lists whose entries name each other, where the
#: text would grow with every entry of every list before it did.
MAX_WILDCARD_REPLACEMENTS = 1000

Wildcards = Mapping[str, tuple[str, ...]]


def load_wildcards(folder: Path) -> dict[str, tuple[str, ...]]:
    """Read every wildcard list below ``folder``; a missing folder means no wildcards."""
    lists: dict[str, list[str]] = {}
    if not folder.is_dir():
        return {}
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    # Text files first, then structured ones, each in path order, so the listing order is stable.
    for path in files:
        lines = _read_lines(path) if path.suffix.lower() in TEXT_SUFFIXES else None
        if lines is not None:
            lists.setdefault(_name_of(folder, path), []).extend(lines)
    for path in files:
        if path.suffix.lower() in STRUCTURED_SUFFIXES:
            for name, entries in _read_structured(path, _name_of(folder, path)):
                lists.setdefault(name, []).extend(entries)
    return {name: tuple(entries) for name, entries in lists.items()}


def expand_wildcards(text: str, wildcards: Wildcards, seed: int) -> str:
    """Replace each ``__name__`` in ``text`` with a random entry of that list, seeded by ``seed``.

    As in onnx-web, the first ``__name__`` is replaced and the text is searched again from the
    start, so an entry that holds another ``__name__`` expands too, before the wildcards after it.
    Entries are drawn without replacement within one text, so ``__color__ and __color__`` names two
    different colours; each draw swaps the chosen entry with the last and takes the last, which is
    onnx-web's order, so a seed picks the same entries there and here. Unknown names become an
    empty string, as in onnx-web.

    Raises:
        ValueError: a wildcard is used more often than its list has entries, or the text needs
            more than ``MAX_WILDCARD_REPLACEMENTS`` replacements (lists that refer to each other).
    """
    rng = random.Random(seed)
    remaining: dict[str, list[str]] = {}
    replacements = 0
    match = WILDCARD_PATTERN.search(text)
    while match is not None:
        if replacements == MAX_WILDCARD_REPLACEMENTS:
            raise ValueError(
                f"wildcards need more than {MAX_WILDCARD_REPLACEMENTS} replacements; "
                "do the lists refer to each other?"
            )
        entry = _draw(match.group(1).replace("\\", "/"), wildcards, remaining, rng)
        text = text[: match.start()] + entry + text[match.end() :]
        replacements += 1
        match = WILDCARD_PATTERN.search(text)
    return text


def _draw(name: str, wildcards: Wildcards, remaining: dict[str, list[str]], rng: random.Random) -> str:
    """One entry of list ``name`` not drawn before from ``remaining``, or ``""`` for an unknown name."""
    if name not in wildcards:
        return ""
    pool = remaining.setdefault(name, list(wildcards[name]))
    if not pool:
        raise ValueError(f"wildcard __{name}__ is used more often than its {len(wildcards[name])} entries")
    # Swap then pop, as onnx-web's pop_random does: popping at the index would leave the rest in
    # another order, and a second draw from the list would pick a different entry for the same seed.
    index = rng.randrange(len(pool))
    pool[index], pool[-1] = pool[-1], pool[index]
    return pool.pop()


def _name_of(folder: Path, path: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _read_lines(path: Path) -> list[str] | None:
    """The entries of a text file, or ``None`` when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        logger.warning("skipping wildcard file %s: %s", path, err)
        return None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _read_structured(path: Path, prefix: str) -> list[tuple[str, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        logger.warning("skipping wildcard file %s: %s", path, err)
        return []
    if not isinstance(data, dict):
        logger.warning("skipping wildcard file %s: the top level is not an object", path)
        return []
    return list(_walk(data, prefix))


def _walk(node: Mapping[Any, Any], prefix: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for key, value in node.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            found.extend(_walk(value, name))
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            found.append((name, [item.strip() for item in value if item.strip()]))
        else:
            logger.warning("skipping wildcard %s: not a list of strings", name)
    return found
