"""Requests generated from the api's own OpenAPI document, sent to the running stack (schemathesis).

``FUZZ_CASES`` (default 300) bounds the number of requests; ``make test-fuzz`` sends 10,000 and
writes a summary to ``FUZZ_SUMMARY`` (cases, status counts, each distinct failure with the api's
traceback line, the api's peak RSS). ``FUZZ_SEED`` repeats a run.

Every operation gets schema-valid (positive) and schema-breaking (negative) requests. A case fails
when the api answers 5xx (but a 501 the document lists), a status or content type the document does
not list for the operation, a body that breaks the documented schema, or an error that is not JSON.
Afterwards the api must still be healthy and still queue a txt2img job.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.local import RssSampler, api_pid, stack_log
from service.stack import LocalStack

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "300"))
FUZZ_SUMMARY = os.environ.get("FUZZ_SUMMARY")
FUZZ_SEED = int(os.environ.get("FUZZ_SEED") or secrets.randbits(32))
REQUEST_TIMEOUT_S = 30
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]
#: How much of a failing request and answer a report keeps.
SHOWN_CHARS = 600
#: Multipart parts that are uploads: ``source``, ``mask``, ``source:0``, ``mask:<stage>``.
UPLOADS = ("source", "mask")


def _png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


#: The smallest image every image route accepts as a source (and a mask).
SOURCE_PNG = _png(128)


@dataclass
class Failure:
    """One distinct failure: an operation, a status and what was wrong, with its smallest request."""

    operation: str
    status: int
    problems: list[str]
    request: str
    response: str
    request_id: str
    #: The first case that failed this way, to find in the stack's log.
    first_request_id: str
    #: What the api logged about the request: the traceback's last frame of ours and its exception.
    log: str | None = None
    cases: int = 1


@dataclass
class Campaign:
    """Sends the cases and keeps the tallies."""

    stack: LocalStack
    document: dict[str, Any]
    admin_token: str
    session: requests.Session = field(default_factory=requests.Session)
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: dict[tuple[str, int, tuple[str, ...]], Failure] = field(default_factory=dict)

    def secured(self, operation: schemathesis.APIOperation) -> bool:
        return "security" in self.document["paths"][operation.path][operation.method.lower()]

    def documented(self, operation: schemathesis.APIOperation, status: int) -> bool:
        return str(status) in self.document["paths"][operation.path][operation.method.lower()]["responses"]

    def send(self, case: schemathesis.Case, mode: schemathesis.GenerationMode) -> None:
        """One request. In positive mode admin routes get the token, to reach past the 401, and every
        other upload is a real PNG, to reach past the decoder."""
        operation = case.operation
        request_id = f"fuzz-{FUZZ_SEED}-{self.cases}"
        headers = {"X-Request-ID": request_id}
        if mode == schemathesis.GenerationMode.POSITIVE:
            if self.secured(operation):
                headers["Authorization"] = f"Bearer {self.admin_token}"
            if self.cases % 2 and isinstance(case.body, dict):
                for name in case.body:
                    if name.split(":")[0] in UPLOADS:
                        case.body[name] = SOURCE_PNG
        self.cases += 1
        try:
            response = case.call(session=self.session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as err:
            self.fail(case, request_id, 0, [f"no answer: {type(err).__name__}"], "")
            return
        status = response.status_code
        self.statuses[status] += 1
        self.by_operation[operation.label][status] += 1
        problems = []
        if status >= 500 and not (status == 501 and self.documented(operation, status)):
            problems.append(f"server error {status}")
        content_type = ";".join(response.headers.get("content-type", []))
        if status >= 400 and case.method != "HEAD" and not content_type.startswith("application/json"):
            problems.append(f"error answered as {content_type or 'no content type'}, not JSON")
        try:
            case.validate_response(response, checks=CONFORMANCE)
        except FailureGroup as group:
            problems.extend(failure.title for failure in group.exceptions)
        if problems:
            self.fail(case, request_id, status, problems, response.text)

    def fail(
        self, case: schemathesis.Case, request_id: str, status: int, problems: list[str], answer: str
    ) -> None:
        """Keep one failure per (operation, status, problems): the one with the shortest request."""
        key = (case.operation.label, status, tuple(sorted(problems)))
        request = case.as_curl_command(headers={"X-Request-ID": request_id})
        known = self.failures.get(key)
        if known is not None:
            known.cases += 1
            if len(request) < len(known.request):
                known.request, known.response = request[:SHOWN_CHARS], answer[:SHOWN_CHARS]
                known.request_id = request_id
            return
        self.failures[key] = Failure(
            case.operation.label,
            status,
            problems,
            request[:SHOWN_CHARS],
            answer[:SHOWN_CHARS],
            request_id,
            request_id,
        )

    def fuzz(
        self, operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode, cases: int
    ) -> None:
        """Up to ``cases`` requests to one operation; no shrinking, every failure is kept."""

        @hypothesis.seed(FUZZ_SEED)
        @hypothesis.settings(
            max_examples=cases,
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            self.send(case, mode)

        # An operation without inputs has nothing a negative case could break.
        with contextlib.suppress(Unsatisfiable):
            run()

    def run(self, operations: list[schemathesis.APIOperation], total: int) -> None:
        """One case for each operation without inputs, the rest shared by the others' two modes."""
        fixed = [operation for operation in operations if not has_inputs(operation)]
        for operation in fixed:
            self.fuzz(operation, schemathesis.GenerationMode.POSITIVE, 1)
        pairs = [(operation, mode) for operation in operations if has_inputs(operation) for mode in MODES]
        for index, (operation, mode) in enumerate(pairs):
            share = max(1, (total - self.cases) // (len(pairs) - index))
            self.fuzz(operation, mode, share)

    def attach_logs(self, log: Path) -> None:
        """What the api logged at WARNING or above about each failure's requests, by request id."""
        wanted = {failure.request_id for failure in self.failures.values()}
        wanted |= {failure.first_request_id for failure in self.failures.values()}
        found: dict[str, str] = {}
        for line in log.read_text(errors="replace").splitlines():
            if '"request_id"' not in line or not any(f'"{level}"' in line for level in ("warning", "error")):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("request_id") in wanted and entry.get("logger") != "service.access":
                found[entry["request_id"]] = log_summary(entry)
        for failure in self.failures.values():
            failure.log = found.get(failure.request_id) or found.get(failure.first_request_id)

    def summary(self, seconds: float, rss: dict[str, Any]) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "seed": FUZZ_SEED,
            "seconds": round(seconds, 1),
            "cases_per_s": round(self.cases / seconds, 1) if seconds else None,
            "status_counts": {str(status): n for status, n in sorted(self.statuses.items())},
            "by_operation": {
                label: {str(status): n for status, n in sorted(counts.items())}
                for label, counts in sorted(self.by_operation.items())
            },
            "failures": [asdict(failure) for failure in self.failures.values()],
            "failing_cases": sum(failure.cases for failure in self.failures.values()),
            "api_rss": rss,
        }


