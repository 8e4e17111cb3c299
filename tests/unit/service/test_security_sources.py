"""Conversion sources behind the SSRF controls: redirects, link-local hosts, links out of the import root.

A "public" server here is the loopback file server reached through a patched connect: urllib3's
own (what an unchecked download would use) and ``service.fetch._connect`` (what a checked one uses)
both send ``PUBLIC`` to 127.0.0.1, so a download that follows a redirect into the local network is
seen by the server, and one that is refused is not.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import urllib3.util.connection

from service import fetch
from service.sources import SourceError, SourceSettings, fetch_source, parse_source
from tests.fixtures.loopback import FileHandler, LoopbackServer, Route

PUBLIC = "93.184.215.14"
BODY = b"weights" * 100


@pytest.fixture
def files() -> Iterator[LoopbackServer]:
    server = LoopbackServer(FileHandler)
    server.routes = {"/weights.safetensors": Route(body=BODY)}  # type: ignore[attr-defined]
    yield server
    server.close()


@pytest.fixture
def settings(tmp_path: Path) -> SourceSettings:
    root = tmp_path / "imports"
    root.mkdir()
    return SourceSettings(cache=tmp_path / "cache", import_root=root, max_bytes=1 << 20, timeout_s=5)


@pytest.fixture
def public_is_local() -> Iterator[list[tuple[str, int]]]:
    """Connections to ``PUBLIC`` reach 127.0.0.1; every address connected to is recorded."""
    connected: list[tuple[str, int]] = []
    unchecked = urllib3.util.connection.create_connection
    checked = fetch._connect

    def local(address: tuple[str, int]) -> tuple[str, int]:
        connected.append(address)
        return ("127.0.0.1", address[1]) if address[0] == PUBLIC else address

    def urllib3_connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        return unchecked(local(address), *args, **kwargs)

    def fetch_connect(address: tuple[str, int], timeout: float) -> socket.socket:
        return checked(local(address), timeout)

    with (
        mock.patch.object(urllib3.util.connection, "create_connection", urllib3_connect),
        mock.patch.object(fetch, "_connect", fetch_connect),
    ):
        yield connected


def _routes(server: LoopbackServer) -> dict[str, Route]:
    return server.routes  # type: ignore[attr-defined, no-any-return]


def test_a_public_server_cannot_redirect_a_download_into_the_local_network(
    files: LoopbackServer, settings: SourceSettings, public_is_local: list[tuple[str, int]]
) -> None:
    port = files.httpd.server_address[1]
    _routes(files)["/model.safetensors"] = Route(redirect=f"{files.root}/weights.safetensors")
    with pytest.raises(SourceError) as caught:
        fetch_source(f"http://{PUBLIC}:{port}/model.safetensors", settings)
    assert caught.value.code == "bad_source"
    assert "127.0.0.1" in str(caught.value)
    # The public server was asked; the address it redirected to never was.
    assert files.paths() == ["/model.safetensors"]
    assert public_is_local == [(PUBLIC, port)]


def test_a_public_server_may_redirect_to_another_public_one(
    files: LoopbackServer, settings: SourceSettings, public_is_local: list[tuple[str, int]]
) -> None:
    port = files.httpd.server_address[1]
    _routes(files)["/model.safetensors"] = Route(redirect=f"http://{PUBLIC}:{port}/weights.safetensors")
    path = fetch_source(f"http://{PUBLIC}:{port}/model.safetensors", settings)
    assert path.read_bytes() == BODY
    assert files.paths() == ["/model.safetensors", "/weights.safetensors"]


def test_a_mirror_named_by_its_private_address_still_downloads(
    files: LoopbackServer, settings: SourceSettings
) -> None:
    path = fetch_source(f"{files.root}/weights.safetensors", settings)
    assert path.read_bytes() == BODY


def test_no_redirect_reaches_the_metadata_service(
    files: LoopbackServer, settings: SourceSettings, public_is_local: list[tuple[str, int]]
) -> None:
    port = files.httpd.server_address[1]
    for index, target in enumerate(
        ("http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://[fd00:ec2::254]/")
    ):
        _routes(files)[f"/m{index}.safetensors"] = Route(redirect=target)
        for origin in (files.root, f"http://{PUBLIC}:{port}"):
            with pytest.raises(SourceError) as caught:
                fetch_source(f"{origin}/m{index}.safetensors", settings)
            assert caught.value.code == "bad_source", (origin, target)
    assert {address for address, _ in public_is_local} == {"127.0.0.1", PUBLIC}


@pytest.mark.parametrize(
    "source",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2852039166/x.safetensors",
        "http://0xa9.0xfe.0xa9.0xfe/x",
        "http://[::ffff:169.254.169.254]/x",
        "http://[fd00:ec2::254]/latest",
        "http://[fe80::1%25eth0]/x",
    ],
)
def test_a_link_local_source_is_refused_when_the_document_is_checked(source: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_source(source)
    assert caught.value.code == "bad_source"


def test_a_local_folder_may_not_link_out_of_the_import_root(tmp_path: Path, settings: SourceSettings) -> None:
    secret = tmp_path / "worker-secret.txt"
    secret.write_text("s3 secret key")
    assert settings.import_root is not None
    model = settings.import_root / "model" / "unet"
    model.mkdir(parents=True)
    (model / "model.onnx").symlink_to(secret)
    with pytest.raises(SourceError, match="link out of the import root") as caught:
        fetch_source("./model", settings)
    assert caught.value.code == "bad_source"


def test_links_inside_the_import_root_are_kept(tmp_path: Path, settings: SourceSettings) -> None:
    assert settings.import_root is not None
    shared = settings.import_root / "shared.safetensors"
    shared.write_bytes(BODY)
    model = settings.import_root / "model"
    model.mkdir()
    (model / "weights.safetensors").symlink_to(shared)
    assert fetch_source("./model", settings) == model.resolve()
