"""The gunicorn worker the api runs on: threads, socket time limits, and errors as JSON.

Gunicorn's threaded worker serves each request on a pool thread, so one slow client holds one
thread, not the process: ``/healthz`` keeps answering while others stall. ``ApiWorker`` adds what
it lacks for a service facing the internet:

- a receive and send time limit on every client socket, so a client that stops sending halfway
  through its headers or body (or stops reading the answer) frees its thread after
  ``SOCKET_TIMEOUT_S`` instead of holding it forever;
- gunicorn's own refusals (a request line or headers over the limits, a malformed request) in the
  api's ``{"error": ...}`` JSON shape instead of an HTML page.

``onnx-web api`` starts gunicorn with ``--worker-class service.http_worker.ApiWorker``.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from typing import Any

from gunicorn.http import errors
from gunicorn.workers.gthread import ThreadWorker

#: How long a client may leave its socket silent while sending a request or reading an answer.
SOCKET_TIMEOUT_S = 15
#: Gunicorn's request-parsing errors that have a status of their own; any other parse error is 400.
PARSE_STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (errors.LimitRequestLine, 414, "URI Too Long"),
    (errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    (errors.ExpectationFailed, 417, "Expectation Failed"),
    (errors.ForbiddenProxyRequest, 403, "Forbidden"),
    (errors.ParseException, 400, "Bad Request"),
)
#: The longest part of a parse error's text we send back (it can quote the request line).
MAX_DETAIL_CHARS = 120

log = logging.getLogger(__name__)


class ApiWorker(ThreadWorker):
    """Gunicorn's threaded worker with socket time limits and JSON error answers."""

    def init_process(self) -> None:
        logging.getLogger("gunicorn.error").addFilter(_quiet_slow_clients)
        super().init_process()

    def handle(self, conn: Any) -> Any:
        # Kernel-level limits: they hold across the blocking/non-blocking switches gunicorn makes
        # between keep-alive requests, which reset Python's own socket timeout.
        limit = struct.pack("ll", SOCKET_TIMEOUT_S, 0)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        return super().handle(conn)

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        status, reason = error_status(exc)
        if status >= 500:
            log.error("request failed before reaching the api", exc_info=exc)
            message = reason
        else:
            log.warning("refused a malformed request", extra={"status": status, "error": type(exc).__name__})
            message = f"{reason}: {_detail(exc)}"
        body = json.dumps({"error": message}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        try:
            client.sendall(head + body)
        except OSError:
            log.debug("could not send the error answer; the client is gone")


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and reason for an error raised while gunicorn read a request."""
    for kind, status, reason in PARSE_STATUS:
        if isinstance(exc, kind):
            return status, reason
    return 500, "Internal Server Error"


def _detail(exc: BaseException) -> str:
    text = str(exc).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def _quiet_slow_clients(record: logging.LogRecord) -> bool:
    """Log a client that hit the socket time limit as one warning line, not an error with a traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, BlockingIOError | TimeoutError):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg, record.args, record.exc_info, record.exc_text = (
            "closed a connection that stayed silent for %ss",
            (SOCKET_TIMEOUT_S,),
            None,
            None,
        )
    return True
