"""An HTTP proxy on loopback that fails a share of S3 requests with transient errors.

Sits between the job and moto's server: every ``fail_every``-th request is answered
with 503 SlowDown (S3's throttling error), or the connection is dropped.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)


class FaultyProxy:
    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        fail_every: int = 4,
        reset_every: int = 0,
        fail_when=None,  # (method, path) -> bool: fail every such request (a store down for those keys)
        deny_when=None,  # (method, path) -> bool: answer 403 AccessDenied (a policy that refuses those keys)
    ):
        self.deny_when = deny_when
        self.upstream = (upstream_host, upstream_port)
        self.fail_every = fail_every
        self.fail_when = fail_when
        self.reset_every = reset_every
        self.requests = 0
        self.injected = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                if proxy.reset_every and n % proxy.reset_every == 0:
                    with proxy._lock:
                        proxy.injected += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                doomed = proxy.fail_when is not None and proxy.fail_when(self.command, self.path)
                denied = proxy.deny_when is not None and proxy.deny_when(self.command, self.path)
                if denied or doomed or (proxy.fail_every and n % proxy.fail_every == 0):
                    with proxy._lock:
                        proxy.injected += 1
                    status, body = (403, ACCESS_DENIED) if denied else (503, SLOW_DOWN)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
