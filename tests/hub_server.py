"""A local HTTP server that speaks the small part of the Hugging Face hub API a download uses.

Repos are local folders; point HF_ENDPOINT at `HubServer.url` (in a subprocess: huggingface-hub
reads it at import). It records every request so tests can tell what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
MODEL_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _etag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HubServer:
    def __init__(self, repos: dict[str, Path], delay_s: float = 0.0):
        self.repos = {repo.lower(): Path(folder) for repo, folder in repos.items()}
        self.delay_s = delay_s  # every answer waits this long (a slow or hanging hub)
        self.requests: list[tuple[str, str]] = []  # (method, path)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.handle(self, "GET")

            def do_HEAD(self):
                server.handle(self, "HEAD")

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that hangs up early (timeout tests) is expected

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def file_gets(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append((method, path))
        time.sleep(self.delay_s)
        if match := MODEL_INFO.match(path):
            return self._model_info(request, match["repo"])
        if match := RESOLVE.match(path):
            return self._resolve(request, method, match["repo"], match["file"])
        self._error(request, 404, "EntryNotFound")

    def _folder(self, repo: str):
        return self.repos.get(repo.lower())

    def _model_info(self, request, repo: str) -> None:
        folder = self._folder(repo)
        if folder is None:
            return self._error(request, 404, "RepoNotFound")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        siblings = [{"rfilename": p.relative_to(folder).as_posix(), "size": p.stat().st_size} for p in files]
        body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                           "siblings": siblings}).encode()
        self._send(request, 200, body, {"Content-Type": "application/json"})

    def _resolve(self, request, method: str, repo: str, name: str) -> None:
        folder = self._folder(repo)
        if folder is None:
            return self._error(request, 404, "RepoNotFound")
        file = folder / name
        if not file.is_file():
            return self._error(request, 404, "EntryNotFound")
        body = file.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{_etag(file)}"', "Content-Type": "application/octet-stream"}
        self._send(request, 200, body if method == "GET" else b"", headers, length=len(body))

    def _error(self, request, status: int, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        self._send(request, status, body, {"X-Error-Code": code, "X-Error-Message": code,
                                           "Content-Type": "application/json"})

    @staticmethod
    def _send(request, status: int, body: bytes, headers: dict, length: int | None = None) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body) if length is None else length))
        request.end_headers()
        if body:
            request.wfile.write(body)
