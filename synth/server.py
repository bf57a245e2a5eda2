"""Loopback HTTP server for a synthetic corpus: serves every URL path with the fault its row
was given (404, 500, HTML behind an image content-type, a delay before the bytes, ...), so the
real downloader meets real sockets.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_ERROR_BODIES = {
    404: b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
         b"<body><h1>Not Found</h1></body></html>\n",
    500: b"<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>"
         b"<body><h1>Internal Server Error</h1></body></html>\n",
}


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"CorpusServer binds loopback addresses only (127.0.0.1, ::1, "
                         f"localhost); got {host!r}")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    server_version = "mmcurate-synth/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        if self.server.verbose:
            log.info("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        route = self.server.routes.get(path)
        if route is None:
            return self._send(404, "text/html", _ERROR_BODIES[404], send_body)
        delay = float(route.get("delay") or 0.0)
        # Waiting on the stop event (not sleeping) lets stop() end in-flight slow responses.
        if delay > 0 and self.server.stopping.wait(delay):
            self.close_connection = True
            return
        status = int(route.get("status", 200))
        if route.get("file"):
            try:
                body = (self.server.root / route["file"]).read_bytes()
            except OSError as e:
                log.error("corpus file for %s unreadable: %s", path, e)
                return self._send(500, "text/plain", b"corpus file missing\n", send_body)
        else:
            body = _ERROR_BODIES.get(status, b"")
        self._send(status, route.get("content_type", "application/octet-stream"), body, send_body)

    def _send(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its own timeout); nothing to report


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Don't join handler threads on close: stop() must not wait for 20 s timeouts.
    block_on_close = False
    # Downloaders open many connections at once; the default backlog of 5 refuses some.
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, addr, root: Path, routes: dict, verbose: bool):
        self.root = root
        self.routes = routes
        self.verbose = verbose
        self.stopping = threading.Event()
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)


class CorpusServer:
    """Serve a corpus written by `generate_corpus`.

    >>> with CorpusServer("corpus/") as srv:   # port=0 picks a free port
    ...     urls = [srv.rebase(u) for u in corpus_urls]
    """

    def __init__(self, corpus_dir: str | Path, host: str = "127.0.0.1", port: int | None = 0,
                 verbose: bool = False):
        """port=0 picks a free port; port=None uses the port of the corpus's base_url, so the
        URLs in its urls.parquet resolve as written."""
        _check_loopback(host)
        self.corpus_dir = Path(corpus_dir)
        server_json = self.corpus_dir / "server.json"
        if not server_json.exists():
            raise FileNotFoundError(f"{server_json} not found: {corpus_dir} is not a corpus "
                                    "written by `mmcurate synth` (or generate_corpus)")
        spec = json.loads(server_json.read_text(encoding="utf-8"))
        self.base_url = spec.get("base_url")
        self._routes: dict[str, dict] = spec["routes"]
        if port is None:
            port = urlsplit(self.base_url or "").port
            if port is None:
                raise ValueError(f"{server_json} has no base_url port; pass port explicitly")
        self._host, self._port, self._verbose = host, port, verbose
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------
    def _bind(self) -> _Server:
        if self._server is not None:
            raise RuntimeError("CorpusServer already started")
        self._server = _Server((self._host, self._port), self.corpus_dir, self._routes,
                               self._verbose)
        return self._server

    def start(self) -> "CorpusServer":
        """Serve in a background thread; returns self."""
        server = self._bind()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="corpus-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until stop() is called from another or Ctrl-C."""
        server = self._bind()
        try:
            server.serve_forever(poll_interval=0.1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stopping.set()
            server.server_close()
            self._server = None

    def stop(self) -> None:
        """Stop serving; in-flight delayed responses are dropped, not waited for."""
        server = self._server
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._server = None

    def __enter__(self) -> "CorpusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("CorpusServer not started; call start() first")
        return self._server.server_address[1]

    @property
    def configured_port(self) -> int:
        """The port asked for (0 until started means 'any free port')."""
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def rebase(self, url: str) -> str:
        """The corpus URL `url` pointed at this server (whatever host/port it was written
        with), for when the server runs on another port than the corpus's base_url."""
        parts = urlsplit(url)
        return self.url + parts.path + (f"?{parts.query}" if parts.query else "")

    @property
    def paths(self) -> list[str]:
        return list(self._routes)
