"""HTTP endpoints in a background thread: /healthz, /state and /metrics (stdlib server, read-only)."""
from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST

from fer_edge.errors import FerEdgeError

log = logging.getLogger(__name__)
# How often serve_forever looks for a shutdown request: stop() returns within this.
HTTP_POLL_S = 0.1


def _cannot_listen(host: str, port: int, error: Exception) -> FerEdgeError:
    reason = getattr(error, "strerror", None) or str(error)
    return FerEdgeError(f"http.host, http.port: cannot listen on {host}:{port} ({reason}); "
                        "change them, or turn HTTP off (http.enabled = false, --no-http)")


def check_address(host: str, port: int) -> None:
    """Refuse a listen address the server could not bind (an invalid or unknown host name, an address
    not on this machine) without taking `port`: a throwaway port on the same address is bound instead."""
    with socket.socket(ThreadingHTTPServer.address_family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        # ValueError: a name IDNA cannot encode; TypeError: a NUL in the name.
        except (OSError, ValueError, TypeError) as error:
            raise _cannot_listen(host, port, error) from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # A client that goes away mid-response (a reset, a health checker's own timeout) is routine;
        # socketserver's default prints a traceback per request into the daemon's log.
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("http: client %s went away (%s)", client_address[0], error)
            return
        super().handle_error(request, client_address)


class StatusServer:
    """Serves the daemon's health, state and metrics; it never serves images."""

    def __init__(self, host: str, port: int, health: Callable[[], tuple[bool, dict]],
                 state: Callable[[], dict], metrics: Callable[[], bytes], client_timeout_s: float = 10.0):
        routes = {
            "/healthz": lambda: self._health_response(health),
            "/state": lambda: (200, "application/json", _json(state())),
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics()),
        }

        class Handler(BaseHTTPRequestHandler):
            # A socket timeout per connection: an idle or stalled client gives its thread back.
            timeout = client_timeout_s

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._respond(body_too=True)

            def do_HEAD(self) -> None:  # noqa: N802 (health checkers often ask with HEAD)
                self._respond(body_too=False)

            def _respond(self, body_too: bool) -> None:
                route = routes.get(self.path.split("?", 1)[0])
                status, content_type, body = route() if route else (404, "application/json", _json({"error": "not found"}))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body_too:
                    self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # requests are routine: debug level only
                log.debug("http: " + format, *args)

        try:
            self._server = _Server((host, port), Handler)
        except (OSError, ValueError, TypeError) as error:  # a port in use, as in check_address
            raise _cannot_listen(host, port, error) from None
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": HTTP_POLL_S},
                                        name="fer-edge-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the port is the OS's pick when 0 was asked for."""
        return self._server.server_address[:2]

    @staticmethod
    def _health_response(health: Callable[[], tuple[bool, dict]]) -> tuple[int, str, bytes]:
        healthy, details = health()
        return (200 if healthy else 503), "application/json", _json(details)

    def start(self) -> None:
        self._thread.start()
        log.info("HTTP: serving /healthz, /state and /metrics on http://%s:%d", *self.address)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _json(payload: dict) -> bytes:
    return json.dumps(payload).encode()
