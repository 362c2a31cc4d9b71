"""Real servers on loopback for the dataset sources: S3 (moto server), plain HTTP, a stand-in Hub.

- ``MotoServer``: moto's S3-compatible server in its own process (``python -m moto.server``),
  optionally enforcing IAM credentials, so boto3 talks real HTTP to a real S3 API.
- ``serve_directory``: the standard library's HTTP file server (HEAD + GET, Last-Modified).
- ``HubStandIn``: a STAND-IN for huggingface.co's REST API (not the Hub: the real one cannot
  run here), following the requests ``huggingface_hub`` 2.4.0 sends (constraints.txt pins it).
  Dataset reads (the resolver): ``/api/datasets/<repo>[/revision/<rev>]`` for the repo's commit
  and file list, ``/datasets/<repo>/resolve/<rev>/<path>`` for file bytes; dataset repos are
  directories ``<root>/<org>/<name>/<revision>/...``, one with a ``.private`` file needs the token.
  ``/api/whoami-v2`` for the connection test. Model repos (the publisher), in memory, see
  :class:`_ModelRepos`: create, info, branch, preupload, the LFS batch API with its upload and
  verify, the NDJSON commit, the commit list, ``validate-yaml`` and ``resolve``.
"""

from __future__ import annotations

import base64
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
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
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


# --- model repos: what the Hub stores and refuses (huggingface_hub 2.4.0's requests) -----------

# The Hub's default .gitattributes: these suffixes are stored in LFS, whatever their size.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".model",
    ".gguf",
    ".npz",
    ".zip",
    ".tar",
    ".gz",
)
LFS_THRESHOLD = 10 * 1000 * 1000  # the Hub refuses a regular (non-LFS) file over 10 MB
GITATTRIBUTES = "".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES
).encode()
RACE_FILE = "raced.txt"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def stored_in_lfs(path: str, size: int, sample: bytes = b"") -> bool:
    """What the Hub's preupload answers ``lfs`` for: an LFS suffix, over 10 MB, or binary."""
    return path.endswith(LFS_SUFFIXES) or size > LFS_THRESHOLD or b"\0" in sample


@dataclass
class RepoFile:
    data: bytes
    lfs: bool

    def info(self, path: str) -> dict:
        entry: dict = {"rfilename": path, "size": len(self.data), "blobId": git_blob_sha1(self.data)}
        if self.lfs:
            sha256 = hashlib.sha256(self.data).hexdigest()
            entry["lfs"] = {"sha256": sha256, "size": len(self.data), "pointerSize": 134}
        return entry

    def oid(self) -> str:  # what preupload answers: the client's ``_local_oid``
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, RepoFile]
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"))


@dataclass
class ModelRepo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)

    def commit(self, branch: str, title: str, files: dict[str, RepoFile]) -> Commit:
        parent = self.branches.get(branch)
        seed = f"{parent}|{title}|{len(self.commits)}|{sorted((p, f.oid()) for p, f in files.items())}"
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), parent, title, files)
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)

    def history(self, revision: str) -> list[Commit]:
        commit, chain = self.resolve(revision), []
        while commit:
            chain.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return chain


