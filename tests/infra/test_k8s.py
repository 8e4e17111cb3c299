"""infra/k8s: every manifest valid for Kubernetes (core kinds) or KEDA (its CRD schema), the parts
wired to each other and to the code, and KEDA's queries run against the migrated schema."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import psycopg
import pytest
import sqlalchemy
import yaml
from kubernetes_validate.utils import all_versions

from service.config import ENV_NAMES, SHUTDOWN_GRACE_S
from service.db import libpq_url
from tests.fixtures.postgres import new_job, seed_jobs, shift_time
from tests.infra import DRAIN_MARGIN_S
from tests.infra.images import CONTAINERFILE, REPO, inherited, stages

K8S = REPO / "infra" / "k8s"
README = REPO / "infra" / "README.md"
CRDS = Path(__file__).parent / "crds"
KEDA_API = "keda.sh/v1alpha1"
#: The oldest and newest Kubernetes releases whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = (all_versions()[0], all_versions()[-1])
#: A worker's cold start (GPU node, image pull, model load, CUDA-graph warm-up) takes minutes; the
#: workers must outlast a lull shorter than that (see the ScaledObject's comment).
COLD_START_S = 300
#: Parameters KEDA's postgresql scaler reads from a TriggerAuthentication
#: (pkg/scalers/postgresql_scaler.go, v2.20.2: fields with order=authParams).
POSTGRESQL_AUTH_PARAMETERS = frozenset(
    {"connection", "host", "port", "userName", "dbName", "sslmode", "password"}
)
#: Pod labels -> the Containerfile target their image is built from.
IMAGE_TARGETS = {"onnx-web-api": "api", "onnx-web-worker-cuda": "worker-cuda"}
SCALER_ROLE = "onnx_web_scaler"
#: Where Prometheus runs: it may scrape the api's port and the workers' metrics port.
MONITORING_NAMESPACE = "monitoring"

Manifest = dict[str, Any]


def load_manifests() -> list[Manifest]:
    """Every document of every file in infra/k8s, each tagged with its file name."""
    manifests = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                manifests.append({**document, "__file__": path.name})
    return manifests


def _bare(manifest: Manifest) -> Manifest:
    return {key: value for key, value in manifest.items() if key != "__file__"}


def by_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def pod_specs(manifests: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(owner, pod template) of every workload."""
    for manifest in manifests:
        spec = manifest.get("spec", {})
        if manifest["kind"] == "CronJob":
            yield manifest, spec["jobTemplate"]["spec"]["template"]
        elif "template" in spec:
            yield manifest, spec["template"]


# -- schemas ---------------------------------------------------------------------------------


def core_problems(manifests: list[Manifest], version: str) -> list[str]:
    """Kubernetes' own schemas (strict: unknown fields are errors) for every non-KEDA manifest."""
    problems = []
    for manifest in manifests:
        if manifest.get("apiVersion") == KEDA_API:
            continue
        name = f"{manifest['__file__']}: {manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(_bare(manifest), version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{name}: {'.'.join(map(str, err.path))}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{name}: {err.message}")
    return problems


def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation (kubectl's
    default): an object that lists its properties accepts no others."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            schema.get("type") == "object"
            and "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


