"""Run the application under uvicorn on a socket bound here, until SIGTERM or Ctrl-C.

The socket is bound before uvicorn starts, so a port in use is a one-line error and ``--port 0``
picks a free port (the line printed at start names it). On SIGTERM uvicorn stops accepting
connections, lets the requests in flight finish (up to ``DRAIN_TIMEOUT_S``), then the
application's shutdown runs whatever is still queued; the command then exits with status 0.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from collections.abc import Callable

from .app import Settings, create_app
from .servable import Servable

DRAIN_TIMEOUT_S = 30


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve --host {host} ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(servable: Servable, settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          access_log: bool = False, log: Callable[[str], None] = print) -> None:
    import uvicorn

    sock = bind(host, port)
    app = create_app(servable, settings)
    # the multipart parser logs each malformed form it refuses; the client gets a 400 that says so
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_graceful_shutdown=DRAIN_TIMEOUT_S, lifespan="on")
    server = uvicorn.Server(config)
    address = sock.getsockname()[0]
    if not ipaddress.ip_address(address).is_loopback:
        log(f"warning: listening on {address}, reachable from other machines; there is no authentication")
    log(f"serving {servable.describe()}")
    log(f"listening on {url_of(sock)}  (POST /predict, GET /healthz, GET /metrics; the page at /)")
    # uvicorn re-raises the signal it stopped on once it has drained; a no-op SIGTERM handler lets
    # the command return normally after a graceful stop.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    log("stopped")
