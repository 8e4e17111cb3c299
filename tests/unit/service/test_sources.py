"""Model sources: parsing, local paths, downloads against loopback servers, a fake hub, vetting files."""

from __future__ import annotations

import hashlib
import pickle
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.sources import (
    ParsedSource,
    SourceError,
    SourceSettings,
    detect_format,
    fetch_source,
    parse_source,
    read_safetensors_header,
    require_loadable,
)
from tests.fixtures.loopback import FileHandler, HubHandler, LoopbackServer, Route

MIB = 1 << 20


@pytest.fixture
def files() -> Iterator[LoopbackServer]:
    server = LoopbackServer(FileHandler)
    server.routes = {}  # type: ignore[attr-defined]
    yield server
    server.close()


def routes(server: LoopbackServer) -> dict[str, Route]:
    return server.routes  # type: ignore[attr-defined, no-any-return]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def settings(tmp_path: Path) -> SourceSettings:
    root = tmp_path / "imports"
    root.mkdir()
    return SourceSettings(cache=tmp_path / "cache", import_root=root, max_bytes=8 * MIB, timeout_s=5)


def with_settings(settings: SourceSettings, **changes: Any) -> SourceSettings:
    return SourceSettings(**{**settings.__dict__, **changes})


def downloads(settings: SourceSettings) -> list[str]:
    folder = settings.cache / "downloads"
    return sorted(path.name for path in folder.iterdir() if not path.name.endswith(".lock"))


# --- parse_source --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "https://example.com/models/x.safetensors",
            ParsedSource("http", "https://example.com/models/x.safetensors"),
        ),
        ("HTTP://example.com/a?b=1#frag", ParsedSource("http", "http://example.com/a?b=1")),
        (
            "huggingface://runwayml/stable-diffusion-v1-5",
            ParsedSource("hub", "runwayml/stable-diffusion-v1-5"),
        ),
        ("huggingface://org/repo@refs/pr/1", ParsedSource("hub", "org/repo", "refs/pr/1")),
        ("runwayml/stable-diffusion-v1-5", ParsedSource("hub", "runwayml/stable-diffusion-v1-5")),
        ("org/repo.v2", ParsedSource("hub", "org/repo.v2")),
        ("civitai://12345", ParsedSource("civitai", "12345")),
        ("loras/x.safetensors", ParsedSource("local", "loras/x.safetensors")),
        ("./org/repo", ParsedSource("local", "./org/repo")),
        ("/models/sd", ParsedSource("local", "/models/sd")),
        ("model.ckpt", ParsedSource("local", "model.ckpt")),
        ("diffusion/sd/unet", ParsedSource("local", "diffusion/sd/unet")),
        ("stable-diffusion", ParsedSource("local", "stable-diffusion")),
        ("file:///models/a%20b.onnx", ParsedSource("local", "/models/a b.onnx")),
    ],
)
def test_parse_source_accepts(source: str, expected: ParsedSource) -> None:
    assert parse_source(source) == expected


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("models/x\n.safetensors", "control characters"),
        ("a\x00b", "control characters"),
        (" org/repo", "whitespace"),
        ("https://example.com/" + "a" * 2048, "longer than 2048"),
        ("ftp://example.com/x.ckpt", "unknown source scheme"),
        ("s3://bucket/x.ckpt", "unknown source scheme"),
        ("https:///x.safetensors", "no host"),
        ("https://user:pass@example.com/x", "credentials"),
        ("http://example.com:99999/x", "invalid port"),
        ("huggingface://org", "repository ids"),
        ("huggingface://org/repo/extra", "repository ids"),
        ("huggingface://-org/repo", "repository ids"),
        ("huggingface://org/repo@", "revisions"),
        ("huggingface://org/repo@bad rev", "revisions"),
        ("org/re po", "repository id"),
        ("civitai://", "digits only"),
        ("civitai://12a", "digits only"),
        ("../secrets/x.safetensors", "'..'"),
        ("loras/../../x.safetensors", "'..'"),
        ("file:///models/%2e%2e/x.ckpt", "'..'"),
        ("file://host/x.ckpt", "local path"),
    ],
)
def test_parse_source_rejects(source: str, rule: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_source(source)
    assert caught.value.code == "bad_source"
    assert rule in str(caught.value)


# --- local sources -------------------------------------------------------------------------------


def test_local_source_inside_the_root_is_returned_in_place(settings: SourceSettings) -> None:
    assert settings.import_root is not None
    weights = settings.import_root / "loras" / "x.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert fetch_source("loras/x.safetensors", settings, sha256=sha(b"weights")) == weights.resolve()
    assert fetch_source(f"file://{weights}", settings) == weights.resolve()
    with pytest.raises(SourceError) as caught:
        fetch_source("loras/x.safetensors", settings, sha256=sha(b"other"))
    assert caught.value.code == "hash_mismatch"
    assert weights.exists()


def test_local_source_escaping_the_root_is_refused(settings: SourceSettings, tmp_path: Path) -> None:
    assert settings.import_root is not None
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"secret")
    (settings.import_root / "link.safetensors").symlink_to(outside)
    for source in ("../outside.safetensors", "link.safetensors", str(outside)):
        with pytest.raises(SourceError) as caught:
            fetch_source(source, settings)
        assert caught.value.code == "bad_source", source


