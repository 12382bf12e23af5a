"""A reverse proxy on 127.0.0.1 in front of `digest serve`, as nginx or Caddy would be: it
terminates TLS (a self-signed certificate), serves the app under a path prefix, and forwards
each request with X-Forwarded-For and X-Forwarded-Proto (dropping any the client sent) and
the client's Host. `strip` chooses between the two ways proxies pass the path on: nginx's
`proxy_pass http://127.0.0.1:8025/;` strips the prefix, Caddy's `handle` (and nginx without
the trailing slash) forwards it unchanged."""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Not forwarded: they describe one connection (RFC 9110 7.6.1), or are the proxy's to set.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length", "x-forwarded-for",
              "x-forwarded-proto", "x-forwarded-host", "forwarded"}


@contextmanager
def reverse_proxy(upstream_port: int, prefix: str, strip: bool, cert: Path, key: Path,
                  port: int = 0) -> Iterator[int]:
    """An https reverse proxy on 127.0.0.1:`port` (0: a free one) that passes `prefix`/... on to
    http://127.0.0.1:`upstream_port` (without the prefix if `strip`) and answers anything
    else with its own 404; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            if self.path != prefix and not self.path.startswith(prefix + "/") and not (
                    self.path.startswith(prefix + "?")):
                self.answer(404, [("Content-Type", "text/plain")], b"not proxied\n")
                return
            path = self.path[len(prefix):] if strip else self.path
            if not path.startswith("/"):
                path = "/" + path
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers |= {"X-Forwarded-For": self.client_address[0],
                        "X-Forwarded-Proto": "https", "Connection": "close"}
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            try:
                upstream.request(self.command, path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                self.answer(response.status, kept, data)
            finally:
                upstream.close()

        def answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response_only(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_HEAD = forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
