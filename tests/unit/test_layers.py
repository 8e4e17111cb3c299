"""The layering rules of ``docs/architecture.md``, checked on the source.

Each rule is a walker over the code (``ast`` for what a file says, a fresh interpreter for what an
import really loads) and a test that runs it on the repository. The ``test_walker_*`` tests plant a
violation in a throwaway tree under ``tmp_path`` and prove the walker reports it: a rule that cannot
fail guards nothing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "pipelines", "bench", "migrations")
#: The worker's libraries (``[project.optional-dependencies] worker``): the api image has none of them.
WORKER_LIBRARIES = frozenset(
    {"torch", "onnxruntime", "diffusers", "transformers", "onnx", "safetensors", "tqdm"}
)
OPENCV = "cv2"
#: What an api process imports: the app, and the modules a submission goes through.
API_MODULES = ("service.app", "service.resources.submit", "service.params", "service.chains")
#: Builds the app the way ``get_app`` does, from parts that need no running service.
BUILD_APP = """
import tempfile
from pathlib import Path

from pipelines.models.registry import ModelRegistry
from service import db, logs, storage  # what get_app imports when gunicorn calls it
from service.app import create_app
from service.config import Config
from service.jobs.store import JobStore

models = Path(tempfile.mkdtemp())
config = Config(models_path=models, bundle_path=models / "bundle")
# Engines connect on first use; building the app runs no query.
jobs = JobStore(db.make_engine("postgresql://api@127.0.0.1:1/none"), lease_s=30.0, affinity_window_s=5.0)
create_app(config, jobs=jobs, store=storage.MemoryObjectStore(), registry=ModelRegistry(models, ()))
"""

#: Where SQL may appear outside ``service/jobs/``, by file and function, and why.
SQL_EXCEPTIONS: Mapping[tuple[str, str], str] = {
    ("service/db.py", "create_database"): (
        "provisions the database itself on the server's admin connection (onnx-web run, bench, test "
        "fixtures): it reads pg_database and runs CREATE DATABASE, which cannot run inside a migration "
        "or a transaction, and touches no table, so it belongs to no table owner"
    ),
}
#: The one owner of runtime SQL; ``migrations/``, the schema itself, is not walked.
SQL_OWNERS = ("service/jobs/",)
SQL_CHECKED = ("service", "pipelines", "bench")

#: A string that opens an SQL statement, shaped tightly enough that prose ("select a model from the
#: list.") does not match: keywords followed by identifiers, operators or clauses where SQL has them.
_NAME = r"""[\w"{}]+(?:\.[\w"{}]+)?"""
SQL_STATEMENT = re.compile(
    rf"""\A\s*(?:
        SELECT\s+(?:\*\s+FROM\b|DISTINCT\b|\d+\s*(?:\Z|;|,|\bFROM\b|\bAS\b)|[\w.]+\()
      | SELECT\s+[\w.*]+(?:\s+AS\s+\w+)?(?:\s*,\s*[\w.*]+(?:\s+AS\s+\w+)?)*\s+FROM\s+{_NAME}
            \s*(?:\Z|;|,|\b(?:WHERE|JOIN|LEFT|ORDER|GROUP|LIMIT|AS|FOR)\b)
      | INSERT\s+INTO\s+{_NAME}\s*(?:\(|\bVALUES\b|\bSELECT\b|\bDEFAULT\b)
      | UPDATE\s+{_NAME}\s+SET\s+[\w"]+\s*=
      | DELETE\s+FROM\s+{_NAME}\s*(?:\Z|;|\b(?:WHERE|USING|RETURNING)\b)
      | WITH\s+(?:RECURSIVE\s+)?\w+\s*(?:\([\w\s,]*\)\s*)?AS\s*(?:NOT\s+)?(?:MATERIALIZED\s*)?\(
      | (?:CREATE|ALTER|DROP)\s+(?:OR\s+REPLACE\s+|UNIQUE\s+|TEMP(?:ORARY)?\s+)*
            (?:TABLE|INDEX|TYPE|FUNCTION|TRIGGER|DATABASE|SCHEMA|VIEW|EXTENSION|SEQUENCE|ROLE)
            \s+(?:CONCURRENTLY\s+)?(?:IF\s+(?:NOT\s+)?EXISTS\s+)?{_NAME}
            \s*(?:\Z|;|\(|\b(?:ON|AS|ADD|DROP|ALTER|RENAME|RETURNS|CASCADE|OWNER|SET|BEFORE|AFTER|INSTEAD)\b)
      | COMMENT\s+ON\s+(?:TABLE|COLUMN|TYPE|INDEX|FUNCTION|TRIGGER|DATABASE|SCHEMA|VIEW)
            \s+[\w".]+(?:\([^)]*\))?\s+IS\b
      | (?:UN)?LISTEN\s+{_NAME}\s*;?\s*\Z
      | NOTIFY\s+{_NAME}\s*(?:\Z|;|,)
      | TRUNCATE\s+(?:TABLE\s+)?{_NAME}\s*(?:\Z|;|,|\b(?:RESTART|CASCADE)\b)
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_SQL_COMMENT = re.compile(r"^\s*--.*$", re.MULTILINE)
#: Methods that run a statement given as their first argument (DB-API, psycopg, SQLAlchemy).
EXECUTE_METHODS = frozenset({"execute", "executemany", "executescript", "exec_driver_sql"})
#: Modules whose ``text``/``SQL`` build a statement object.
STATEMENT_BUILDERS = {
    "sqlalchemy": "text",
    "sqlalchemy.sql": "text",
    "sqlalchemy.sql.expression": "text",
    "psycopg.sql": "SQL",
}


# ---------------------------------------------------------------------------------------------
# The source tree and its imports
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    """One import: the module it names (absolute), the names it takes, where, whether it runs on import."""

    module: str
    names: tuple[str, ...]
    path: Path
    line: int
    #: At module level (class bodies included), outside functions and ``if TYPE_CHECKING:`` blocks.
    at_import: bool

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"

    def targets(self, known: Iterable[str]) -> set[str]:
        """The modules this import loads, ``from a import b`` naming ``a.b`` when that is a module."""
        modules = set(known)
        named = {f"{self.module}.{name}" for name in self.names} & modules
        plain = not self.names or len(named) < len(self.names)
        return named | ({_longest_known(self.module, modules)} if plain else set())

    @property
    def top(self) -> str:
        return self.module.partition(".")[0]


def _longest_known(module: str, known: set[str]) -> str:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return module


def modules_under(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` below ``root`` by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _ImportCollector(ast.NodeVisitor):
    """Every import of one module, function bodies and ``importlib.import_module("...")`` included."""

    def __init__(self, module: str, path: Path) -> None:
        self.package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        self.path = path
        self.deferred = 0
        self.found: list[Import] = []

    def _add(self, module: str, names: tuple[str, ...], node: ast.AST) -> None:
        self.found.append(Import(module, names, self.path, getattr(node, "lineno", 0), self.deferred == 0))

    def _deferred(self, node: ast.AST) -> None:
        self.deferred += 1
        self.generic_visit(node)
        self.deferred -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _deferred

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.deferred += 1
        for statement in node.body:
            self.visit(statement)
        self.deferred -= 1
        for statement in node.orelse:
            self.visit(statement)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, (), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            parts = self.package.split(".")
            base = parts[: len(parts) - (node.level - 1)]
            module = ".".join([*base, module] if module else base)
        self._add(module, tuple(alias.name for alias in node.names), node)

    def visit_Call(self, node: ast.Call) -> None:
        callee = node.func
        name = callee.attr if isinstance(callee, ast.Attribute) else getattr(callee, "id", "")
        first = node.args[0] if node.args else None
        literal = first.value if isinstance(first, ast.Constant) else None
        if name in {"import_module", "__import__"} and isinstance(literal, str):
            self._add(literal, (), node)
        self.generic_visit(node)


def imports_of(module: str, path: Path) -> list[Import]:
    collector = _ImportCollector(module, path)
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return collector.found


@cache
def _tree(root: Path, packages: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, list[Import]]]:
    modules = modules_under(root, packages)
    return modules, {module: imports_of(module, path) for module, path in modules.items()}


def forbidden_imports(root: Path, package: str, forbidden: Iterable[str]) -> list[str]:
    """``file:line: module`` for each import in ``package`` of a module of a ``forbidden`` package."""
    _, imports = _tree(root, (package,))
    banned = set(forbidden)
    return [
        f"{found.where(root)}: imports {found.module}"
        for module in sorted(imports)
        for found in imports[module]
        if found.top in banned
    ]


# ---------------------------------------------------------------------------------------------
# Import graphs and their cycles
# ---------------------------------------------------------------------------------------------

Graph = dict[str, dict[str, Import]]


def module_graph(root: Path, packages: tuple[str, ...], *, at_import_only: bool) -> Graph:
    """Module → {module it imports: the first import that does}, among modules of ``packages``.

    A package's ``__init__`` running before its submodule is not an edge: Python puts the package in
    ``sys.modules`` first, so that alone never fails.
    """
    modules, imports = _tree(root, packages)
    graph: Graph = {module: {} for module in modules}
    for module, found in imports.items():
        for statement in found:
            if at_import_only and not statement.at_import:
                continue
            for target in statement.targets(modules) & modules.keys():
                if target != module:
                    graph[module].setdefault(target, statement)
    return graph


def package_graph(graph: Graph) -> Graph:
    """The same imports between top-level packages."""
    packages: Graph = {}
    for module, edges in graph.items():
        source = packages.setdefault(module.partition(".")[0], {})
        for target, statement in edges.items():
            top = target.partition(".")[0]
            if top != module.partition(".")[0]:
                source.setdefault(top, statement)
    return packages


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one member, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def shortest_loop(graph: Graph, component: list[str]) -> list[str]:
    """One cycle through the component's first member, the shortest, by breadth-first search."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if target in members and target not in previous:
                    previous[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not a cycle")


def describe_cycles(root: Path, graph: Graph) -> list[str]:
    """Each cycle as its members, then one loop with the line of each import on it."""
    described = []
    for component in strongly_connected(graph):
        loop = shortest_loop(graph, component)
        steps = [f"{a} -> {b} ({graph[a][b].where(root)})" for a, b in itertools.pairwise(loop)]
        described.append(f"cycle {component}: " + "; ".join(steps))
    return described


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------


def looks_like_sql(value: str) -> bool:
    return bool(SQL_STATEMENT.match(_SQL_COMMENT.sub("", value)))


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _rendered(node: ast.expr) -> str | None:
    """A string literal's text, an f-string's with ``{}`` for each hole; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(part.value) if isinstance(part, ast.Constant) else "{}" for part in node.values)
    return None


def _statement_builders(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to ``sqlalchemy.text``/``psycopg.sql.SQL``, and names bound to their modules."""
    functions: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if STATEMENT_BUILDERS.get(node.module) == alias.name:
                    functions.add(alias.asname or alias.name)
                if f"{node.module}.{alias.name}" in STATEMENT_BUILDERS:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in STATEMENT_BUILDERS:
                    modules.add(alias.asname or alias.name)
    return functions, modules


def _sql_call(node: ast.Call, functions: set[str], modules: set[str]) -> str | None:
    callee = node.func
    first = _rendered(node.args[0]) if node.args else None
    if isinstance(callee, ast.Name) and callee.id in functions:
        return f"builds a statement with {callee.id}()"
    if isinstance(callee, ast.Attribute):
        owner = ast.unparse(callee.value)
        if callee.attr in STATEMENT_BUILDERS.values() and (
            owner in modules or STATEMENT_BUILDERS.get(owner) == callee.attr
        ):
            return f"builds a statement with {owner}.{callee.attr}()"
        if callee.attr in EXECUTE_METHODS and first is not None:
            return f"runs a literal statement with .{callee.attr}()"
    return None


class _Scopes(ast.NodeVisitor):
    """The innermost function or class around each node, by the node's id."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.of: dict[int, str] = {}

    def generic_visit(self, node: ast.AST) -> None:
        self.of[id(node)] = ".".join(self.names)
        super().generic_visit(node)

    def _scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.names.append(node.name)
        self.generic_visit(node)
        self.names.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scope


def sql_in(
    root: Path, packages: Iterable[str], owners: Iterable[str], exceptions: Mapping[tuple[str, str], str]
) -> list[str]:
    """``file:line (scope): what`` for each SQL string or statement call outside owners and exceptions.

    SQL strings are literals (f-strings included) that open a statement; docstrings never count.
    Calls are ``sqlalchemy.text``/``psycopg.sql.SQL`` with anything, and ``.execute(...)`` and
    its kin with a literal.
    """
    found: dict[tuple[str, int, str], set[str]] = {}
    for path in sorted(path for package in packages for path in (root / package).rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith(tuple(owners)):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        scopes = _Scopes()
        scopes.visit(tree)
        skipped = _docstrings(tree) | {
            id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values
        }
        functions, modules = _statement_builders(tree)
        for node in ast.walk(tree):
            what = None
            if isinstance(node, ast.Call):
                what = _sql_call(node, functions, modules)
            elif isinstance(node, ast.Constant | ast.JoinedStr) and id(node) not in skipped:
                text = _rendered(node)
                if text is not None and looks_like_sql(text):
                    kind = "an f-string" if isinstance(node, ast.JoinedStr) else "a string"
                    what = f"{kind} holds SQL: {' '.join(text.split())[:60]!r}"
            scope = scopes.of.get(id(node), "")
            if what and (relative, scope) not in exceptions:
                found.setdefault((relative, getattr(node, "lineno", 0), scope or "module"), set()).add(what)
    return [
        f"{path}:{line} ({scope}): {'; '.join(sorted(whats))}"
        for (path, line, scope), whats in sorted(found.items())
    ]


# ---------------------------------------------------------------------------------------------
# What the api loads
# ---------------------------------------------------------------------------------------------


@cache
def loaded_by(code: str, path: Path = REPO) -> frozenset[str]:
    """Top-level names in ``sys.modules`` after a fresh interpreter with ``path`` first runs ``code``."""
    report = "import json, sys; print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{report}"],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return frozenset(json.loads(result.stdout.splitlines()[-1]))


def requirement_closure(requirements: Iterable[str]) -> set[str]:
    """The distributions ``requirements`` install, by canonical name, following their own requirements."""
    found: set[str] = set()
    pending = [Requirement(requirement) for requirement in requirements]
    visited: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in visited:
            continue
        visited.add(key)
        try:
            distribution = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.add(key[0])
        environments = [{"extra": extra} for extra in sorted(requirement.extras)] or [{"extra": ""}]
        for line in distribution.requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate(env) for env in environments):
                pending.append(needed)
    return found


def api_distributions() -> set[str]:
    """What the api image installs: ``[project] dependencies`` and everything they require."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return requirement_closure(project["dependencies"])


def undeclared_imports(root: Path, packages: tuple[str, ...], entry: str, allowed: set[str]) -> list[str]:
    """Third-party imports that run when ``entry`` is imported and no ``allowed`` distribution provides.

    Follows module-level imports from ``entry`` through ``packages`` (each module's parent packages
    run too); function bodies and ``if TYPE_CHECKING:`` blocks do not run on import.
    """
    modules, imports = _tree(root, packages)
    graph = module_graph(root, packages, at_import_only=True)
    reached: set[str] = set()
    pending = [entry]
    while pending:
        module = pending.pop()
        if module in reached:
            continue
        reached.add(module)
        parents = [".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 1)]
        pending.extend([*graph[module], *(parent for parent in parents if parent in modules)])
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module in sorted(reached):
        for statement in imports[module]:
            if (
                not statement.at_import
                or statement.top in sys.stdlib_module_names
                or statement.top in packages
            ):
                continue
            distributions = {canonicalize_name(name) for name in providers.get(statement.top, [])}
            if not distributions & allowed:
                provider = ", ".join(sorted(distributions)) or "no installed distribution"
                problems.append(f"{statement.where(root)}: imports {statement.module} ({provider})")
    return problems


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", API_MODULES)
def test_importing_the_api_loads_no_worker_library(module: str) -> None:
    assert not loaded_by(f"import {module}") & WORKER_LIBRARIES


def test_building_the_app_loads_no_worker_library() -> None:
    assert not loaded_by(BUILD_APP) & WORKER_LIBRARIES


@pytest.mark.parametrize("module", API_MODULES)
def test_importing_the_api_loads_no_opencv(module: str) -> None:
    assert OPENCV not in loaded_by(f"import {module}")


def test_building_the_app_loads_no_opencv() -> None:
    assert OPENCV not in loaded_by(BUILD_APP)


def test_the_api_imports_only_its_declared_dependencies() -> None:
    assert undeclared_imports(REPO, PACKAGES, "service.app", api_distributions()) == []


def test_pipelines_import_nothing_from_service_or_bench() -> None:
    assert forbidden_imports(REPO, "pipelines", {"service", "bench"}) == []


#: Libraries that reach the network: pipelines compute, the service fetches (``service/sources.py``,
#: ``service/fetch.py``, ``service/storage.py``).
NETWORK_LIBRARIES = {"urllib3", "requests", "httpx", "huggingface_hub", "socket", "urllib", "http", "minio"}


def test_pipelines_reach_no_network() -> None:
    assert forbidden_imports(REPO, "pipelines", NETWORK_LIBRARIES) == []


def test_only_the_jobs_package_issues_sql() -> None:
    assert sql_in(REPO, SQL_CHECKED, SQL_OWNERS, SQL_EXCEPTIONS) == []


def test_sql_exceptions_are_still_needed() -> None:
    """An exception whose SQL has gone is removed, so the list says only what is true."""
    found = sql_in(REPO, SQL_CHECKED, SQL_OWNERS, {})
    stale = [
        f"{path} ({function})"
        for path, function in SQL_EXCEPTIONS
        if not any(line.startswith(f"{path}:") and f" ({function}): " in line for line in found)
    ]
    assert stale == []


def test_no_import_cycles_between_top_level_packages() -> None:
    graph = package_graph(module_graph(REPO, PACKAGES, at_import_only=False))
    assert describe_cycles(REPO, graph) == []


@pytest.mark.parametrize("package", ["pipelines", "service"])
def test_no_module_level_import_cycles_inside_a_package(package: str) -> None:
    assert describe_cycles(REPO, module_graph(REPO, (package,), at_import_only=True)) == []


# ---------------------------------------------------------------------------------------------
# The walkers catch what they are for
# ---------------------------------------------------------------------------------------------


def plant(root: Path, files: Mapping[str, str]) -> Path:
    """Write a throwaway tree of packages (``__init__.py`` files added) and return its root."""
    for name, source in files.items():
        path = root / name
        for parent in reversed(path.relative_to(root).parents[:-1]):
            (root / parent).mkdir(exist_ok=True)
            (root / parent / "__init__.py").touch()
        path.write_text(source)
    return root


def test_walker_finds_pipelines_importing_service_anywhere(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "pipelines/clean.py": "import numpy\nfrom pipelines import clean\n",
            "pipelines/stages/bad.py": "import os\n\ndef run():\n    from service.db import make_engine\n",
            "pipelines/top.py": "import bench.gpu\n",
            "pipelines/dynamic.py": "import importlib\nimportlib.import_module('service.storage')\n",
            "pipelines/sub/relative.py": "from .. import clean\n",
        },
    )
    assert forbidden_imports(root, "pipelines", {"service", "bench"}) == [
        "pipelines/dynamic.py:2: imports service.storage",
        "pipelines/stages/bad.py:4: imports service.db",
        "pipelines/top.py:1: imports bench.gpu",
    ]


def test_walker_finds_sql_but_not_prose(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "service/prose.py": '"""Select a model from the list, then update the row set."""\n'
            'HELP = "Select models from disk."\nLABEL = "Delete from the store"\n'
            'def f(reader):\n    """SELECT 1 in a docstring is prose."""\n    return reader.text("prompt")\n',
            "service/raw.py": 'def f(conn):\n    conn.execute("SELECT 1")\n',
            "service/built.py": "from sqlalchemy import text as t\nQ = t(QUERY)\n",
            "service/fstring.py": 'def f(table):\n    return f"DELETE FROM {table} WHERE id = 1"\n',
            "pipelines/notify.py": "import psycopg\nQ = psycopg.sql.SQL(X)\n",
            "bench/ddl.py": 'DDL = """\n    -- the schema\n'
            '    CREATE TABLE IF NOT EXISTS runs (id int)\n"""\n',
            "service/jobs/store.py": 'Q = "UPDATE jobs SET state = 1"\n',
            "service/db.py": 'def create(conn):\n    conn.execute("CREATE DATABASE x")\n',
        },
    )
    assert sql_in(root, SQL_CHECKED, SQL_OWNERS, {("service/db.py", "create"): "why"}) == [
        "bench/ddl.py:1 (module): a string holds SQL: "
        "'-- the schema CREATE TABLE IF NOT EXISTS runs (id int)'",
        "pipelines/notify.py:2 (module): builds a statement with psycopg.sql.SQL()",
        "service/built.py:2 (module): builds a statement with t()",
        "service/fstring.py:2 (f): an f-string holds SQL: 'DELETE FROM {} WHERE id = 1'",
        "service/raw.py:2 (f): a string holds SQL: 'SELECT 1'; runs a literal statement with .execute()",
    ]


@pytest.mark.parametrize(
    ("text", "is_sql"),
    [
        ("SELECT 1", True),
        ("select count(*) from jobs", True),
        ("SELECT id, state FROM jobs WHERE id = :id", True),
        ("  -- the oldest first\n  SELECT * FROM jobs ORDER BY created_at", True),
        ("INSERT INTO jobs (id) VALUES (:id)", True),
        ("UPDATE jobs SET state = 'failed'", True),
        ("DELETE FROM jobs WHERE id = :id", True),
        ("WITH claimed AS (SELECT 1) SELECT * FROM claimed", True),
        ("CREATE DATABASE {}", True),
        ("LISTEN onnx_web_jobs", True),
        ("NOTIFY onnx_web_jobs, 'model'", True),
        ("TRUNCATE jobs", True),
        ("Select 3 images", False),
        ("Select a model from the list.", False),
        ("Select models from disk.", False),
        ("Update the row set", False),
        ("Delete from the store", False),
        ("delete from S3 failed", False),
        ("Insert into the queue", False),
        ("with retries as a fallback", False),
        ("Truncate the prompt to 77 tokens", False),
    ],
)
def test_sql_pattern_tells_statements_from_prose(text: str, is_sql: bool) -> None:
    assert looks_like_sql(text) is is_sql


def test_sql_pattern_recognises_every_migration_statement() -> None:
    """The schema's own statements are SQL by definition: the pattern must see all of them."""
    statements = [
        node.value
        for path in sorted((REPO / "migrations" / "versions").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.lstrip().startswith(
            ("CREATE", "ALTER", "DROP", "COMMENT", "SELECT", "INSERT", "UPDATE", "DELETE")
        )
    ]
    assert len(statements) >= 10
    assert [statement for statement in statements if not looks_like_sql(statement)] == []


def test_walker_finds_cycles(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "service/a.py": "def f():\n    import pipelines.b\n",
            "pipelines/b.py": "from service import a\n",
            "pipelines/c.py": "from pipelines import d\n",
            "pipelines/d.py": "import pipelines.c\n",
            "pipelines/e.py": "def f():\n    from pipelines import f\n",
            "pipelines/f.py": "from typing import TYPE_CHECKING\nimport pipelines.e\n"
            "if TYPE_CHECKING:\n    import pipelines.g\n",
            "pipelines/g.py": "import pipelines.f\n",
        },
    )
    packages = describe_cycles(
        root, package_graph(module_graph(root, ("service", "pipelines"), at_import_only=False))
    )
    assert packages == [
        "cycle ['pipelines', 'service']: pipelines -> service (pipelines/b.py:1); "
        "service -> pipelines (service/a.py:2)"
    ]
    assert describe_cycles(root, module_graph(root, ("pipelines",), at_import_only=True)) == [
        "cycle ['pipelines.c', 'pipelines.d']: pipelines.c -> pipelines.d (pipelines/c.py:1); "
        "pipelines.d -> pipelines.c (pipelines/d.py:1)"
    ]


def test_walker_finds_undeclared_imports_the_api_runs(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "service/app.py": "import falcon\nfrom service import helper\n",
            "service/helper.py": "import json\nimport numpy\nimport torch\n"
            "from pipelines.models import registry\n\ndef later():\n    import diffusers\n",
            "service/worker.py": "import onnxruntime\n",
            "pipelines/__init__.py": "",
            "pipelines/models/registry.py": "import cv2\n",
        },
    )
    problems = undeclared_imports(root, ("service", "pipelines"), "service.app", api_distributions())
    assert problems == [
        "pipelines/models/registry.py:1: imports cv2 (opencv-python-headless)",
        "service/helper.py:3: imports torch (torch)",
    ]


def test_walker_finds_heavy_modules_a_fresh_import_loads(tmp_path: Path) -> None:
    plant(
        tmp_path,
        {"fakeapi/app.py": "import json\nfrom fakeapi import stages\n", "fakeapi/stages.py": "import tqdm\n"},
    )
    assert "tqdm" in loaded_by("import fakeapi.app", tmp_path) & WORKER_LIBRARIES
