"""Reading the Containerfile and checking its images: pinned bases, non-root users, healthchecks and
a CUDA base that the pinned GPU wheels can run on.

This machine and CI cannot pull base images, so the checks read the files instead of building:
``containerfile_problems`` lists every rule a Containerfile breaks (empty when it keeps them all).
"""

from __future__ import annotations

import io
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from tests.infra import cuda_matrix

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "Containerfile"
CUDA_REQUIREMENTS = REPO / "requirements" / "worker-cuda.txt"
#: The stage whose base must carry the CUDA and cuDNN of the pinned GPU wheels.
CUDA_STAGE = "worker-cuda"
CUDA_REPOSITORY = "docker.io/nvidia/cuda"
#: A pinned reference: a registry host, a repository, an exact version tag (major.minor.patch, or
#: MinIO's RELEASE timestamps), and optionally a digest. A short name (`python:3.12`) is refused
#: too: Podman resolves short names through the host's registries.conf, so one file could build
#: different images on different hosts.
PINNED_IMAGE = re.compile(
    r"^(?P<repository>[a-z0-9.-]+\.[a-z]{2,}(?::\d+)?/[a-z0-9._/-]+)"
    r":(?P<version>\d+\.\d+(?:\.\d+)?|RELEASE\.[\dTZ-]+)(?P<variant>-[\w.-]+)?"
    r"(?:@sha256:[0-9a-f]{64})?$"
)
#: Projects whose releases are major.minor, so two numbers are already exact (Postgres 18.6).
TWO_PART_VERSIONS = frozenset({"docker.io/library/postgres"})


def pinned(reference: str) -> bool:
    """Whether an image reference names one exact release in a named registry."""
    found = PINNED_IMAGE.match(reference)
    if found is None:
        return False
    version = found["version"]
    return (
        version.startswith("RELEASE.") or version.count(".") == 2 or found["repository"] in TWO_PART_VERSIONS
    )


@dataclass
class Stage:
    """One FROM … AS name section of a Containerfile."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        values = [value for name, value in self.instructions if name == instruction]
        return values[-1] if values else None


def stages(text: str) -> dict[str, Stage]:
    """The stages of a Containerfile, by name (unnamed stages get their index)."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            base, _, name = value.partition(" AS ") if " AS " in value else value.partition(" as ")
            current = Stage(name=name.strip() or str(len(found)), base=base.strip())
            found[current.name] = current
        elif current is not None and instruction != "COMMENT":
            current.instructions.append((instruction, value))
    return found


def inherited(all_stages: dict[str, Stage], stage: Stage, instruction: str) -> str | None:
    """The value of the last ``instruction`` of ``stage`` or, failing that, of the stages it builds on."""
    while True:
        value = stage.last(instruction)
        if value is not None or stage.base not in all_stages:
            return value
        stage = all_stages[stage.base]


def runnable(stage: Stage) -> bool:
    """A stage people run (it says what to start), as opposed to a build or base stage."""
    return stage.last("CMD") is not None or stage.last("ENTRYPOINT") is not None


def image_tag(reference: str) -> str:
    """The tag of a pinned image reference, without its digest."""
    return reference.split("@", 1)[0].rsplit(":", 1)[1]


def pinned_requirement(path: Path, name: str) -> tuple[str, bool]:
    """The exact version ``name`` is pinned to in a requirements file, and whether it has a hash."""
    for line in path.read_text(encoding="utf-8").splitlines():
        spec, _, options = line.partition("--hash=")
        if not spec.strip() or spec.lstrip().startswith("#"):
            continue
        requirement = Requirement(spec.strip())
        if requirement.name == name:
            versions = [s.version for s in requirement.specifier if s.operator == "=="]
            if len(versions) != 1:
                raise ValueError(f"{path.name}: {name} is not pinned to one exact version: {spec.strip()}")
            return versions[0], bool(options.strip())
    raise ValueError(f"{path.name} does not name {name}")


def pyproject_pin(extra: str, name: str) -> str:
    """The exact version of ``name`` in an optional-dependency group of pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for line in project["optional-dependencies"][extra]:
        requirement = Requirement(line)
        if requirement.name == name:
            return next(s.version for s in requirement.specifier if s.operator == "==")
    raise ValueError(f"pyproject.toml's {extra} extra does not pin {name}")


def containerfile_problems(text: str, *, ort_gpu: str, torch: str) -> list[str]:
    """Every rule ``text`` breaks; ``ort_gpu`` and ``torch`` are the pinned GPU wheel versions."""
    problems: list[str] = []
    all_stages = stages(text)
    for stage in all_stages.values():
        if stage.base not in all_stages and not pinned(stage.base):
            problems.append(f"{stage.name}: base {stage.base!r} is not a registry image pinned to a version")
    for stage in filter(runnable, all_stages.values()):
        user = inherited(all_stages, stage, "USER")
        uid = (user or "").split(":", 1)[0]
        if not uid.isdigit() or int(uid) == 0:
            problems.append(f"{stage.name}: runs as {user or 'root (no USER)'}, not a numeric non-root uid")
        healthcheck = inherited(all_stages, stage, "HEALTHCHECK")
        if healthcheck is None or healthcheck.strip().upper() == "NONE":
            problems.append(f"{stage.name}: no HEALTHCHECK")
    problems.extend(_cuda_problems(all_stages, ort_gpu=ort_gpu, torch=torch))
    return problems


def _cuda_problems(all_stages: dict[str, Stage], *, ort_gpu: str, torch: str) -> list[str]:
    stage = all_stages.get(CUDA_STAGE)
    if stage is None:
        return [f"no {CUDA_STAGE} stage"]
    if not stage.base.startswith(CUDA_REPOSITORY + ":"):
        return [f"{CUDA_STAGE}: base {stage.base!r} is not {CUDA_REPOSITORY}"]
    try:
        image = cuda_matrix.cuda_image(image_tag(stage.base))
    except ValueError as err:
        return [f"{CUDA_STAGE}: {err}"]
    problems = []
    for wheel, table, version in (
        ("onnxruntime-gpu", cuda_matrix.ONNXRUNTIME_GPU, ort_gpu),
        ("torch", cuda_matrix.TORCH, torch),
    ):
        build = table.get(version)
        if build is None:
            problems.append(f"{wheel} {version} has no row in tests/infra/cuda_matrix.py")
        elif found := cuda_matrix.mismatch(image, f"{wheel} {version}", build):
            problems.append(f"{CUDA_STAGE}: {found}")
    installs = " ".join(value for name, value in stage.instructions if name == "RUN")
    if f"--require-hashes -r requirements/{CUDA_REQUIREMENTS.name}" not in installs:
        problems.append(f"{CUDA_STAGE}: does not install requirements/{CUDA_REQUIREMENTS.name} with hashes")
    if re.search(r"pip install[^&;]*\bonnxruntime-gpu\b", installs):
        problems.append(
            f"{CUDA_STAGE}: installs onnxruntime-gpu outside requirements/{CUDA_REQUIREMENTS.name}"
        )
    return problems