def test_local_source_missing_or_disabled(settings: SourceSettings) -> None:
    with pytest.raises(SourceError) as caught:
        fetch_source("missing.safetensors", settings)
    assert caught.value.code == "source_missing"
    with pytest.raises(SourceError) as caught:
        fetch_source("missing.safetensors", with_settings(settings, import_root=None))
    assert caught.value.code == "bad_source"


# --- http(s) downloads ---------------------------------------------------------------------------


def test_download_checks_the_hash_and_reports_progress(
    files: LoopbackServer, settings: SourceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    body = bytes(range(256)) * 16384
    routes(files)["/models/x.safetensors"] = Route(body)
    calls: list[tuple[int, int]] = []
    started = time.monotonic()
    path = fetch_source(
        f"{files.root}/models/x.safetensors?sig=abc",
        settings,
        sha256=sha(body),
        progress=lambda *c: calls.append(c),
    )
    elapsed = time.monotonic() - started
    assert path.read_bytes() == body
    # At most about ten calls a second, plus the final one.
    assert 2 <= len(calls) <= elapsed / 0.1 + 2
    assert any("plain http" in record.message for record in caplog.records)
    assert "sig=abc" not in repr([record.__dict__ for record in caplog.records])
    assert path.parent == settings.cache / "downloads"
    assert path.name.endswith("-x.safetensors")
    assert calls[-1] == (len(body), len(body))
    assert not [name for name in downloads(settings) if name.endswith(".part")]


def test_download_resumes_after_a_cut_connection(files: LoopbackServer, settings: SourceSettings) -> None:
    body = b"0123456789" * 10_000
    routes(files)["/x.bin"] = Route(body, cut_after=30_000)
    path = fetch_source(f"{files.root}/x.bin", settings, sha256=sha(body))
    assert path.read_bytes() == body
    assert len(files.requests) == 2
    assert "Range" not in files.requests[0].headers
    assert files.requests[1].headers["Range"] == "bytes=30000-"


def test_a_server_ignoring_range_restarts_the_download(
    files: LoopbackServer, settings: SourceSettings
) -> None:
    body = b"0123456789" * 10_000
    routes(files)["/x.bin"] = Route(body, cut_after=30_000, ignore_range=True)
    assert fetch_source(f"{files.root}/x.bin", settings, sha256=sha(body)).read_bytes() == body
    assert files.requests[1].headers["Range"] == "bytes=30000-"


def test_download_with_the_wrong_hash_leaves_nothing(files: LoopbackServer, settings: SourceSettings) -> None:
    routes(files)["/x.bin"] = Route(b"not the weights")
    with pytest.raises(SourceError) as caught:
        fetch_source(f"{files.root}/x.bin", settings, sha256=sha(b"weights"))
    assert caught.value.code == "hash_mismatch"
    assert downloads(settings) == []


def test_content_length_over_the_limit_is_refused_before_the_body(
    files: LoopbackServer, settings: SourceSettings
) -> None:
    # The server sends headers only: reading the body would hang until the read timeout.
    routes(files)["/huge.bin"] = Route(hold_length=10**12)
    with pytest.raises(SourceError) as caught:
        fetch_source(f"{files.root}/huge.bin", with_settings(settings, timeout_s=3))
    assert caught.value.code == "too_large"
    assert len(files.requests) == 1
    assert downloads(settings) == []


def test_body_over_the_limit_without_content_length(files: LoopbackServer, settings: SourceSettings) -> None:
    routes(files)["/x.bin"] = Route(b"x" * 5000, content_length=False)
    with pytest.raises(SourceError) as caught:
        fetch_source(f"{files.root}/x.bin", with_settings(settings, max_bytes=4000))
    assert caught.value.code == "too_large"
    assert downloads(settings) == []


def test_not_found_names_the_status_but_not_the_query(
    files: LoopbackServer, settings: SourceSettings
) -> None:
    with pytest.raises(SourceError) as caught:
        fetch_source(f"{files.root}/missing.bin?token=secret", settings)
    assert caught.value.code == "download_failed"
    assert "404" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert len(files.requests) == 1


def test_server_errors_are_retried(files: LoopbackServer, settings: SourceSettings) -> None:
    routes(files)["/x.bin"] = Route(b"weights", fail_statuses=[503, 503])
    assert fetch_source(f"{files.root}/x.bin", settings).read_bytes() == b"weights"
    assert len(files.requests) == 3


def test_three_failures_fail_the_download(files: LoopbackServer, settings: SourceSettings) -> None:
    routes(files)["/x.bin"] = Route(b"weights", fail_statuses=[500, 502, 503])
    with pytest.raises(SourceError) as caught:
        fetch_source(f"{files.root}/x.bin?sig=abc", settings)
    assert caught.value.code == "download_failed"
    assert "503" in str(caught.value)
    assert "sig=abc" not in str(caught.value)


def test_a_finished_download_is_reused_without_a_request(
    files: LoopbackServer, settings: SourceSettings
) -> None:
    routes(files)["/x.bin"] = Route(b"weights")
    first = fetch_source(f"{files.root}/x.bin", settings, sha256=sha(b"weights"))
    assert fetch_source(f"{files.root}/x.bin", settings, sha256=sha(b"weights")) == first
    assert fetch_source(f"{files.root}/x.bin", settings) == first
    assert len(files.requests) == 1


class Cancelled(Exception):
    """What the test's check() raises."""


def test_cancel_keeps_the_part_for_a_later_resume(files: LoopbackServer, settings: SourceSettings) -> None:
    body = np.random.default_rng(0).bytes(3 * MIB)
    routes(files)["/x.bin"] = Route(body)
    checks = 0

    def cancel_on_second_chunk() -> None:
        nonlocal checks
        checks += 1
        if checks == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        fetch_source(f"{files.root}/x.bin", settings, check=cancel_on_second_chunk)
    (part,) = (settings.cache / "downloads").glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(body)
    path = fetch_source(f"{files.root}/x.bin", settings, sha256=sha(body))
    assert path.read_bytes() == body
    assert files.requests[-1].headers["Range"] == f"bytes={kept}-"


# --- civitai -------------------------------------------------------------------------------------


def test_civitai_sends_the_token_and_names_the_file(files: LoopbackServer, settings: SourceSettings) -> None:
    routes(files)["/api/download/models/123"] = Route(redirect="/files/abc")
    disposition = {"Content-Disposition": 'attachment; filename="lora-x.safetensors"'}
    routes(files)["/files/abc"] = Route(b"lora", headers=disposition)
    civitai = with_settings(
        settings, civitai_root=f"{files.root}/api/download/models", civitai_token="secret"
    )
    path = fetch_source("civitai://123", civitai, sha256=sha(b"lora"))
    assert path.name.endswith("-lora-x.safetensors")
    assert path.read_bytes() == b"lora"
    assert files.paths()[0] == "/api/download/models/123?token=secret"
    with pytest.raises(SourceError) as caught:
        fetch_source("civitai://999", civitai)
    assert caught.value.code == "download_failed"
    assert "secret" not in str(caught.value)
    assert "/api/download/models/999" in str(caught.value)


def test_civitai_without_disposition_names_the_version(
    files: LoopbackServer, settings: SourceSettings
) -> None:
    routes(files)["/api/download/models/7"] = Route(b"model")
    civitai = with_settings(settings, civitai_root=f"{files.root}/api/download/models")
    assert fetch_source("civitai://7", civitai).name.endswith("-7.safetensors")
    assert files.paths() == ["/api/download/models/7"]


# --- the Hugging Face hub ------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackServer]:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    server = LoopbackServer(HubHandler)
    server.repos = {  # type: ignore[attr-defined]
        "org/model": {
            "config.json": b'{"model": "tiny"}',
            "model.safetensors": b"safetensors weights",
            "pytorch_model.bin": b"pickle weights",
        },
        "org/huge": {"config.json": b"{}", "model.safetensors": b"x" * 5000},
        "org/pickles": {"config.json": b"{}", "unet/diffusion_pytorch_model.bin": b"pickle weights"},
    }
    yield server
    server.close()


def hub_settings(settings: SourceSettings, hub: LoopbackServer, **changes: Any) -> SourceSettings:
    return with_settings(settings, hf_endpoint=hub.root, **changes)


def resolved(hub: LoopbackServer) -> list[str]:
    return [path for path in hub.paths() if "/resolve/" in path]


def test_hub_snapshot_leaves_out_pickles(hub: LoopbackServer, settings: SourceSettings) -> None:
    calls: list[tuple[int, int]] = []
    folder = fetch_source(
        "huggingface://org/model", hub_settings(settings, hub), progress=lambda *c: calls.append(c)
    )
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == b"safetensors weights"
    assert folder.is_relative_to(settings.cache / "hub")
    assert calls[-1] == (36, 36)
    assert not [path for path in resolved(hub) if path.endswith(".bin")]


def test_hub_snapshot_with_pickles_allowed(hub: LoopbackServer, settings: SourceSettings) -> None:
    folder = fetch_source("org/model", hub_settings(settings, hub, allow_pickle=True))
    assert (folder / "pytorch_model.bin").read_bytes() == b"pickle weights"


def test_hub_repo_of_pickles_only_is_refused(hub: LoopbackServer, settings: SourceSettings) -> None:
    with pytest.raises(SourceError) as caught:
        fetch_source("org/pickles", hub_settings(settings, hub))
    assert caught.value.code == "pickle_refused"
    assert "ONNX_WEB_ALLOW_PICKLE=1" in str(caught.value)
    assert resolved(hub) == []
    folder = fetch_source("org/pickles", hub_settings(settings, hub, allow_pickle=True))
    assert (folder / "unet" / "diffusion_pytorch_model.bin").read_bytes() == b"pickle weights"


def test_hub_repo_over_the_limit_downloads_nothing(hub: LoopbackServer, settings: SourceSettings) -> None:
    with pytest.raises(SourceError) as caught:
        fetch_source("org/huge", hub_settings(settings, hub, max_bytes=4000))
    assert caught.value.code == "too_large"
    assert resolved(hub) == []


def test_hub_offline_uses_the_cached_snapshot(
    hub: LoopbackServer, settings: SourceSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    online = fetch_source("org/model", hub_settings(settings, hub))
    requests = len(hub.requests)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert fetch_source("org/model", hub_settings(settings, hub)) == online
    assert len(hub.requests) == requests
    with pytest.raises(SourceError) as caught:
        fetch_source("org/huge", hub_settings(settings, hub))
    assert caught.value.code == "download_failed"
    assert "not cached" in str(caught.value)


def test_hub_unknown_repo_is_missing(hub: LoopbackServer, settings: SourceSettings) -> None:
    with pytest.raises(SourceError) as caught:
        fetch_source("huggingface://org/unknown@main", hub_settings(settings, hub))
    assert caught.value.code == "source_missing"
    assert "org/unknown@main" in str(caught.value)


# --- detect_format, require_loadable, read_safetensors_header ------------------------------------


def save_safetensors(path: Path) -> Path:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 3), dtype=np.float32)}, str(path))
    return path


