"""A small agnhost-netexec-like HTTP server bound inside a lab namespace."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fixtures.netns import Netns


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        host, port = self.client_address[:2]
        if self.path == "/hostname":
            body = self.server.hostname
        elif self.path == "/clientip":
            body = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        else:
            self.send_error(
                404, f"agnhost-like lab server knows /hostname and /clientip, not {self.path}"
            )
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], hostname: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.hostname = hostname
        super().__init__(address, _Handler)


@dataclass
class LabServer:
    """A running server; stop() closes its socket and joins its thread."""

    netns: Netns
    host: str
    port: int
    hostname: str
    _server: _Server
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_http_server(netns: Netns, host: str, port: int, hostname: str) -> LabServer:
    """Bind in `netns` (the listening socket lives there) and serve from a daemon thread.

    /hostname answers `hostname` (agnhost answers the pod name), /clientip the peer "ip:port".
    """
    server = netns.run(_Server, (host, port), hostname)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"lab-http:{hostname}:{port}",
        daemon=True,
    )
    thread.start()
    return LabServer(netns, host, port, hostname, server, thread)
