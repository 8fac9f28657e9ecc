"""A local HTTP server on 127.0.0.1 for download tests: Range support that can be switched off,
a stall mode, an optional Basic-auth login, and a log of the Range headers it received."""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class ArchiveServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.root = root
        self.honour_range = True
        self.stall_after: int | None = None  # bytes sent before going silent
        self.ranges: list[str | None] = []
        self.login: tuple[str, str] | None = None  # (user, password) it wants, as HTTP Basic auth

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"


class Handler(BaseHTTPRequestHandler):
    server: ArchiveServer

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.server.login is not None:
            wanted = "Basic " + base64.b64encode(":".join(self.server.login).encode()).decode()
            if self.headers.get("Authorization") != wanted:
                self.send_response(401 if self.headers.get("Authorization") is None else 403)
                self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        self.server.ranges.append(header)
        start = 0
        if header and self.server.honour_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.stall_after is not None:
            self.wfile.write(body[: self.server.stall_after])
            self.wfile.flush()
            time.sleep(5)  # longer than the client's timeout in the test
            return
        self.wfile.write(body)


def serve(root: Path) -> tuple[ArchiveServer, threading.Thread]:
    server = ArchiveServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