def save_torch(path: Path) -> Path:
    import torch

    torch.save({"weight": torch.zeros(2, 3)}, path)
    return path


def save_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": [0.0, 1.0]}))
    return path


def save_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images/a.txt", "hello")
    return path


def save_onnx(path: Path) -> Path:
    import onnx

    graph = onnx.helper.make_graph([], "empty", [], [])
    onnx.save(onnx.helper.make_model(graph), str(path))
    return path


def save_diffusers(path: Path) -> Path:
    path.mkdir()
    (path / "model_index.json").write_text("{}")
    return path


def save_folder(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def save_text(path: Path) -> Path:
    path.write_text("just text")
    return path


@pytest.mark.parametrize(
    ("name", "save", "expected"),
    [
        ("a.bin", save_safetensors, "safetensors"),
        ("a.safetensors", save_torch, "pickle"),
        ("a.ckpt", save_pickle, "pickle"),
        ("a.zip", save_zip, "zip"),
        ("a.onnx", save_onnx, "onnx"),
        ("sd", save_diffusers, "diffusers"),
        ("lora", save_folder, "folder"),
        ("a.onnx", save_text, "unknown"),
    ],
)
def test_detect_format_reads_the_content(
    tmp_path: Path, name: str, save: Callable[[Path], Path], expected: str
) -> None:
    assert detect_format(save(tmp_path / name)) == expected


def test_require_loadable_refuses_pickles_unless_allowed(tmp_path: Path) -> None:
    torch_file = save_torch(tmp_path / "model.safetensors")
    folder = save_folder(tmp_path / "repo")
    (folder / "unet").mkdir()
    save_pickle(folder / "unet" / "diffusion_pytorch_model.bin")
    for path in (torch_file, folder):
        with pytest.raises(SourceError) as caught:
            require_loadable(path, allow_pickle=False)
        assert caught.value.code == "pickle_refused"
        assert "ONNX_WEB_ALLOW_PICKLE=1" in str(caught.value)
        assert "--allow-pickle" in str(caught.value)
        assert "run arbitrary code" in str(caught.value)
        require_loadable(path, allow_pickle=True)
    require_loadable(save_safetensors(tmp_path / "ok.safetensors"), allow_pickle=False)
    require_loadable(save_folder(tmp_path / "clean"), allow_pickle=False)


def test_read_safetensors_header(tmp_path: Path) -> None:
    path = save_safetensors(tmp_path / "a.safetensors")
    header = read_safetensors_header(path)
    assert header["weight"]["shape"] == [2, 3]
    assert header["weight"]["dtype"] == "F32"

    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    cases = {
        "over the file": (10**9).to_bytes(8, "little") + data[8:],
        "not json": data[:8] + b"{" + b"\xff" * (length - 1) + data[8 + length :],
        "short": data[:5],
    }
    for case, corrupted in cases.items():
        path.write_bytes(corrupted)
        with pytest.raises(SourceError) as caught:
            read_safetensors_header(path)
        assert caught.value.code == "bad_source", case
    path.write_bytes(data)
    with pytest.raises(SourceError) as caught:
        read_safetensors_header(path, max_header_bytes=length - 1)
    assert caught.value.code == "bad_source"
