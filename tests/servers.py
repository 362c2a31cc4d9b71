"""Real servers on loopback for the dataset sources: S3 (moto server), plain HTTP, a stand-in Hub.

- ``MotoServer``: moto's S3-compatible server in its own process (``python -m moto.server``),
  optionally enforcing IAM credentials, so boto3 talks real HTTP to a real S3 API.
- ``serve_directory``: the standard library's HTTP file server (HEAD + GET, Last-Modified).
- ``HubStandIn``: stands in for huggingface.co's REST API, only the two endpoints the
  resolver's real ``huggingface_hub`` client calls (``/api/datasets/<repo>[/revision/<rev>]``
  for the repo's commit and file list, ``/datasets/<repo>/resolve/<rev>/<path>`` for file
  bytes), plus ``/api/whoami-v2`` for the connection test. Repos are directories
  ``<root>/<org>/<name>/<revision>/...``; a repo with a ``.private`` file needs the token.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """``python -m moto.server`` on a loopback port; stop() kills it by PID."""

    def __init__(self, *, enforce_auth_after: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        if enforce_auth_after is not None:  # the first N requests (set-up) go unauthenticated
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(enforce_auth_after)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5):
                return
            if self.process.poll() is not None:
                raise RuntimeError("moto server exited at start")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("moto server did not start")

    def client(self, service: str = "s3", **credentials):
        import boto3

        credentials = credentials or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", **credentials)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@contextlib.contextmanager
def serve_directory(root: Path, handler: type[http.server.BaseHTTPRequestHandler] = _QuietFiles):
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def commit_of(revision: str) -> str:
    return hashlib.sha1(revision.encode()).hexdigest()


class _HubHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    token: str
    requests_seen: list[str]

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
        )

    def _repo(self, org: str, name: str) -> Path | None:
        repo = self.root / org / name
        if not repo.is_dir():
            return None
        if (repo / ".private").exists() and self.headers.get("Authorization") != f"Bearer {self.token}":
            return None  # the Hub answers 401 + RepoNotFound for private repos without access
        return repo

    def _revision(self, repo: Path, revision: str) -> Path | None:
        for candidate in repo.iterdir():
            if candidate.is_dir() and revision in (candidate.name, commit_of(candidate.name)):
                return candidate
        return None

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        self.requests_seen.append(path)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "whoami-v2"]:
            if self.headers.get("Authorization") == f"Bearer {self.token}":
                return self._send(200, json.dumps({"name": "tester", "type": "user"}).encode())
            return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            org, name = parts[2], parts[3]
            revision = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
            repo = self._repo(org, name)
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            tree = self._revision(repo, revision)
            if tree is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
            info = {
                "id": f"{org}/{name}",
                "sha": commit_of(tree.name),
                "private": (repo / ".private").exists(),
                "siblings": [{"rfilename": f} for f in files],
            }
            return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        if parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            repo = self._repo(parts[1], parts[2])
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            tree = self._revision(repo, parts[4])
            file = tree / "/".join(parts[5:]) if tree else None
            if file is None or not file.is_file():
                return self._error(404, "EntryNotFound", "Entry not found")
            body = file.read_bytes()
            headers = {"ETag": f'"{hashlib.sha256(body).hexdigest()}"', "X-Repo-Commit": commit_of(tree.name)}
            return self._send(200, body, headers)
        return self._error(404, "NotFound", "Not found")


class HubStandIn:
    """A loopback stand-in of the Hub's REST API over ``root``; ``token`` opens private repos."""

    def __init__(self, root: Path, token: str):
        handler = type("Handler", (_HubHandler,), {"root": root, "token": token, "requests_seen": []})
        self.requests_seen = handler.requests_seen
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