class _HubHandler(http.server.BaseHTTPRequestHandler):
    root: Path
    token: str
    requests_seen: list[str]
    state: HubState

    def log_message(self, *args):
        pass

    # --- plumbing ---

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(
            status, json.dumps(value).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _error(self, status: int, code: str, message: str, **extra: str) -> None:
        body = json.dumps({"error": message, **extra}).encode()
        self._send(
            status,
            body,
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
        )

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _parts(self) -> list[str]:
        # Split before unquoting: a revision is sent quoted (``refs%2Fpr%2F1``).
        return [unquote(part) for part in urlsplit(self.path).path.strip("/").split("/")]

    def _authorization(self) -> str:
        """ "ok", "none" (no token sent) or "wrong"."""
        header = self.headers.get("Authorization")
        if not header:
            return "none"
        return "ok" if header == f"Bearer {self.token}" else "wrong"

    def _refuse_unauthenticated(self) -> bool:
        """A write needs the token: none -> 401, a wrong one -> 401 (the Hub's own messages)."""
        auth = self._authorization()
        if auth == "ok":
            return False
        if auth == "wrong":
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
        else:
            self._error(401, "Unauthorized", "You must be authenticated to access this resource")
        return True

    # --- dataset repos (directories) ---

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

    # --- model repos (memory) ---

    def _model(self, org: str, name: str) -> ModelRepo | None:
        """The repo, or None (with the Hub's answer sent) when it is missing or private to the caller."""
        repo = self.state.models.get(f"{org}/{name}")
        if repo is None or (repo.private and self._authorization() != "ok"):
            # The Hub does not tell a private repo from a missing one.
            self._error(401 if self._authorization() != "ok" else 404, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _model_revision(self, repo: ModelRepo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

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
        raw = self._parts()
        with self.state.lock:
            if raw[:2] == ["api", "models"] and len(raw) >= 4:
                return self._model_get(raw[2], raw[3], raw[4:])
            if len(raw) >= 5 and raw[2] == "resolve":
                return self._model_resolve(raw[0], raw[1], raw[3], "/".join(raw[4:]))
        return self._error(404, "NotFound", "Not found")

    def _model_get(self, org: str, name: str, rest: list[str]) -> None:
        repo = self._model(org, name)
        if repo is None:
            return None
        if not rest or rest[0] == "revision":
            commit = self._model_revision(repo, rest[1] if len(rest) >= 2 else "main")
            if commit is None:
                return None
            info = {
                "id": f"{org}/{name}",
                "sha": commit.oid,
                "private": repo.private,
                "siblings": [file.info(path) for path, file in sorted(commit.files.items())],
            }
            return self._json(info)
        if rest[0] == "commits" and len(rest) >= 2:
            commit = self._model_revision(repo, rest[1])
            if commit is None:
                return None
            history = [
                {
                    "id": c.oid,
                    "authors": [{"user": "tester"}],
                    "date": c.date,
                    "title": c.title,
                    "message": "",
                }
                for c in repo.history(rest[1])
            ]
            return self._json(history)
        if rest[0] == "tree" and len(rest) >= 2:  # list_repo_tree (snapshot_download): one page, recursive
            commit = self._model_revision(repo, rest[1])
            if commit is None:
                return None
            under = "/".join(rest[2:])
            entries = []
            for path, file in sorted(commit.files.items()):
                if under and not path.startswith(f"{under}/"):
                    continue
                entry: dict = {
                    "type": "file",
                    "path": path,
                    "size": len(file.data),
                    "oid": git_blob_sha1(file.data),
                }
                if file.lfs:
                    entry["lfs"] = {
                        "oid": hashlib.sha256(file.data).hexdigest(),
                        "size": len(file.data),
                        "pointerSize": 134,
                    }
                entries.append(entry)
            return self._json(entries)
        if rest[0] == "refs":
            branches = [
                {"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()
            ]
            return self._json({"branches": branches, "converts": [], "tags": []})
        return self._error(404, "NotFound", "Not found")

    def _model_resolve(self, org: str, name: str, revision: str, path: str) -> None:
        repo = self._model(org, name)
        if repo is None:
            return None
        commit = self._model_revision(repo, revision)
        if commit is None:
            return None
        file = commit.files.get(path)
        if file is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision!r}")
        etag = hashlib.sha256(file.data).hexdigest() if file.lfs else git_blob_sha1(file.data)
        return self._send(200, file.data, {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid})

    def do_POST(self):
        raw = self._parts()
        self.requests_seen.append("POST /" + "/".join(raw))
        body = self._body()
        with self.state.lock:
            if raw == ["api", "repos", "create"]:
                return self._create_repo(json.loads(body))
            if raw == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body))
            if raw[:2] == ["api", "models"] and len(raw) >= 6 and raw[4] == "preupload":
                return self._preupload(raw[2], raw[3], "/".join(raw[5:]), json.loads(body))
            if raw[:2] == ["api", "models"] and len(raw) >= 6 and raw[4] == "commit":
                return self._commit(raw[2], raw[3], "/".join(raw[5:]), body)
            if raw[:2] == ["api", "models"] and len(raw) >= 6 and raw[4] == "branch":
                return self._create_branch(raw[2], raw[3], "/".join(raw[5:]), json.loads(body or b"{}"))
            if len(raw) == 6 and raw[1].endswith(".git") and raw[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(raw[0], raw[1].removesuffix(".git"), json.loads(body))
            if raw[:1] == ["lfs-verify"] and len(raw) == 2:
                return self._lfs_verify(raw[1], json.loads(body))
        return self._error(404, "NotFound", "Not found")

    def do_PUT(self):
        raw = self._parts()
        self.requests_seen.append("PUT /" + "/".join(raw))
        body = self._body()
        with self.state.lock:
            if raw[:1] == ["lfs-upload"] and len(raw) == 2:
                return self._lfs_upload(raw[1], body)
        return self._error(404, "NotFound", "Not found")

    def _create_repo(self, payload: dict) -> None:
        if self._refuse_unauthenticated():
            return None
        if payload.get("type", "model") != "model":
            return self._error(400, "BadRequest", "this stand-in creates model repos only")
        repo_id = f"{payload.get('organization')}/{payload.get('name')}"
        if repo_id in self.state.models:
            # The Hub's 409 names the existing repo's URL (the client reads it).
            return self._error(
                409, "Conflict", "You already created this model repo", url=f"{self.state.url}/{repo_id}"
            )
        repo = ModelRepo(private=payload.get("visibility") == "private")
        # The Hub's first commit of a new repo holds its .gitattributes.
        repo.commit("main", "initial commit", {".gitattributes": RepoFile(GITATTRIBUTES, lfs=False)})
        self.state.models[repo_id] = repo
        return self._json({"url": f"{self.state.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        import yaml

        content = payload.get("content", "")
        if content.startswith("---"):
            header = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                metadata = yaml.safe_load(header)
            except yaml.YAMLError as error:
                return self._json(
                    {"errors": [{"message": f"Invalid YAML: {error}"}]}, 400, {"X-Error-Code": "BadRequest"}
                )
            if metadata is not None and not isinstance(metadata, dict):
                return self._json({"errors": [{"message": "metadata must be a mapping"}]}, 400)
        return self._json({"errors": [], "warnings": []})

    def _create_branch(self, org: str, name: str, branch: str, payload: dict) -> None:
        if self._refuse_unauthenticated():
            return None
        repo = self._model(org, name)
        if repo is None:
            return None
        if branch in repo.branches:
            return self._error(409, "Conflict", f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", "Invalid starting point")
        repo.branches[branch] = start.oid
        return self._json({})

    def _preupload(self, org: str, name: str, revision: str, payload: dict) -> None:
        if self._refuse_unauthenticated():
            return None
        repo = self._model(org, name)
        if repo is None:
            return None
        commit = self._model_revision(repo, revision)
        if commit is None:
            return None
        answers = []
        for entry in payload.get("files", []):
            sample = base64.b64decode(entry.get("sample", ""))
            remote = commit.files.get(entry["path"])
            answers.append(
                {
                    "path": entry["path"],
                    "uploadMode": "lfs" if stored_in_lfs(entry["path"], entry["size"], sample) else "regular",
                    "shouldIgnore": False,
                    "oid": remote.oid() if remote else None,
                }
            )
        return self._json({"files": answers, "commitOid": commit.oid})

    def _lfs_batch(self, org: str, name: str, payload: dict) -> None:
        if self._refuse_unauthenticated():
            return None
        if self._model(org, name) is None:
            return None
        objects = []
        for entry in payload.get("objects", []):
            oid, size = entry["oid"], entry["size"]
            stored = self.state.lfs.get(oid)
            if stored is not None and len(stored) == size:
                objects.append({"oid": oid, "size": size})  # already there: no actions
                continue
            ticket = uuid.uuid4().hex  # a pre-signed URL: the upload itself carries no token
            self.state.tickets[ticket] = (oid, size)
            actions = {
                "upload": {"href": f"{self.state.url}/lfs-upload/{ticket}"},
                "verify": {"href": f"{self.state.url}/lfs-verify/{ticket}"},
            }
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        return self._json(
            {"transfer": "basic", "objects": objects},
            headers={"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_upload(self, ticket: str, body: bytes) -> None:
        if ticket not in self.state.tickets or self.state.expire_uploads:
            return self._error(403, "Forbidden", "Request has expired or the signature does not match")
        oid, size = self.state.tickets[ticket]
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            return self._error(400, "BadDigest", "The content's sha256 does not match the LFS oid")
        self.state.lfs[oid] = body
        return self._send(200, b"")

    def _lfs_verify(self, ticket: str, payload: dict) -> None:
        if self._refuse_unauthenticated():
            return None
        oid, size = self.state.tickets.get(ticket, (None, None))
        if oid != payload.get("oid") or oid not in self.state.lfs or len(self.state.lfs[oid]) != size:
            return self._error(404, "NotFound", "LFS object not found")
        return self._json({})

    def _commit(self, org: str, name: str, revision: str, body: bytes) -> None:
        if self._refuse_unauthenticated():
            return None
        repo = self._model(org, name)
        if repo is None:
            return None
        if revision not in repo.branches:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if self.state.race.pop(f"{org}/{name}", False):  # another client commits first
            head = repo.resolve(revision)
            assert head is not None
            raced = dict(head.files) | {RACE_FILE: RepoFile(b"someone else's commit\n", lfs=False)}
            repo.commit(revision, "a racing commit", raced)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        head = repo.branches[revision]
        parent = header.get("parentCommit")
        if parent is not None and not head.startswith(parent):
            return self._error(
                412, "PreconditionFailed", "A commit has happened since. Please refresh and try again."
            )
        files = dict(repo.commits[head].files)
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                data = base64.b64decode(value["content"])
                if stored_in_lfs(value["path"], len(data), data[:512]):
                    return self._error(
                        400,
                        "BadRequest",
                        f"Your push was rejected because it contains files larger than 10 MB or binary files "
                        f"not tracked by LFS: {value['path']}. Please use https://git-lfs.github.com/",
                    )
                files[value["path"]] = RepoFile(data, lfs=False)
            elif line["key"] == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None or value.get("algo") != "sha256":
                    return self._error(
                        400,
                        "BadRequest",
                        "Your push was rejected because an LFS pointer pointed to a file that does not exist. "
                        f"Offending file: - {value['path']}",
                    )
                files[value["path"]] = RepoFile(data, lfs=True)
            elif line["key"] == "deletedFile" and files.pop(value["path"], None) is None:
                return self._error(
                    404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}"
                )
        if lost := self.state.lose.pop(f"{org}/{name}", None):  # a fault: the server drops a file
            files.pop(lost, None)
        commit = repo.commit(revision, header.get("summary", ""), files)
        return self._json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.state.url}/{org}/{name}/commit/{commit.oid}",
            }
        )


@dataclass
class HubState:
    url: str = ""
    lock: threading.RLock = field(default_factory=threading.RLock)
    models: dict[str, ModelRepo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # oid -> content (the LFS store)
    tickets: dict[str, tuple[str, int]] = field(default_factory=dict)  # pre-signed upload URLs
    race: dict[str, bool] = field(default_factory=dict)
    lose: dict[str, str] = field(default_factory=dict)
    expire_uploads: bool = False


class HubStandIn:
    """A loopback STAND-IN of the Hub's REST API (huggingface_hub 2.4.0's requests) over ``root``
    (dataset repos) and memory (model repos); ``token`` is the one valid token, with write access.

    It refuses what the Hub refuses: a write without the token or with another (401), a private
    repo to a caller without the token (401, as if missing), an LFS pointer to content never
    uploaded, a regular file the Hub stores in LFS (an LFS suffix, over 10 MB, or binary), an
    upload whose sha256 is not its oid, a commit whose ``parentCommit`` is not the head (412).
    Uploads go through LFS only (Xet is the Hub's other protocol: run the client with
    ``HF_HUB_DISABLE_XET=1``). ``tests/integration/test_hub_standin.py`` holds it to this.
    """

    def __init__(self, root: Path, token: str):
        self.state = HubState()
        handler = type(
            "Handler",
            (_HubHandler,),
            {"root": root, "token": token, "requests_seen": [], "state": self.state},
        )
        self.requests_seen = handler.requests_seen
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = self.state.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def commits(self, repo_id: str, revision: str = "main") -> list[Commit]:
        """The branch's history, newest first."""
        with self.state.lock:
            return self.state.models[repo_id].history(revision)

    def race_next_commit(self, repo_id: str) -> None:
        """The next commit request to ``repo_id`` finds that another client committed first."""
        with self.state.lock:
            self.state.race[repo_id] = True

    def expire_uploads(self, expired: bool = True) -> None:
        """A fault: every LFS upload URL is refused as expired (403), as storage does past its deadline."""
        with self.state.lock:
            self.state.expire_uploads = expired

    def lose_in_next_commit(self, repo_id: str, path: str) -> None:
        """A fault, not the Hub's behaviour: the next commit to ``repo_id`` is stored without ``path``."""
        with self.state.lock:
            self.state.lose[repo_id] = path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
