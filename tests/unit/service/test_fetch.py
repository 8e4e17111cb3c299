"""``service.fetch``: the SSRF corpus of reliability.md A4, against servers on 127.0.0.1 only.

Every "public" address here is a stub: a resolver answers it and a patched ``_connect`` either
refuses to connect (the fetch must never get that far) or connects to a local server instead.
"""

from __future__ import annotations

import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.prefetch import s3_inputs, split_sources, url_inputs
from service import fetch
from service.fetch import (
    CHUNK,
    SourceURLBadType,
    SourceURLBlocked,
    SourceURLError,
    SourceURLFailed,
    SourceURLTimeout,
    SourceURLTooLarge,
    fetch_image_url,
    parse_source_url,
)

PUBLIC = "93.184.215.14"
CAP = 256 * 1024
TIMEOUT = 0.6


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


@dataclass
class Server:
    """A local HTTP server that records every request it gets."""

    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)
    #: Bytes the ``/big`` handler managed to hand to its socket before the client left.
    sent: list[int] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _handler(server: Server, redirect_to: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def _start(self, content_type: str, length: int | None = None, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()

        def do_GET(self) -> None:
            server.hits.append((self.path, self.headers.get("Host", "")))
            if self.path == "/image.png":
                self._start("image/png; charset=binary", len(PNG))
                self.wfile.write(PNG)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", redirect_to())
                self.end_headers()
            elif self.path == "/html":
                self._start("text/html", 6)
                self.wfile.write(b"<html>")
            elif self.path == "/missing":
                self._start("text/plain", 0, status=404)
            elif self.path == "/declared-huge":
                self._start("image/png", 10**9)
                self.wfile.write(PNG)
            elif self.path == "/big":
                self._stream(b"\0" * CHUNK, 10**4, 0)
            elif self.path == "/slow":
                self._start("image/png")
                self._stream(b"\0", 100, 0.05)
            elif self.path == "/slow-headers":
                self._stream(b"HTTP/1.0 200 OK\r\nX-Drip: " + b"a" * 100, 1, 0.05, drip=True)

        def _stream(self, piece: bytes, count: int, pause: float, drip: bool = False) -> None:
            if not drip and pause == 0:
                self._start("image/png")
            sent = 0
            try:
                for _ in range(count):
                    for byte in [piece[i : i + 1] for i in range(len(piece))] if drip else [piece]:
                        self.wfile.write(byte)
                        self.wfile.flush()
                        sent += len(byte)
                        time.sleep(pause)
            except OSError:
                pass
            server.sent.append(sent)

    return Handler


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    """An "external" server standing in for the internet and an "internal" one that must get no hit."""
    started = []
    records = []
    for _ in range(2):
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        httpd.daemon_threads = True
        record = Server(httpd.server_address[1])
        records.append(record)
        started.append(httpd)
    external, internal = records
    for httpd, record in zip(started, records, strict=True):
        httpd.RequestHandlerClass = _handler(record, lambda: f"{internal.base}/image.png")
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield external, internal
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"the fetch went on to the network: {args}")


def _resolver(*answers: str) -> Callable[..., list[tuple[Any, ...]]]:
    """A stub resolver answering ``answers`` for any name, as ``getaddrinfo`` would."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in answers
        ]

    return resolve


def _fetch(url: str, **options: Any) -> bytes:
    return fetch_image_url(url, **{"max_bytes": CAP, "timeout_s": TIMEOUT, **options})


def test_fetches_a_png_from_the_local_server(servers: tuple[Server, Server]) -> None:
    external, _ = servers
    assert _fetch(f"{external.base}/image.png", allow_private=True) == PNG
    assert external.hits == [("/image.png", f"127.0.0.1:{external.port}")]


def _corpus(port: int) -> list[tuple[str, Callable[..., Any]]]:
    """reliability.md A4's corpus: ``(url, resolver)``, every one aimed at the internal server."""
    hosts_file = _resolver("127.0.0.1", "::1")  # what /etc/hosts says of localhost
    literal = _never  # IP literals must be judged without any lookup
    return [
        (f"http://127.0.0.1:{port}/", literal),
        (f"http://localhost:{port}/", hosts_file),
        ("http://localhost/", hosts_file),
        (f"http://[::1]:{port}/", literal),
        ("http://2130706433/", literal),
        (f"http://2130706433:{port}/", literal),
        ("http://0x7f.1/", literal),
        ("http://017700000001/", literal),
        ("http://127.1/", literal),
        ("http://0/", literal),
        ("http://[::ffff:127.0.0.1]/", literal),
        ("http://169.254.169.254/latest/meta-data/", literal),
        ("http://10.0.0.1/", literal),
        (f"http://user@127.0.0.1:{port}/", literal),
        ("http://user:secret@example.com/", _resolver(PUBLIC)),
        ("file:///etc/passwd", literal),
        ("gopher://x/", literal),
        ("ftp://x/", literal),
        ("http://private.example/", _resolver("10.0.0.1")),
        ("http://loop.example/", _resolver("127.0.0.1")),
        ("http://mixed.example/", _resolver(PUBLIC, "10.0.0.1")),
        ("http://v6.example/", _resolver(PUBLIC, "fd00::1")),
        (f"http://{PUBLIC}:8080/", literal),
        ("http://[fe80::1%25eth0]/", literal),
        ("http://%31%32%37.0.0.1/", literal),
        ("http://127.0.0.1.5/", literal),
    ]


def test_the_ssrf_corpus_is_refused_without_a_connection(servers: tuple[Server, Server]) -> None:
    _, internal = servers
    corpus = _corpus(internal.port)
    with mock.patch.object(fetch, "_connect", _never):
        for url, resolver in corpus:
            with pytest.raises(SourceURLBlocked) as caught:
                _fetch(url, resolver=resolver)
            assert caught.value.code == "source_url_blocked", url
    assert len(corpus) >= 25
    assert internal.hits == []


def test_refusals_name_the_reason() -> None:
    for url, reason in (
        ("http://127.1/", "127.0.0.1 \\(in 127.0.0.0/8\\)"),
        ("http://[::ffff:169.254.169.254]/", "embeds 169.254.169.254"),
        ("http://[64:ff9b::10.1.2.3]/", "embeds 10.1.2.3"),
        ("http://100.64.0.1/", "100.64.0.0/10"),
        ("http://224.0.0.1/", "224.0.0.0/4"),
        ("http://255.255.255.255/", "240.0.0.0/4"),
        (f"http://{PUBLIC}:22/", "port must be 80 or 443"),
        ("gopher://x/", "scheme must be http or https"),
        ("http://a b/", "without spaces"),
        ("http://bad_label-.example/", "not a valid host name"),
    ):
        with pytest.raises(SourceURLBlocked, match=reason):
            parse_source_url(url)


def test_a_public_address_passes_the_checks() -> None:
    parsed = parse_source_url(f"https://{PUBLIC}/a/b.png?size=2")
    assert (parsed.port, parsed.target, parsed.literal) == (
        443,
        "/a/b.png?size=2",
        ipaddress.ip_address(PUBLIC),
    )
    assert parse_source_url("http://Example.COM:443/").host_header == "example.com:443"


def test_dns_rebinding_cannot_swap_the_checked_address(servers: tuple[Server, Server]) -> None:
    external, internal = servers
    calls: list[str] = []
    connected: list[tuple[str, int]] = []

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        return _resolver(PUBLIC if len(calls) == 1 else "127.0.0.1")(host, port)

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        connected.append(address)
        # The public address is a stand-in: the bytes go to the local "external" server.
        return socket.create_connection(("127.0.0.1", external.port), timeout=timeout)

    with mock.patch.object(fetch, "_connect", connect):
        assert _fetch("http://rebind.example/image.png", resolver=rebinding) == PNG
    assert calls == ["rebind.example"]
    assert connected == [(PUBLIC, 80)]
    assert external.hits == [("/image.png", "rebind.example")]
    assert internal.hits == []


def test_redirects_are_not_followed(servers: tuple[Server, Server]) -> None:
    external, internal = servers
    with pytest.raises(SourceURLBlocked, match="302: redirects are not followed"):
        _fetch(f"{external.base}/redirect", allow_private=True)
    assert internal.hits == []


def test_a_streamed_body_over_the_cap_stops_one_chunk_past_it(servers: tuple[Server, Server]) -> None:
    external, _ = servers
    with pytest.raises(SourceURLTooLarge) as caught:
        _fetch(f"{external.base}/big", allow_private=True)
    assert CAP < caught.value.received <= CAP + CHUNK
    assert caught.value.code == "source_url_too_large"
    with pytest.raises(SourceURLTooLarge, match="1000000000 bytes") as declared:
        _fetch(f"{external.base}/declared-huge", allow_private=True)
    assert declared.value.received == 0


@pytest.mark.parametrize("path", ["/slow", "/slow-headers"])
def test_a_slow_server_hits_the_total_timeout(servers: tuple[Server, Server], path: str) -> None:
    external, _ = servers
    started = time.monotonic()
    with pytest.raises(SourceURLTimeout) as caught:
        _fetch(f"{external.base}{path}", allow_private=True)
    elapsed = time.monotonic() - started
    # Each byte arrives well within the timeout: only a deadline for the whole fetch stops it.
    assert TIMEOUT <= elapsed <= TIMEOUT + 1
    assert caught.value.code == "source_url_timeout"


def test_a_hung_resolver_hits_the_timeout() -> None:
    release = threading.Event()

    def hung(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        release.wait(5)
        return []

    started = time.monotonic()
    with pytest.raises(SourceURLTimeout, match="resolving"):
        _fetch("http://slow-dns.example/", resolver=hung)
    release.set()
    assert time.monotonic() - started <= TIMEOUT + 1


def test_other_content_types_and_error_statuses_are_refused(servers: tuple[Server, Server]) -> None:
    external, _ = servers
    with pytest.raises(SourceURLBadType, match="text/html") as caught:
        _fetch(f"{external.base}/html", allow_private=True)
    assert caught.value.code == "source_url_bad_type"
    with pytest.raises(SourceURLFailed, match="404"):
        _fetch(f"{external.base}/missing", allow_private=True)


def test_an_unreachable_server_and_an_unknown_name_fail_permanently() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(SourceURLFailed, match="could not connect"):
        _fetch(f"http://127.0.0.1:{port}/", allow_private=True)

    def unknown(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(SourceURLFailed, match="does not resolve") as caught:
        _fetch("http://nowhere.example/", resolver=unknown)
    assert isinstance(caught.value, ValueError)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=images.test",
            "-addext",
            "subjectAltName=DNS:images.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_sends_the_host_as_sni_and_checks_the_certificate(
    servers: tuple[Server, Server], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    names: list[str | None] = []
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server_context.sni_callback = lambda sock, name, context: names.append(name)
    record = Server(0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(record, lambda: "/"))
    httpd.daemon_threads = True
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    port = httpd.server_address[1]
    trusting = ssl.create_default_context(cafile=str(cert))
    try:
        body = _fetch(
            f"https://images.test:{port}/image.png",
            resolver=_resolver("127.0.0.1"),
            allow_private=True,
            tls_context=trusting,
        )
        assert body == PNG
        assert names == ["images.test"]
        assert record.hits == [("/image.png", f"images.test:{port}")]
        with pytest.raises(SourceURLFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            _fetch(f"https://127.0.0.1:{port}/image.png", allow_private=True, tls_context=trusting)
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- the property: any spelling of a refused address is refused, without a lookup -------------

REFUSED_V4 = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
]
REFUSED_V6 = [ipaddress.IPv6Network(n) for n in ("::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8")]


def _in(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy[Any]:
    return st.integers(0, network.num_addresses - 1).map(lambda offset: network[offset])


def _label(value: int, radix: str) -> str:
    return {"dec": str(value), "hex": f"0x{value:x}", "HEX": f"0X{value:X}", "oct": f"0{value:o}"}[radix]


@st.composite
def _v4_spelling(draw: st.DrawFn) -> str:
    address = draw(st.sampled_from(REFUSED_V4).flatmap(_in))
    value, octets = int(address), address.packed
    radix = st.sampled_from(["dec", "hex", "HEX", "oct"])
    form = draw(st.sampled_from(["dotted", "one", "three", "two", "mapped", "mapped-hex", "nat64", "6to4"]))
    if form == "dotted":
        host = ".".join(_label(octet, draw(radix)) for octet in octets)
    elif form == "one":
        host = _label(value, draw(radix))
    elif form == "three":
        host = (
            f"{_label(octets[0], draw(radix))}.{_label(octets[1], draw(radix))}."
            f"{_label(value & 0xFFFF, draw(radix))}"
        )
    elif form == "two":
        host = f"{_label(octets[0], draw(radix))}.{_label(value & 0xFFFFFF, draw(radix))}"
    elif form == "mapped":
        host = f"[::ffff:{address}]"
    elif form == "mapped-hex":
        host = f"[::ffff:{value >> 16:x}:{value & 0xFFFF:x}]"
    elif form == "nat64":
        host = f"[64:ff9b::{address}]"
    else:
        host = f"[2002:{value >> 16:x}:{value & 0xFFFF:x}::1]"
    return host + ("." if draw(st.booleans()) and not host.startswith("[") else "")


@st.composite
def _v6_spelling(draw: st.DrawFn) -> str:
    address = draw(st.sampled_from(REFUSED_V6).flatmap(_in))
    text = draw(st.sampled_from([address.compressed, address.exploded]))
    return f"[{text.upper() if draw(st.booleans()) else text}]"


@settings(max_examples=400, deadline=None)
@given(host=st.one_of(_v4_spelling(), _v6_spelling()), port=st.sampled_from(["", ":80", ":443", ":8080"]))
def test_every_spelling_of_a_refused_address_is_refused(host: str, port: str) -> None:
    with mock.patch.object(fetch, "_connect", _never), pytest.raises(SourceURLBlocked):
        _fetch(f"http://{host}{port}/x.png", resolver=_never)


def test_source_lists_and_prefetch_keys() -> None:
    assert split_sources(" http://a/x.png ,http://b/y%2Cz.png", "source_urls") == [
        "http://a/x.png",
        "http://b/y%2Cz.png",
    ]
    for bad in ("", "  ", "a,,b", None, 3):
        with pytest.raises(ValueError, match="source_urls"):
            split_sources(bad, "source_urls")
    chain: dict[str, Any] = {
        "stages": [
            {"name": "get", "type": "source-url", "params": {"source_urls": "http://a/1.png,http://a/2.png"}},
            {"name": "up", "type": "upscale-simple", "params": {}},
            {"name": "s3", "type": "source-s3", "params": {"bucket": "inbox", "source_keys": "x.png"}},
        ]
    }
    assert url_inputs(chain) == [("url:get:0", "http://a/1.png"), ("url:get:1", "http://a/2.png")]
    assert s3_inputs(chain) == [("s3:s3:0", "inbox", "x.png")]
    chain["stages"][2]["params"].pop("bucket")
    with pytest.raises(ValueError, match="bucket"):
        s3_inputs(chain)
    assert issubclass(SourceURLError, ValueError)