def keda_schemas() -> dict[str, Any]:
    """Kind -> the strict openAPIV3Schema of its v1alpha1 version, from the vendored CRDs."""
    schemas = {}
    for path in CRDS.glob("keda.sh_*.yaml"):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        version = next(v for v in crd["spec"]["versions"] if v["name"] == KEDA_API.split("/")[1])
        schemas[crd["spec"]["names"]["kind"]] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def keda_problems(manifests: list[Manifest], schemas: dict[str, Any]) -> list[str]:
    problems = []
    for manifest in manifests:
        if manifest.get("apiVersion") != KEDA_API:
            continue
        name = f"{manifest['__file__']}: {manifest['kind']}/{manifest['metadata']['name']}"
        schema = schemas.get(manifest["kind"])
        if schema is None:
            problems.append(f"{name}: no vendored KEDA CRD for this kind")
            continue
        for error in jsonschema.Draft7Validator(schema).iter_errors(_bare(manifest)):
            problems.append(f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
    return problems


# -- cross-checks ----------------------------------------------------------------------------


def documented_secrets(readme: str) -> dict[str, dict[str, str]]:
    """Secret name -> {key: example value} of every `kubectl create secret generic` in the README."""
    found: dict[str, dict[str, str]] = {}
    for command in re.findall(r"kubectl[^\n]*create secret generic(?:[^\n]*\\\n)*[^\n]*", readme):
        words = shlex.split(command.replace("\\\n", " "))
        name = words[words.index("generic") + 1]
        literals = (word.split("=", 1)[1] for word in words if word.startswith("--from-literal="))
        found[name] = dict(literal.split("=", 1) for literal in literals)
    return found


def wiring_problems(manifests: list[Manifest], readme: str, containerfile: str, version: str) -> list[str]:
    """What the schemas cannot see: references between the manifests, the README and the code."""
    problems: list[str] = []
    config_maps = by_kind(manifests, "ConfigMap")
    secrets = documented_secrets(readme)
    known_variables = {variable for variable, _ in ENV_NAMES.values()}
    problems += [f"Secret {name} is kept in infra/k8s" for name in by_kind(manifests, "Secret")]
    for name, keys in secrets.items():
        if name == "onnx-web":
            problems += [
                f"Secret onnx-web key {key} is not a setting" for key in keys if key not in known_variables
            ]
    for owner, template in pod_specs(manifests):
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        pod = template["spec"]
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            problems.append(f"{where}: pods may run as root")
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in config_maps:
                    problems.append(f"{where}: ConfigMap {source['configMapRef']['name']} is not defined")
                if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                    problems.append(
                        f"{where}: Secret {source['secretRef']['name']} is not created in the README"
                    )
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["key"] not in secrets.get(ref["name"], {}):
                    problems.append(
                        f"{where}: Secret {ref['name']} key {ref['key']} is not created in the README"
                    )
            problems += _image_problems(where, container["image"], pod, containerfile, version)
    problems += _api_problems(manifests)
    problems += _worker_problems(manifests, secrets)
    problems += _network_problems(manifests, secrets, config_maps)
    return problems


def _image_problems(where: str, image: str, pod: Manifest, containerfile: str, version: str) -> list[str]:
    repository, _, tag = image.rpartition(":")
    target = IMAGE_TARGETS.get(repository.rsplit("/", 1)[-1])
    if target is None:
        return [f"{where}: image {image} is none of the Containerfile's targets"]
    problems = (
        [f"{where}: image {image} is not tagged with the project's version {version}"]
        if tag != version
        else []
    )
    all_stages = stages(containerfile)
    user = inherited(all_stages, all_stages[target], "USER") or "0"
    if str(pod.get("securityContext", {}).get("runAsUser")) != user.split(":")[0]:
        problems.append(f"{where}: runAsUser is not the image's user {user}")
    return problems


def _selects(selector: Manifest, labels: Manifest) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", selector).items())


def _api_problems(manifests: list[Manifest]) -> list[str]:
    problems = []
    deployments = by_kind(manifests, "Deployment")
    api = deployments.get("onnx-web-api")
    if api is None:
        return ["no api Deployment"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    ports = {port.get("name") for port in container.get("ports", [])}
    probes = {
        kind: container.get(kind, {}).get("httpGet", {}).get("path")
        for kind in ("livenessProbe", "readinessProbe")
    }
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        problems.append(f"api probes are {probes}, not liveness /healthz and readiness /readyz")
    services = [s for s in by_kind(manifests, "Service").values() if _selects(s["spec"]["selector"], labels)]
    if not services or any(p["targetPort"] not in ports for s in services for p in s["spec"]["ports"]):
        problems.append("no Service reaches the api's named port")
    targets = [
        h["spec"]["scaleTargetRef"]["name"] for h in by_kind(manifests, "HorizontalPodAutoscaler").values()
    ]
    if targets != ["onnx-web-api"]:
        problems.append(f"HorizontalPodAutoscalers scale {targets}, not the api alone")
    if "replicas" in api["spec"]:
        problems.append("the api Deployment sets replicas, which its HPA owns")
    if not any(
        _selects(p["spec"]["selector"], labels) for p in by_kind(manifests, "PodDisruptionBudget").values()
    ):
        problems.append("no PodDisruptionBudget covers the api pods")
    return problems


def _worker_problems(manifests: list[Manifest], secrets: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    scaled = by_kind(manifests, "ScaledObject").get("onnx-web-worker")
    if scaled is None:
        return ["no ScaledObject for the workers"]
    spec = scaled["spec"]
    worker = by_kind(manifests, "Deployment").get(spec["scaleTargetRef"]["name"])
    if worker is None:
        return [f"ScaledObject scales {spec['scaleTargetRef']['name']}, which is no Deployment"]
    pod = worker["spec"]["template"]["spec"]
    if "replicas" in worker["spec"]:
        problems.append("the worker Deployment sets replicas, which KEDA owns")
    if [c["resources"]["limits"].get("nvidia.com/gpu") for c in pod["containers"]] != [1]:
        problems.append("a worker pod is not one container with one GPU")
    drain = SHUTDOWN_GRACE_S
    for container in pod["containers"]:
        for variable in container.get("env", []):
            if variable["name"] == ENV_NAMES["shutdown_grace_s"][0]:
                drain = float(variable["value"])
    if pod.get("terminationGracePeriodSeconds", 30) < drain + DRAIN_MARGIN_S:
        problems.append(
            f"worker terminationGracePeriodSeconds is shorter than its drain ({drain:g} s) + margin"
        )
    if spec.get("minReplicaCount") != 0:
        problems.append("the workers do not scale to zero")
    if spec.get("cooldownPeriod", 300) < COLD_START_S:
        problems.append(f"cooldownPeriod is shorter than a worker's cold start ({COLD_START_S} s)")
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
    if behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 300) < COLD_START_S:
        problems.append("scale-down stabilization is shorter than a worker's cold start")
    names = {t.get("name") for t in spec["triggers"]}
    if not {"jobs-outstanding", "oldest-pending-age"} <= names:
        problems.append(
            f"triggers are {sorted(map(str, names))}, not the job count and the oldest pending age"
        )
    auths = by_kind(manifests, "TriggerAuthentication")
    for trigger in spec["triggers"]:
        auth = auths.get(trigger.get("authenticationRef", {}).get("name"))
        if trigger["type"] != "postgresql" or auth is None:
            problems.append(f"trigger {trigger.get('name')} is not postgresql with a TriggerAuthentication")
            continue
        for ref in auth["spec"]["secretTargetRef"]:
            if ref["parameter"] not in POSTGRESQL_AUTH_PARAMETERS:
                problems.append(
                    f"TriggerAuthentication parameter {ref['parameter']} is not the postgresql scaler's"
                )
            if ref["key"] not in secrets.get(ref["name"], {}):
                problems.append(f"Secret {ref['name']} key {ref['key']} is not created in the README")
    return problems


def _network_problems(
    manifests: list[Manifest], secrets: dict[str, dict[str, str]], config_maps: dict[str, Manifest]
) -> list[str]:
    policies = list(by_kind(manifests, "NetworkPolicy").values())
    problems = []
    if not any(
        p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        for p in policies
    ):
        problems.append("no default-deny NetworkPolicy")
    database = urlsplit(secrets.get("onnx-web", {}).get("DATABASE_URL", ""))
    s3 = urlsplit(config_maps.get("onnx-web", {}).get("data", {}).get("S3_ENDPOINT", ""))
    for role in ("api", "worker", "migrate", "gc"):
        labels = {"app": "onnx-web", "role": role}
        reach = {
            (_namespace(peer), port["port"])
            for policy in policies
            if "Egress" in policy["spec"]["policyTypes"] and _matches(policy["spec"]["podSelector"], labels)
            for rule in policy["spec"].get("egress", [])
            for peer in rule.get("to", [])
            for port in rule.get("ports", [])
        }
        for what, url in (("Postgres", database), ("S3", s3)):
            namespace = (url.hostname or "").split(".")[1] if "." in (url.hostname or "") else None
            if (namespace, url.port) not in reach:
                problems.append(f"{role} pods cannot reach {what} at {url.hostname}:{url.port}")
        if ("kube-system", 53) not in reach:
            problems.append(f"{role} pods cannot resolve names")
        # Beyond the api's own port, a pod accepts only Prometheus on its metrics port.
        allowed = {
            "api": {("ingress-nginx", 5000), (MONITORING_NAMESPACE, 5000)},
            "worker": {(MONITORING_NAMESPACE, 9400)},
        }
        accepted = {
            (_namespace(peer), port["port"])
            for p in policies
            if "Ingress" in p["spec"]["policyTypes"] and _matches(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("ingress", [])
            for peer in rule.get("from", [{}])
            for port in rule.get("ports", [{"port": None}])
        }
        if accepted - allowed.get(role, set()):
            problems.append(f"{role} pods accept connections from {sorted(map(str, accepted))}")
    return problems


def _namespace(peer: Manifest) -> str | None:
    """The namespace a NetworkPolicy peer names by its standard label, if any."""
    return peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")


def _matches(selector: Manifest, labels: Manifest) -> bool:
    expressions = selector.get("matchExpressions", [])
    return _selects(selector.get("matchLabels", {}), labels) and all(
        labels.get(e["key"]) in e["values"] if e["operator"] == "In" else False for e in expressions
    )


# -- tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    return load_manifests()


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    return keda_schemas()


@pytest.fixture(scope="module")
def wiring_inputs() -> tuple[str, str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return README.read_text(encoding="utf-8"), CONTAINERFILE.read_text(encoding="utf-8"), project["version"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_kinds_are_valid(manifests: list[Manifest], version: str) -> None:
    assert core_problems(manifests, version) == []


def test_keda_kinds_are_valid(manifests: list[Manifest], schemas: dict[str, Any]) -> None:
    assert {"ScaledObject", "TriggerAuthentication"} <= {m["kind"] for m in manifests}
    assert keda_problems(manifests, schemas) == []


def test_manifests_are_wired(manifests: list[Manifest], wiring_inputs: tuple[str, str, str]) -> None:
    assert wiring_problems(manifests, *wiring_inputs) == []


def _edit(kind: str, name: str, change: Callable[[Manifest], None]) -> Callable[[list[Manifest]], None]:
    def apply(manifests: list[Manifest]) -> None:
        change(next(m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name))

    return apply


def _container(manifest: Manifest) -> Manifest:
    container: Manifest = manifest["spec"]["template"]["spec"]["containers"][0]
    return container


def _trigger(manifest: Manifest) -> Manifest:
    trigger: Manifest = manifest["spec"]["triggers"][0]
    return trigger


BROKEN_CORE = [
    _edit("Deployment", "onnx-web-api", lambda m: _container(m).update(imagePullPolcy="Always")),
    _edit(
        "Deployment",
        "onnx-web-worker",
        lambda m: m["spec"]["template"]["spec"].update(terminationGracePeriodSeconds="45"),
    ),
    _edit("NetworkPolicy", "default-deny", lambda m: m["spec"].update(policyTypes="Egress")),
]
BROKEN_KEDA = [
    _edit("ScaledObject", "onnx-web-worker", lambda m: m["spec"].update(cooldownPerod=600)),
    _edit("ScaledObject", "onnx-web-worker", lambda m: _trigger(m)["metadata"].update(targetQueryValue=2)),
    _edit("ScaledObject", "onnx-web-worker", lambda m: m["spec"].pop("scaleTargetRef")),
    _edit("TriggerAuthentication", "onnx-web-scaler", lambda m: m["spec"]["secretTargetRef"][0].pop("key")),
]
BROKEN_WIRING = [
    (
        _edit(
            "Deployment",
            "onnx-web-worker",
            lambda m: m["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
        ),
        "shorter than its drain",
    ),
    (
        _edit(
            "Deployment",
            "onnx-web-worker",
            lambda m: _container(m)["env"].append({"name": "ONNX_WEB_SHUTDOWN_GRACE_S", "value": "60"}),
        ),
        "drain (60 s)",
    ),
    (
        _edit(
            "ScaledObject",
            "onnx-web-worker",
            lambda m: m["spec"]["scaleTargetRef"].update(name="onnx-web-workers"),
        ),
        "which is no Deployment",
    ),
    (
        _edit("ScaledObject", "onnx-web-worker", lambda m: m["spec"].update(cooldownPeriod=60)),
        "cooldownPeriod is shorter",
    ),
    (
        _edit("ScaledObject", "onnx-web-worker", lambda m: m["spec"].update(minReplicaCount=1)),
        "do not scale to zero",
    ),
    (
        _edit("ScaledObject", "onnx-web-worker", lambda m: m["spec"]["triggers"].pop()),
        "not the job count and the oldest",
    ),
    (
        _edit(
            "TriggerAuthentication",
            "onnx-web-scaler",
            lambda m: m["spec"]["secretTargetRef"][0].update(key="url"),
        ),
        "key url is not created",
    ),
    (
        _edit(
            "TriggerAuthentication",
            "onnx-web-scaler",
            lambda m: m["spec"]["secretTargetRef"][0].update(parameter="dsn"),
        ),
        "parameter dsn",
    ),
    (
        _edit(
            "Deployment",
            "onnx-web-api",
            lambda m: _container(m)["envFrom"].append({"secretRef": {"name": "onnx-web-extra"}}),
        ),
        "Secret onnx-web-extra is not created",
    ),
    (
        _edit(
            "CronJob",
            "onnx-web-gc",
            lambda m: m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["envFrom"].append(
                {"configMapRef": {"name": "gc"}}
            ),
        ),
        "ConfigMap gc is not defined",
    ),
    (
        _edit(
            "Deployment",
            "onnx-web-api",
            lambda m: _container(m).update(image="registry.example.com/onnx-web-api:latest"),
        ),
        "not tagged with the project's version",
    ),
    (
        _edit(
            "Deployment",
            "onnx-web-api",
            lambda m: m["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
        ),
        "runAsUser is not the image's user",
    ),
    (
        _edit(
            "Deployment",
            "onnx-web-api",
            lambda m: _container(m)["readinessProbe"]["httpGet"].update(path="/healthz"),
        ),
        "api probes",
    ),
    (_edit("Deployment", "onnx-web-api", lambda m: m["spec"].update(replicas=2)), "sets replicas"),
    (
        _edit(
            "PodDisruptionBudget",
            "onnx-web-api",
            lambda m: m["spec"]["selector"]["matchLabels"].update(role="web"),
        ),
        "no PodDisruptionBudget",
    ),
    (
        _edit("NetworkPolicy", "onnx-web-core-egress", lambda m: m["spec"]["egress"].pop(1)),
        "cannot reach Postgres",
    ),
    (
        _edit("ConfigMap", "onnx-web", lambda m: m["data"].update(S3_ENDPOINT="http://minio.objects:9000")),
        "cannot reach S3",
    ),
    (
        _edit(
            "NetworkPolicy",
            "onnx-web-api-ingress",
            lambda m: m["spec"]["podSelector"]["matchLabels"].pop("role"),
        ),
        "worker pods accept connections",
    ),
]


@pytest.mark.parametrize("change", BROKEN_CORE)
def test_core_validation_catches(manifests: list[Manifest], change: Callable[[list[Manifest]], None]) -> None:
    broken = copy.deepcopy(manifests)
    change(broken)
    assert core_problems(broken, KUBERNETES_VERSIONS[-1])


@pytest.mark.parametrize("change", BROKEN_KEDA)
def test_keda_validation_catches(
    manifests: list[Manifest], schemas: dict[str, Any], change: Callable[[list[Manifest]], None]
) -> None:
    broken = copy.deepcopy(manifests)
    change(broken)
    assert keda_problems(broken, schemas)


@pytest.mark.parametrize(("change", "expected"), BROKEN_WIRING)
def test_wiring_check_catches(
    manifests: list[Manifest],
    wiring_inputs: tuple[str, str, str],
    change: Callable[[list[Manifest]], None],
    expected: str,
) -> None:
    broken = copy.deepcopy(manifests)
    change(broken)
    assert any(expected in problem for problem in wiring_problems(broken, *wiring_inputs))


def test_a_secret_kept_in_the_repository_is_refused(
    manifests: list[Manifest], wiring_inputs: tuple[str, str, str]
) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "onnx-web"}, "__file__": "x.yaml"}
    assert "Secret onnx-web is kept in infra/k8s" in wiring_problems([*manifests, secret], *wiring_inputs)


def test_a_misspelt_setting_in_the_documented_secret_is_refused(
    manifests: list[Manifest], wiring_inputs: tuple[str, str, str]
) -> None:
    readme, containerfile, version = wiring_inputs
    broken = readme.replace("--from-literal=S3_SECRET_KEY=", "--from-literal=S3_SECRET=")
    assert "Secret onnx-web key S3_SECRET is not a setting" in wiring_problems(
        manifests, broken, containerfile, version
    )


# -- KEDA's queries on the real schema ------------------------------------------------------


def scaler_queries(manifests: list[Manifest]) -> dict[str, str]:
    """Trigger name -> the SQL KEDA runs for it."""
    scaled = by_kind(manifests, "ScaledObject")["onnx-web-worker"]
    return {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"]}


@pytest.fixture
def scaler(database_url: str) -> Iterator[Callable[[str], float]]:
    """Runs a query as the scaler role of infra/k8s/scaler-role.sql, as KEDA reads it: one number."""
    url = libpq_url(database_url)
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute((K8S / "scaler-role.sql").read_text(encoding="utf-8").encode())

    def run(query: str) -> float:
        with psycopg.connect(url) as conn:
            conn.execute(f"SET ROLE {SCALER_ROLE}".encode())
            row = conn.execute(query.encode()).fetchone()
        assert row is not None and len(row) == 1 and row[0] is not None, "KEDA needs exactly one number"
        return float(row[0])

    try:
        yield run
    finally:
        with psycopg.connect(url, autocommit=True) as owner:
            owner.execute(f"DROP OWNED BY {SCALER_ROLE}".encode())
            owner.execute(f"DROP ROLE {SCALER_ROLE}".encode())


@pytest.mark.integration
def test_scaler_queries_read_the_queue(
    manifests: list[Manifest], engine: sqlalchemy.Engine, job_store: Any, scaler: Callable[[str], float]
) -> None:
    queries = scaler_queries(manifests)
    assert scaler(queries["jobs-outstanding"]) == 0
    assert scaler(queries["oldest-pending-age"]) == 0  # an empty queue is 0, never NULL
    seed_jobs(engine, 3)
    job_store.enqueue(new_job(platform="cpu"))  # no CUDA worker takes it: not counted
    seed_jobs(engine, 2, state="success")
    oldest = job_store.enqueue(new_job())
    shift_time(engine, oldest.name, column="created_at", seconds=600)
    claimed = job_store.claim("w1", platform="cuda", held_models=[])
    assert claimed is not None and claimed.name == oldest.name
    assert scaler(queries["jobs-outstanding"]) == 4  # 3 pending + the running one
    assert 1 <= scaler(queries["oldest-pending-age"]) < 600  # the running job waits no more


@pytest.mark.integration
def test_the_scaler_role_cannot_read_prompts(scaler: Callable[[str], float]) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        scaler("SELECT count(chain) FROM jobs")


@pytest.mark.integration
def test_a_query_on_a_missing_column_fails(manifests: list[Manifest], scaler: Callable[[str], float]) -> None:
    broken = scaler_queries(manifests)["oldest-pending-age"].replace("created_at", "submitted_at")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        scaler(broken)
