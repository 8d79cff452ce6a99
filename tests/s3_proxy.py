"""A counting pass-through HTTP proxy in front of an S3 server, on 127.0.0.1.

Point a client's endpoint (``AWS_ENDPOINT_URL``) at ``proxy.endpoint`` and every request it
makes is forwarded unchanged (headers included, so SigV4 signatures stay valid) to the real
server, and logged: method, path, query, ``Range`` header, status, response body bytes.
That is how the S3 tests and ``bench/bench_s3.py`` count what one ``cdc`` command fetches,
from outside the process, without touching the code under test.

Importable without pytest (the benchmark uses it).
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    query: str
    range: str | None
    status: int
    body_bytes: int  # response body bytes sent to the client


class CountingProxy:
    """``with CountingProxy("http://127.0.0.1:7480") as p: ... p.requests``."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.endpoint = ""

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def snapshot(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def _record(self, r: Request) -> None:
        with self._lock:
            self.requests.append(r)

    def __enter__(self) -> CountingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP or k.lower() == "content-length"}
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                                  timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True,
                                    skip_accept_encoding=True)
                    for k, v in headers.items():
                        conn.putheader(k, v)
                    conn.endheaders(body)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                if self.command != "HEAD" or "content-length" not in {
                        k.lower() for k, _ in resp.getheaders()}:
                    self.send_header("Content-Length", str(len(data)))
                else:
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                path, _, query = self.path.partition("?")
                proxy._record(Request(self.command, path, query, self.headers.get("Range"),
                                      resp.status, 0 if self.command == "HEAD" else len(data)))

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
