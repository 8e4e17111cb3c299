"""infra/compose.yaml: the one-host stack has every part, pinned, healthy-gated and without inline
secrets, and builds the api and worker from the Containerfile's targets."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from service.config import SHUTDOWN_GRACE_S
from tests.infra import DRAIN_MARGIN_S
from tests.infra.images import CONTAINERFILE, REPO, inherited, pinned, runnable, stages

COMPOSE = REPO / "infra" / "compose.yaml"
SERVICES = ("postgres", "minio", "migrate", "api", "worker")
#: Services that run to completion (their `depends_on` condition is completion, not health).
ONE_SHOT = frozenset({"migrate"})
#: Variable names that hold credentials; their values must come from secrets or compose.env.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE_URL|ACCESS_KEY|ROOT_USER$")


def duration_s(value: str) -> float:
    """A compose duration (`45s`, `1m30s`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def compose_problems(compose: dict[str, Any], containerfile: str) -> list[str]:
    """Every rule ``compose`` breaks, given the Containerfile its builds point at."""
    problems: list[str] = []
    services = compose.get("services", {})
    all_stages = stages(containerfile)
    problems += [f"no {name} service" for name in SERVICES if name not in services]
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            if not pinned(service.get("image", "")):
                problems.append(f"{name}: image {service.get('image')!r} is not pinned to a version")
            has_healthcheck = "healthcheck" in service
        else:
            if (
                REPO / "infra" / build.get("context", ".") / build.get("dockerfile", "")
            ).resolve() != CONTAINERFILE:
                problems.append(f"{name}: does not build from the Containerfile")
            stage = all_stages.get(build.get("target", ""))
            if stage is None or not runnable(stage):
                problems.append(
                    f"{name}: target {build.get('target')!r} is not a runnable Containerfile stage"
                )
                continue
            has_healthcheck = (
                "healthcheck" in service or inherited(all_stages, stage, "HEALTHCHECK") is not None
            )
        if name not in ONE_SHOT and not has_healthcheck:
            problems.append(f"{name}: no healthcheck")
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable) and not variable.endswith("_FILE"):
                problems.append(f"{name}: secret {variable} written inline ({value!r})")
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            if condition.get("condition") != wanted:
                problems.append(f"{name}: waits for {dependency} without condition {wanted}")
    worker = services.get("worker", {})
    grace = duration_s(worker.get("stop_grace_period", "10s"))  # compose's default
    if grace < SHUTDOWN_GRACE_S + DRAIN_MARGIN_S:
        problems.append(f"worker: stop_grace_period {grace:g}s is shorter than its drain + margin")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def containerfile() -> str:
    return CONTAINERFILE.read_text(encoding="utf-8")


def test_compose_keeps_every_rule(compose: dict[str, Any], containerfile: str) -> None:
    assert compose_problems(compose, containerfile) == []


def test_compose_secrets_are_files_the_script_writes(compose: dict[str, Any]) -> None:
    script = (REPO / "infra" / "compose-secrets.sh").read_text(encoding="utf-8")
    for name, secret in compose["secrets"].items():
        assert secret["file"] == f"secrets/{name}"
        assert f"secrets/{name}" in script
    for service in compose["services"].values():
        for env_file in service.get("env_file", []):
            assert env_file in script


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(compose: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = compose
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("services.minio", None), "no minio service"),
        (_set("services.minio.image", "quay.io/minio/minio:latest"), "minio: image"),
        (_set("services.postgres.image", "postgres:18.6"), "postgres: image"),
        (_set("services.postgres.healthcheck", None), "postgres: no healthcheck"),
        (_set("services.worker.build.target", "base"), "worker: target 'base' is not a runnable"),
        (_set("services.api.build.dockerfile", "Dockerfile"), "api: does not build from the Containerfile"),
        (_set("services.postgres.environment.POSTGRES_PASSWORD", "onnxweb"), "secret POSTGRES_PASSWORD"),
        (_set("services.api.depends_on.minio", {"condition": "service_started"}), "waits for minio"),
        (_set("services.worker.stop_grace_period", "30s"), "stop_grace_period 30s"),
    ],
)
def test_compose_check_catches(
    compose: dict[str, Any], containerfile: str, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    broken = copy.deepcopy(compose)
    change(broken)
    assert any(expected in problem for problem in compose_problems(broken, containerfile))