def has_inputs(operation: schemathesis.APIOperation) -> bool:
    containers = (operation.path_parameters, operation.query, operation.headers, operation.cookies)
    return any(len(container) for container in containers) or bool(operation.body)


def log_summary(entry: dict[str, Any]) -> str:
    """A log record as one line: its message and error, or its traceback's last frame of ours."""
    if "exc" not in entry:
        return f"{entry.get('msg')}: {entry.get('error', '')}".strip(": ")
    lines = str(entry["exc"]).strip().splitlines()
    ours = [
        line.strip() for line in lines if line.strip().startswith("File ") and "site-packages" not in line
    ]
    return " | ".join([str(entry.get("msg")), *ours[-1:], lines[-1].strip()])


def health(stack: LocalStack) -> dict[str, Any]:
    """After the run: /healthz, /readyz and a txt2img submission, as status codes."""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        submitted = client.post(
            "/api/txt2img", json={"prompt": "a cat", "steps": 1, "width": 128, "height": 128}
        )
        return {
            "healthz": client.get("/healthz").status_code,
            "readyz": client.get("/readyz").status_code,
            "txt2img": submitted.status_code,
            "txt2img_status": submitted.json().get("status") if submitted.status_code == 200 else None,
        }


def streams(document: dict[str, Any], path: str, method: str) -> bool:
    """Whether an operation answers an event stream."""
    ok = document["paths"][path][method.lower()]["responses"].get("200", {})
    return "text/event-stream" in ok.get("content", {})


def test_event_streams_open_and_refuse_bad_names(stack: LocalStack) -> None:
    document = httpx.get(f"{stack.url}/api/openapi.json", timeout=30).json()
    paths = [
        path for path, item in document["paths"].items() if "get" in item and streams(document, path, "get")
    ]
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        for path in paths:
            with client.stream("GET", path, params={"jobs": "no-such-job"}) as events:
                assert events.status_code == 200
                assert events.headers["content-type"].startswith("text/event-stream")
                assert next(events.iter_lines()).startswith("retry:")
            for bad in ({}, {"jobs": ",".join(["a"] * 11)}, {"jobs": "\x00"}):
                refused = client.get(path, params=bad)
                assert refused.status_code == 400, (path, bad, refused.text)
                assert refused.headers["content-type"].startswith("application/json")


def test_generated_requests_get_documented_answers_and_no_5xx(stack: LocalStack, admin_token: str) -> None:
    document = httpx.get(f"{stack.url}/api/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_url(f"{stack.url}/api/openapi.json")
    # An event stream stays open for minutes; test_event_streams_open_and_refuse_bad_names covers it.
    operations = [
        operation
        for result in schema.get_all_operations()
        if not streams(document, (operation := result.ok()).path, operation.method)
    ]
    campaign = Campaign(stack, document, admin_token)
    started = time.monotonic()
    with RssSampler(api_pid(stack)) as rss:
        campaign.run(operations, FUZZ_CASES)
    seconds = time.monotonic() - started
    after = health(stack)
    campaign.attach_logs(stack_log(stack))
    summary = {**campaign.summary(seconds, rss.peak.to_dict()), "health_after": after}
    if FUZZ_SUMMARY:
        out = Path(FUZZ_SUMMARY)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        shutil.copy(stack_log(stack), out.with_suffix(".stack.log"))

    assert campaign.cases >= min(FUZZ_CASES, len(operations))
    healthy = after == {"healthz": 200, "readyz": 200, "txt2img": 200, "txt2img_status": "pending"}
    if campaign.failures or not healthy:
        pytest.fail(
            f"{len(campaign.failures)} distinct failures in {campaign.cases} cases; afterwards {after}:\n"
            + json.dumps(summary["failures"], indent=1, ensure_ascii=False)
        )
