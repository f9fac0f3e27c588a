"""The controller's plain-HTTP endpoint (port 15014): /metrics for Prometheus, /healthz."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class StatusHTTPServer:
    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], str | None]
    ) -> None:
        """`healthy()` returns None when healthy, else what is wrong (served with a 503)."""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path in ("/healthz", "/healthz/ready"):
                    problem = healthy()
                    code, body = (200, "ok\n") if problem is None else (503, problem + "\n")
                    self._send(code, body.encode(), "text/plain; charset=utf-8")
                else:
                    self._send(404, b"try /metrics or /healthz\n", "text/plain; charset=utf-8")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # scrapes every few seconds would drown the controller's log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
