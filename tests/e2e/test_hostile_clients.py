"""Slow and malformed clients against the api as gunicorn serves it (``onnx-web run``'s stack).

Gunicorn answers some requests itself, before the app sees them; those answers must be the api's
JSON too. And clients that stall halfway must neither block other requests nor hold a thread
for longer than the socket time limit.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from service.config import API_KEEPALIVE_S
from service.http_worker import SOCKET_TIMEOUT_S
from service.stack import LocalStack

#: More stalled clients than the api has processes: each used to hold a whole process.
STALLED_CLIENTS = 6


def raw_request(stack: LocalStack, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", stack.options.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_an_over_long_request_line_is_a_json_414(stack: LocalStack) -> None:
    answer = raw_request(
        stack, b"GET /api/job/status?jobs=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414")
    assert b"application/json" in head
    assert body.startswith(b'{"error": "URI Too Long')


def test_too_many_header_bytes_are_a_json_431_or_400(stack: LocalStack) -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (index, b"v" * 100) for index in range(200))
    answer = raw_request(stack, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] in (b"400", b"431")
    assert b"application/json" in head and body.startswith(b'{"error": ')


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer with a Content-Length body from ``sock``; b"" if the server closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({name.lower(): value for name, value in fields.items()}[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_connection_idle_between_polls_is_kept_for_the_next_request(stack: LocalStack) -> None:
    # A GUI polls every second or two on one connection. gunicorn's default keep-alive (2 s) closed
    # it in between, and a request sent as the server closed it failed (locust saw it on POSTs).
    idle_s = 3.5
    assert 2 < idle_s < API_KEEPALIVE_S
    with socket.create_connection(("127.0.0.1", stack.options.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(idle_s)


@pytest.fixture
def stalled(stack: LocalStack) -> Iterator[list[socket.socket]]:
    """Clients stopped halfway: half in their headers, half in a body they promised."""
    with ExitStack() as stack_of_sockets:
        sockets = []
        for index in range(STALLED_CLIENTS):
            sock = stack_of_sockets.enter_context(socket.create_connection(("127.0.0.1", stack.options.port)))
            if index % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
            else:
                sock.sendall(
                    b"POST /api/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 1000\r\n\r\n{"prompt": '
                )
            sockets.append(sock)
        yield sockets


def test_stalled_clients_neither_block_others_nor_hold_their_threads(
    stack: LocalStack, stalled: list[socket.socket]
) -> None:
    # With one thread per process, these six would have held both api processes for a minute.
    with httpx.Client(base_url=stack.url, timeout=5) as client:
        for _ in range(5):
            assert client.get("/healthz").status_code == 200
        assert client.get("/api/job/status", params={"jobs": "txt2img_1_abc_1"}).status_code == 200

    deadline = time.monotonic() + SOCKET_TIMEOUT_S * 3
    for sock in stalled:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            leftover = sock.recv(65536)
        except ConnectionResetError:
            leftover = b""
        # Closed by the server (an empty read), or answered with an error it could still send.
        assert leftover == b"" or leftover.startswith(b"HTTP/1.1 4"), leftover[:200]
