"""Fetching the images of ``source-url`` stages without opening a path into the cluster (SSRF).

The stages stay pure: before a chain runs, the worker fetches every URL with
:func:`fetch_image_url` (and every S3 key its own way), decodes the bytes with the same
bomb-checked decoder as uploads, and hands the images to the chain as inputs keyed
``url:<stage>:<i>`` / ``s3:<stage>:<i>`` (:func:`url_inputs`, :func:`s3_inputs` list them).

The controls, from reliability.md API7 (OWASP API7:2023):

- ``http`` and ``https`` only, ports 80 and 443, no credentials in the URL;
- a host written as an IP literal, in any spelling a URL parser accepts (``2130706433``,
  ``0x7f.1``, ``017700000001``, ``127.1``, ``[::ffff:127.0.0.1]``), is decoded here with the
  WHATWG URL standard's rules, so the address checked is the one a connection would reach;
- every A/AAAA record of a name is checked, and any loopback, private, link-local, CGNAT,
  ``0/8``, multicast, reserved or otherwise non-global address refuses the whole URL, as does
  an IPv6 address that embeds such an IPv4 one (mapped, NAT64, 6to4);
- the connection goes to an address that was checked, never to the name again, so DNS
  rebinding cannot swap it; the request still carries the URL's ``Host`` (and TLS its SNI and
  certificate check);
- redirects are not followed, one deadline bounds resolution, connection, TLS and the whole
  response, the body is capped while it streams and its content type must be PNG, JPEG or WebP.

``allow_private=True`` lifts the address and port checks, for tests against a local server and
for deployments that fetch from their own network on purpose; link-local addresses (the cloud
metadata service's ``169.254.169.254`` and ``fd00:ec2::254`` among them) stay refused, as no
image or model server lives there. Every failure raises a subclass
of :class:`SourceURLError`, a ``ValueError``, so the worker fails the job at once, without
retrying, and its ``code`` names the failure.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``socket.getaddrinfo``'s signature: ``(host, port, family=0, type=0, proto=0, flags=0)``.
Resolver = Callable[..., list[tuple[Any, ...]]]

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
PORTS = frozenset(DEFAULT_PORTS.values())
CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
#: Bytes read from the response per call; a refused body has been read at most this far past the cap.
CHUNK = 64 * 1024
#: Longer URLs are refused before they are parsed.
MAX_URL_LENGTH = 2048
T = TypeVar("T")
USER_AGENT = "onnx-web-cluster source-url"

NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: Refused whatever ``ipaddress`` says about them: the ranges reliability.md names, and the
#: special-purpose ones ``is_global`` does not cover in every Python version (multicast, 6to4).
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, with the cloud metadata address 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/96",  # IPv4-compatible (deprecated), with :: and ::1
        "::ffff:0:0/96",  # IPv4-mapped: checked by the address it maps, and refused anyway
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
        str(NAT64),  # reaches the IPv4 address in its last 32 bits
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): reaches the operator's own IPv4 network
        "2002::/16",  # 6to4
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
#: Refused even with ``allow_private``: the link-local ranges, where the cloud metadata service
#: answers (``169.254.169.254``, AWS's ``fd00:ec2::254``), and no server a job fetches from lives.
LINK_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(network) for network in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)

_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_DECIMAL = re.compile(r"^[0-9]+$")
_HEX = re.compile(r"^0x[0-9a-f]*$")


class SourceURLError(ValueError):
    """A source URL could not be fetched; ``code`` says why, for the job's error."""

    code = "source_url_error"


class SourceURLBlocked(SourceURLError):
    """The URL, its address or its answer (a redirect) is not allowed."""

    code = "source_url_blocked"


class SourceURLTooLarge(SourceURLError):
    """The body is larger than the cap; ``received`` is how much of it was read."""

    code = "source_url_too_large"

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


class SourceURLTimeout(SourceURLError):
    """The fetch did not finish before its deadline."""

    code = "source_url_timeout"


class SourceURLBadType(SourceURLError):
    """The answer's content type is not PNG, JPEG or WebP."""

    code = "source_url_bad_type"


class SourceURLFailed(SourceURLError):
    """The server could not be reached or answered with an error status."""

    code = "source_url_failed"


@dataclass(frozen=True)
class SourceURL:
    """A URL that passed the checks that need no network."""

    scheme: str
    #: The host as written, lower-case, without IPv6 brackets.
    host: str
    port: int
    #: Path and query, as sent in the request line.
    target: str
    #: The address, when the host is an IP literal (then no name is resolved).
    literal: IPAddress | None

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host as written, with the port only when it is not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def parse_source_url(url: str, *, allow_private: bool = False) -> SourceURL:
    """Check ``url`` without touching the network; the api may call it to refuse a chain early.

    Refuses other schemes, credentials, malformed hosts and ports, other ports (unless
    ``allow_private``), and IP literals of a refused address (unless ``allow_private``).
    """
    if len(url) > MAX_URL_LENGTH:
        raise SourceURLBlocked(f"source URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise SourceURLBlocked("source URL must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise SourceURLBlocked(f"source URL is malformed: {err}") from err
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise SourceURLBlocked(f"source URL scheme must be http or https, got {scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise SourceURLBlocked("source URL must not carry credentials")
    host = parts.hostname or ""
    literal = ip_literal(host)
    if literal is None:
        _check_host_name(host)
    else:
        _check_address(literal, allow_private=allow_private)
    port = port if port is not None else DEFAULT_PORTS[scheme]
    if not allow_private and port not in PORTS:
        raise SourceURLBlocked(f"source URL port must be 80 or 443, got {port}")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return SourceURL(scheme, host, port, target, literal)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, if it is an IP literal; ``None`` if it is a name."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError as err:
            raise SourceURLBlocked(f"source URL host {host!r} is not a valid IPv6 address") from err
    return _ipv4_literal(host)


def _ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Parse ``host`` as the WHATWG URL standard's IPv4 parser does, so ``127.1`` is 127.0.0.1.

    A host whose last label is a number is an IPv4 address in every browser and in the C
    library's ``inet_aton``: up to four labels, each decimal, ``0x`` hexadecimal or ``0``-led
    octal, the last filling the bytes the others leave. Such a host that does not parse is
    refused rather than handed to a resolver, which might read it yet another way.
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if not (_DECIMAL.match(labels[-1]) or _HEX.match(labels[-1])):
        return None
    numbers = [_ipv4_number(label) for label in labels]
    last = numbers[-1]
    if len(labels) > 4 or None in numbers[:-1] or last is None:
        raise SourceURLBlocked(f"source URL host {host!r} is not a valid IPv4 address")
    leading = [number for number in numbers[:-1] if number is not None]
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(labels)):
        raise SourceURLBlocked(f"source URL host {host!r} is not a valid IPv4 address")
    value = last + sum(number << (8 * (3 - index)) for index, number in enumerate(leading))
    return ipaddress.IPv4Address(value)


def _ipv4_number(label: str) -> int | None:
    if _HEX.match(label):
        return int(label[2:] or "0", 16)
    if not _DECIMAL.match(label):
        return None
    if len(label) > 1 and label.startswith("0"):
        return int(label[1:], 8) if set(label) <= set("01234567") else None
    return int(label)


def _check_host_name(host: str) -> None:
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise SourceURLBlocked(f"source URL host {host!r} is not a valid host name")


def blocked_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why a connection to ``address`` is refused, or ``None`` if it is a public address.

    With ``allow_private`` only link-local addresses (``LINK_LOCAL_NETWORKS``) are refused.
    """
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(address.compressed.split("%")[0])  # the scope changes nothing
        embedded = address.ipv4_mapped or address.sixtofour or _nat64(address) or _translated(address)
        if embedded is not None and (reason := blocked_reason(embedded, allow_private=allow_private)):
            return f"{address} embeds {reason}"
    for network in LINK_LOCAL_NETWORKS if allow_private else BLOCKED_NETWORKS:
        if address.version == network.version and address in network:
            return f"{address} (in {network})"
    if not allow_private and not address.is_global:
        return f"{address} (not a public address)"
    return None


def _nat64(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _translated(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address in the last 32 bits of an IPv4-compatible, IPv4-translated or local-use
    NAT64 address: a translator or a tunnel may deliver such a packet to it."""
    if any(address in network for network in _CARRIES_IPV4):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


_CARRIES_IPV4 = tuple(
    ipaddress.IPv6Network(network) for network in ("::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48")
)


def _check_address(address: IPAddress, *, allow_private: bool = False) -> None:
    reason = blocked_reason(address, allow_private=allow_private)
    if reason:
        raise SourceURLBlocked(f"source URL address refused: {reason}")


def resolve(
    source: SourceURL, *, resolver: Resolver, deadline: float, allow_private: bool
) -> list[IPAddress]:
    """Every address of the source's host, each checked (only for link-local with ``allow_private``),
    in resolver order.

    The resolver runs in a helper thread so the deadline holds even when name resolution hangs
    (``getaddrinfo`` has no timeout of its own); a hung lookup is left to finish on its own.
    """
    if source.literal is not None:
        return [source.literal]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-url-dns")
    try:
        answer = pool.submit(resolver, source.host, source.port, type=socket.SOCK_STREAM)
        infos = answer.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout as err:
        raise SourceURLTimeout(f"resolving {source.host!r} did not finish in time") from err
    except OSError as err:
        raise SourceURLFailed(f"source URL host {source.host!r} does not resolve: {err}") from err
    finally:
        pool.shutdown(wait=False)
    addresses: list[IPAddress] = []
    for info in infos:
        try:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        except ValueError as err:
            raise SourceURLBlocked(f"{source.host!r} resolved to something not an address") from err
        _check_address(address, allow_private=allow_private)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise SourceURLFailed(f"source URL host {source.host!r} has no address")
    return addresses


def _connect(address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection to an address already checked: an IP, never a name to look up again."""
    return socket.create_connection(address, timeout=timeout)


def checked_addresses(
    host: str,
    port: int,
    *,
    timeout_s: float,
    allow_private: bool,
    resolver: Resolver = socket.getaddrinfo,
) -> list[IPAddress]:
    """Every address ``host`` spells or resolves to, each checked as a fetch's are."""
    host = host.lower().removeprefix("[").removesuffix("]")
    literal = ip_literal(host)
    if literal is None:
        _check_host_name(host)
    else:
        _check_address(literal, allow_private=allow_private)
    source = SourceURL("http", host, port, "/", literal)
    deadline = time.monotonic() + timeout_s
    return resolve(source, resolver=resolver, deadline=deadline, allow_private=allow_private)


def connect_checked(
    host: str,
    port: int,
    *,
    timeout_s: float,
    allow_private: bool,
    resolver: Resolver = socket.getaddrinfo,
) -> socket.socket:
    """A TCP connection to ``host``, for a client of its own (``service.sources``' downloads).

    The connection goes to one of :func:`checked_addresses`, never to the name again, so DNS
    rebinding cannot swap it; a client that opens each redirect's connection here has every
    hop checked.
    """
    deadline = time.monotonic() + timeout_s
    addresses = checked_addresses(
        host, port, timeout_s=timeout_s, allow_private=allow_private, resolver=resolver
    )
    errors = []
    for address in addresses:
        try:
            return _connect((str(address), port), _remaining(deadline))
        except TimeoutError:
            raise
        except OSError as err:
            errors.append(f"{address}: {err}")
    raise SourceURLFailed(f"could not connect to {host!r}: {'; '.join(errors)}")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the source URL deadline passed")
    return left


class _DeadlineSocket:
    """The socket calls ``http.client`` makes, each bounded by what is left before the deadline.

    A per-call timeout alone lets a server that drips a byte at a time hold the fetch forever;
    re-arming every call with the time left makes the deadline hold for the whole exchange.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(_remaining(self.deadline))
        self.sock.sendall(data)

    def recv_into(self, buffer: Any) -> int:
        self.sock.settimeout(_remaining(self.deadline))
        return self.sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self), CHUNK)

    def close(self) -> None:
        """Leave the socket open: the fetch closes it once the body is read.

        ``http.client`` closes its connection as soon as the headers say ``Connection: close``,
        before the body is read; a real socket survives that through its file's reference.
        """


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self.sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.sock.recv_into(buffer)


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP connection over a socket opened beforehand, to a checked address."""

    def __init__(self, sock: _DeadlineSocket) -> None:
        super().__init__("pinned.invalid")  # never used: the Host header is set per request
        self.sock = sock

    def connect(self) -> None:
        """The socket is already connected; ``http.client`` must not open another."""


def _handshake(
    raw: socket.socket, source: SourceURL, context: ssl.SSLContext, deadline: float
) -> socket.socket:
    """TLS over ``raw`` with the URL's host as SNI and certificate name, within the deadline.

    Non-blocking, waiting on the socket with the time left: a blocking handshake's timeout
    applies per read, so a server that drips its handshake could outlast the deadline.
    """
    raw.setblocking(False)
    tls = context.wrap_socket(raw, server_hostname=source.host, do_handshake_on_connect=False)
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                ready = select.select([tls], [], [], _remaining(deadline))[0]
            except ssl.SSLWantWriteError:
                ready = select.select([], [tls], [], _remaining(deadline))[1]
            if not ready:
                raise TimeoutError("TLS handshake did not finish in time")
    except BaseException:
        # wrap_socket detached ``raw``: only the TLS socket can close the connection now.
        tls.close()
        raise


def _open(
    source: SourceURL, addresses: list[IPAddress], deadline: float, tls_context: ssl.SSLContext | None
) -> socket.socket:
    """A connection (TLS for https) to the first of ``addresses`` that answers."""
    errors = []
    for address in addresses:
        try:
            raw = _connect((str(address), source.port), _remaining(deadline))
        except TimeoutError:
            raise
        except OSError as err:
            errors.append(f"{address}: {err}")
            continue
        if source.scheme != "https":
            return raw
        try:
            return _handshake(raw, source, tls_context or ssl.create_default_context(), deadline)
        except BaseException:
            raw.close()
            raise
    raise SourceURLFailed(f"could not connect to {source.host!r}: {'; '.join(errors)}")


def fetch_image_url(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    resolver: Resolver = socket.getaddrinfo,
    allow_private: bool = False,
    tls_context: ssl.SSLContext | None = None,
) -> bytes:
    """The body of ``url`` if it is a PNG, JPEG or WebP of at most ``max_bytes``, within ``timeout_s``.

    ``resolver`` looks names up (``socket.getaddrinfo``'s signature); ``tls_context`` verifies
    https servers (default: the system's trust store). See the module docstring for the checks;
    every failure is a :class:`SourceURLError` subclass.
    """
    return _guarded(
        url,
        lambda connection, source: _exchange(connection, source, max_bytes),
        what="fetching the source URL",
        timeout_s=timeout_s,
        resolver=resolver,
        allow_private=allow_private,
        tls_context=tls_context,
    )


def post_json(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout_s: float,
    resolver: Resolver = socket.getaddrinfo,
    allow_private: bool = False,
    tls_context: ssl.SSLContext | None = None,
) -> int:
    """POST a JSON ``body`` to ``url`` under the same controls as a fetch; the answer's status.

    Callbacks (``service.callbacks``) go through here: a user names the URL, so it gets the
    scheme, port and address checks, the pinned connection and one deadline, and no redirect.
    """

    def post(connection: _PinnedConnection, target: SourceURL) -> int:
        sent = {
            **headers,
            "Host": target.host_header,
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Connection": "close",
        }
        connection.request("POST", target.target, body=body, headers=sent)
        response = connection.getresponse()
        response.read(CHUNK)
        return int(response.status)

    return _guarded(
        url,
        post,
        what="calling the URL",
        timeout_s=timeout_s,
        resolver=resolver,
        allow_private=allow_private,
        tls_context=tls_context,
    )


def _guarded(
    url: str,
    exchange: Callable[[_PinnedConnection, SourceURL], T],
    *,
    what: str,
    timeout_s: float,
    resolver: Resolver,
    allow_private: bool,
    tls_context: ssl.SSLContext | None,
) -> T:
    """Check ``url``, connect to a checked address and run ``exchange`` on the pinned connection,
    all within one deadline; connection failures become :class:`SourceURLError` subclasses."""
    deadline = time.monotonic() + timeout_s
    source = parse_source_url(url, allow_private=allow_private)
    addresses = resolve(source, resolver=resolver, deadline=deadline, allow_private=allow_private)
    try:
        sock = _open(source, addresses, deadline, tls_context)
        try:
            return exchange(_PinnedConnection(_DeadlineSocket(sock, deadline)), source)
        finally:
            sock.close()
    except TimeoutError as err:
        raise SourceURLTimeout(f"{what} took longer than {timeout_s:g} s") from err
    except (OSError, http.client.HTTPException) as err:
        if time.monotonic() >= deadline:
            raise SourceURLTimeout(f"{what} took longer than {timeout_s:g} s") from err
        raise SourceURLFailed(f"{what} failed: {type(err).__name__}: {err}") from err


def _exchange(connection: _PinnedConnection, source: SourceURL, max_bytes: int) -> bytes:
    """Send the GET and read an image body of at most ``max_bytes`` from the answer."""
    headers = {
        "Host": source.host_header,
        "User-Agent": USER_AGENT,
        "Accept": ", ".join(sorted(CONTENT_TYPES)),
        "Accept-Encoding": "identity",
        "Connection": "close",
    }
    connection.request("GET", source.target, headers=headers)
    response = connection.getresponse()
    if 300 <= response.status < 400:
        raise SourceURLBlocked(f"the source URL answered {response.status}: redirects are not followed")
    if response.status != 200:
        raise SourceURLFailed(f"the source URL answered {response.status} {response.reason}")
    content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if content_type not in CONTENT_TYPES:
        raise SourceURLBadType(
            f"the source URL sent {content_type or 'no content type'!r}, not one of "
            + ", ".join(sorted(CONTENT_TYPES))
        )
    declared = response.getheader("Content-Length") or ""
    if declared.isdigit() and int(declared) > max_bytes:
        raise SourceURLTooLarge(f"the source URL's body is {declared} bytes, over {max_bytes}", 0)
    body = bytearray()
    while chunk := response.read(CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise SourceURLTooLarge(f"the source URL's body is over {max_bytes} bytes", len(body))
    return bytes(body)
