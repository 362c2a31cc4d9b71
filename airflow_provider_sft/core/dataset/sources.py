"""Where a dataset comes from: parse a source string and list its data files.

One string names the source, as in the original component:

- ``bundled``: the sample chat dataset shipped with the package;
- a path: absolute, or relative to the workspace (the PVC root); ``pvc://rel/path`` is the
  same relative form. A directory contributes every data file below it, in path order; a
  directory ``datasets.save_to_disk()`` wrote contributes its Arrow shards (a DatasetDict's
  ``split``, ``train`` by default);
- ``s3://bucket/key`` (one object) or ``s3://bucket/prefix/`` (every data object under it);
- ``http(s)://...``: one file;
- ``hf://org/name[@revision][:split]`` or a bare ``org/name``: a HuggingFace Hub dataset.

Every source lists :class:`SourceFile` entries with a stable identity (size, mtime, ETag or
commit) so an unchanged source is not resolved twice. Sources never write anything.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_sft.core.dataset.formats import format_from_name, is_data_file
from airflow_provider_sft.core.dataset.options import DatasetOptions, S3Options
from airflow_provider_sft.core.dataset.streams import ChunkReader, buffered
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.files import system_tree
from airflow_provider_sft.core.sample_data import bundled_dataset_path

BUNDLED_SOURCE = "bundled"
HUB_PREFIX = "hf://"
PVC_PREFIX = "pvc://"
_HUB_ID = re.compile(
    r"^(?:datasets/)?(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^:]+))?(?::(?P<split>[\w.-]+))?$"
)
_SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev")}
_SPLIT_WORDS |= {"test": ("test", "testing", "eval", "evaluation")}


@dataclass(frozen=True)
class SourceFile:
    """One data file of a source: its display name, identity, and how to open it."""

    name: str
    identity: dict[str, Any]
    opener: Callable[[], contextlib.AbstractContextManager[BinaryIO]]
    local_path: Path | None = None  # set when the file is on disk (Parquet reads it in place)


@dataclass
class Source:
    """A parsed dataset source. ``uri`` is its canonical, secret-free name (stats, lineage, errors)."""

    uri: str
    lister: Callable[[], list[SourceFile]] = field(repr=False)
    #: Options of :data:`HUB_ONLY_OPTIONS` this source uses too (a saved DatasetDict's ``split``).
    selects: tuple[str, ...] = ()

    def files(self) -> list[SourceFile]:
        files = self.lister()
        if not files:
            raise DatasetError(
                f"Dataset source {self.uri} holds no data files (.jsonl, .json, .parquet, .csv)"
            )
        return files


# --- local files and PVC paths ------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _open_local(path: Path) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    return lambda: path.open("rb", buffering=1 << 20)


def _local_file(path: Path, name: str | None = None) -> SourceFile:
    """A file on disk; one reached through a symlink into a system directory (``/etc``...) is refused."""
    resolved = path.resolve()
    tree = system_tree(resolved)
    if tree is not None and resolved != Path(os.path.abspath(path)):
        raise DatasetError(
            f"{name or path}: a symlink into the system directory {tree}, not a dataset; refused"
        )
    stat = path.stat()
    identity = {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return SourceFile(name or str(path), identity, _open_local(path), local_path=path)


def _list_local(path: Path, shown: str) -> list[SourceFile]:
    if path.is_file():
        return [_local_file(path, shown)]
    root = path.resolve()
    files = []
    for candidate in sorted(path.rglob("*")):
        relative = candidate.relative_to(path)
        if any(part.startswith((".", "_")) for part in relative.parts) or not is_data_file(candidate.name):
            continue
        if not candidate.is_file():
            continue
        if not _inside(candidate.resolve(), root):
            raise DatasetError(f"{candidate}: symlink points outside the dataset directory {path}; refused")
        files.append(_local_file(candidate))
    return files


#: What ``datasets.save_to_disk()`` writes: a Dataset's ``state.json`` names its Arrow shards in
#: order; a DatasetDict's ``dataset_dict.json`` names its splits, each a Dataset directory.
SAVED_DATASET_STATE = "state.json"
SAVED_DATASET_DICT = "dataset_dict.json"


def _saved_json(path: Path, key: str) -> list[Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError) as error:
        raise DatasetError(f"{path}: unreadable datasets.save_to_disk() metadata ({error})") from None
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{path}: datasets.save_to_disk() metadata without {key!r}")
    return value


def saved_dataset_split(path: Path, split: str | None) -> Path:
    """The Dataset directory of a saved DatasetDict's ``split`` (``train``, or the only split)."""
    splits = [str(name) for name in _saved_json(path / SAVED_DATASET_DICT, "splits")]
    chosen = split or ("train" if "train" in splits or len(splits) > 1 else splits[0])
    if chosen not in splits:
        raise DatasetError(
            f"{path}: this datasets.save_to_disk() DatasetDict has no split {chosen!r} "
            f"(splits: {', '.join(splits)}); pass split="
        )
    return path / chosen


def _saved_dataset_files(path: Path) -> list[SourceFile]:
    """The Arrow shards a ``save_to_disk`` Dataset directory names, in its order, confined to it."""
    root = path.resolve()
    files = []
    for entry in _saved_json(path / SAVED_DATASET_STATE, "_data_files"):
        name = entry.get("filename") if isinstance(entry, dict) else None
        shard = path / str(name)
        if not isinstance(name, str) or not _inside(shard.resolve(), root) or shard.resolve() == root:
            raise DatasetError(
                f"{path / SAVED_DATASET_STATE}: shard {name!r} is not a file inside {path}; refused"
            )
        if not shard.is_file():
            raise DatasetError(f"{shard}: named in {SAVED_DATASET_STATE} but missing")
        files.append(_local_file(shard))
    return files


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / SAVED_DATASET_DICT).is_file() or (path / SAVED_DATASET_STATE).is_file())


def local_source(location: str, workspace: Path, *, split: str | None = None) -> Source:
    """An absolute path as given; a relative or ``pvc://`` path confined to the workspace."""
    relative = location.removeprefix(PVC_PREFIX) if location.startswith(PVC_PREFIX) else None
    if relative is None and not os.path.isabs(location):
        relative = location
    if relative is not None:
        if PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
            raise DatasetError(f"Dataset path {location!r} escapes the workspace {workspace}; refused")
        path = workspace / relative
        if path.exists() and not _inside(path.resolve(), workspace.resolve()):
            raise DatasetError(
                f"Dataset path {location!r} is a symlink out of the workspace {workspace}; refused"
            )
    else:
        path = Path(location)
    if not path.exists():
        raise DatasetError(f"Dataset path {path} does not exist")
    if (path / SAVED_DATASET_DICT).is_file() and path.is_dir():
        shown = f"{path}:{split}" if split else str(path)
        return Source(
            shown, lambda: _saved_dataset_files(saved_dataset_split(path, split)), selects=("split",)
        )
    if is_saved_dataset(path):
        return Source(str(path), lambda: _saved_dataset_files(path))
    return Source(str(path), lambda: _list_local(path, str(path)))


# --- S3 -----------------------------------------------------------------------------------------


def _s3_error(error: Exception, uri: str, options: S3Options) -> DatasetError:
    return DatasetError(options.describe_error(error, uri))


def _s3_key_is_safe(relative: str) -> bool:
    parts = PurePosixPath(relative).parts
    return not relative.startswith("/") and ".." not in parts and "\\" not in relative


def s3_source(location: str, options: S3Options) -> Source:
    parts = urlsplit(location)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket:
        raise DatasetError(f"Dataset source {location!r}: an S3 URL needs a bucket (s3://bucket/key)")
    uri = f"s3://{bucket}/{key}"

    @functools.cache
    def client() -> Any:  # one boto3 client per source: building one costs ~0.1-0.5 s
        return options.client()

    def opener(object_key: str) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
        @contextlib.contextmanager
        def open_object() -> Iterator[BinaryIO]:
            try:
                body = client().get_object(Bucket=bucket, Key=object_key)["Body"]
            except Exception as error:
                raise _s3_error(error, f"s3://{bucket}/{object_key}", options) from None
            with contextlib.closing(body):
                yield buffered(ChunkReader(read=body.read))

        return open_object

    def entry(obj_key: str, size: int, etag: str) -> SourceFile:
        identity = {"key": obj_key, "bytes": size, "etag": etag.strip('"')}
        return SourceFile(f"s3://{bucket}/{obj_key}", identity, opener(obj_key))

    def lister() -> list[SourceFile]:
        s3 = client()
        try:
            if key and not key.endswith("/"):
                try:
                    head = s3.head_object(Bucket=bucket, Key=key)
                    return [entry(key, head["ContentLength"], head.get("ETag", ""))]
                except Exception as error:  # a prefix without the trailing slash is not an object
                    if getattr(error, "response", {}).get("Error", {}).get("Code") not in (
                        "404",
                        "NoSuchKey",
                    ):
                        raise
            prefix = key if not key or key.endswith("/") else key + "/"
            files = []
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    relative = obj["Key"][len(prefix) :]
                    if not _s3_key_is_safe(relative):
                        raise DatasetError(
                            f"s3://{bucket}/{obj['Key']}: key would resolve outside the prefix; refused"
                        )
                    name = PurePosixPath(relative).name
                    if relative and is_data_file(name) and not name.startswith((".", "_")):
                        files.append(entry(obj["Key"], obj["Size"], obj.get("ETag", "")))
        except DatasetError:
            raise
        except Exception as error:
            raise _s3_error(error, uri, options) from None
        if not files:
            raise DatasetError(f"{uri}: no such object, and no data files under the prefix {prefix or '/'}")
        return sorted(files, key=lambda f: f.name)

    return Source(uri, lister)


# --- HTTP(S) ------------------------------------------------------------------------------------


def display_url(url: str) -> str:
    """The URL without user info or query string (those may carry credentials or signatures)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


#: Answers worth another try: rate limits and server-side trouble.
RETRY_STATUS = frozenset((408, 429, 500, 502, 503, 504))
HTTP_ATTEMPTS = 4
HTTP_BACKOFF_S = 0.5  # first wait; doubles, at most 8 s


class _RetryableStatus(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(f"HTTP {status} {reason}")


def _retryable(error: BaseException) -> bool:
    """Status codes above, and transport errors (connect, read, timeouts) of httpx or the Hub's httpx2."""
    return isinstance(error, _RetryableStatus) or type(error).__module__.split(".")[0] in ("httpx", "httpx2")


def _http_stream(
    url: str, shown: str, headers: dict[str, str] | None = None, session: Any = None
) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    """Open ``url`` as a buffered byte stream (``session``: the Hub's shared client, else a fresh httpx one).

    Opening is retried (tenacity, exponential backoff) on 408/429/5xx and transport errors;
    other 4xx answers fail at once, naming the status.
    """
    import httpx
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    def send(client: Any) -> Any:
        request = client.build_request("GET", url, headers=headers or {})
        response = client.send(request, stream=True, follow_redirects=True)
        if response.status_code in RETRY_STATUS:
            response.close()
            raise _RetryableStatus(response.status_code, response.reason_phrase)
        return response

    @contextlib.contextmanager
    def open_url() -> Iterator[BinaryIO]:
        client = session or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
        response = None
        try:
            retrying = Retrying(
                stop=stop_after_attempt(HTTP_ATTEMPTS),
                wait=wait_exponential(multiplier=HTTP_BACKOFF_S, max=8.0),
                retry=retry_if_exception(_retryable),
                reraise=True,
            )
            response = retrying(send, client)
            if response.status_code >= 400:
                raise DatasetError(f"{shown}: HTTP {response.status_code} {response.reason_phrase}")
            yield buffered(ChunkReader(chunks=response.iter_raw(1 << 20)))
        except DatasetError:
            raise
        except _RetryableStatus as error:
            raise DatasetError(f"{shown}: {error} after {HTTP_ATTEMPTS} attempts") from None
        except Exception as error:  # transport errors of httpx (or the Hub's httpx2): never echo the raw URL
            raise DatasetError(f"{shown}: request failed ({_transport_error(error, url, shown)})") from None
        finally:
            if response is not None:
                response.close()
            if session is None:
                client.close()

    return open_url


def _transport_error(error: Exception, url: str, shown: str) -> str:
    return f"{type(error).__name__}: {str(error).replace(url, shown)}"


def http_source(url: str) -> Source:
    import httpx

    shown = display_url(url)

    def lister() -> list[SourceFile]:
        try:
            head = httpx.head(url, follow_redirects=True, timeout=10.0)
        except httpx.HTTPError as error:
            raise DatasetError(
                f"{shown}: cannot reach the server ({_transport_error(error, url, shown)})"
            ) from None
        if head.status_code >= 400 and head.status_code != 405:
            raise DatasetError(f"{shown}: HTTP {head.status_code} {head.reason_phrase}")
        identity = {
            "url": shown,
            "etag": head.headers.get("etag"),
            "last_modified": head.headers.get("last-modified"),
            "bytes": head.headers.get("content-length"),
        }
        if not (identity["etag"] or identity["last_modified"]):
            identity["unversioned"] = os.urandom(8).hex()  # no validator: never reuse
        return [SourceFile(shown, identity, _http_stream(url, shown))]

    return Source(shown, lister)


# --- HuggingFace Hub ----------------------------------------------------------------------------


def parse_hub_id(location: str) -> re.Match[str] | None:
    return _HUB_ID.match(location.removeprefix(HUB_PREFIX))


def _split_matches(path: str, split: str) -> bool:
    words = _SPLIT_WORDS.get(split, (split,))
    pattern = r"(^|[/_.-])(" + "|".join(map(re.escape, words)) + r")([/_.-]|$)"
    return re.search(pattern, path) is not None


def select_split(paths: list[str], split: str, subset: str | None) -> list[str]:
    """HuggingFace's file layout conventions: ``[data/][<subset>/]<split>[-NNNNN-of-NNNNN].<ext>``."""
    candidates = [
        p
        for p in paths
        if is_data_file(p) and not any(part.startswith((".", "_")) for part in PurePosixPath(p).parts)
    ]
    if subset:
        candidates = [p for p in candidates if p.startswith((f"{subset}/", f"data/{subset}/"))]
    chosen = [p for p in candidates if _split_matches(p, split)]
    if not chosen and split == "train":
        named = [p for p in candidates if any(_split_matches(p, s) for s in _SPLIT_WORDS)]
        chosen = [] if named else candidates  # no split names at all: every file is "train"
    return sorted(chosen)


def hub_source(location: str, options: DatasetOptions) -> Source:
    match = parse_hub_id(location)
    if match is None:
        raise DatasetError(
            f"Dataset source {location!r} is not a HuggingFace dataset id (org/name[@revision][:split])"
        )
    repo_id = match["repo"]
    revision = options.revision or match["revision"] or options.hf_default_revision
    split = options.split or match["split"] or "train"
    subset = options.subset
    uri = f"{HUB_PREFIX}{repo_id}"

    def lister() -> list[SourceFile]:
        token = options.hf_token.get_secret_value() if options.hf_token else None
        info = _hub_dataset_info(uri, repo_id, revision, options.hf_endpoint, token)
        paths = [s.rfilename for s in info.siblings or []]
        chosen = select_split(paths, split, subset)
        if not chosen:
            where = f"subset {subset!r}, " if subset else ""
            raise DatasetError(
                f"{uri}@{info.sha}: no data files for {where}split {split!r} (files: {', '.join(paths[:10]) or 'none'})"
            )
        return _hub_files(uri, repo_id, info.sha, chosen, options.hf_endpoint, token)

    return Source(
        uri + (f"@{revision}" if revision else "") + (f":{split}" if split != "train" else ""), lister
    )


def _hub_dataset_info(
    uri: str, repo_id: str, revision: str | None, endpoint: str | None, token: str | None
) -> Any:
    """The dataset's file list at ``revision``, its failures as one :class:`DatasetError` each.

    Each says what to do about it (accept the terms, pass a token, unset offline mode), and
    none carries the Hub's own message, which could echo the request.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=endpoint, token=token)
    try:
        return api.dataset_info(repo_id, revision=revision)
    except GatedRepoError:
        raise DatasetError(
            f"{uri}: the dataset is gated; accept its terms and pass a token (hf_conn_id)"
        ) from None
    except RepositoryNotFoundError:
        raise DatasetError(
            f"{uri}: no such dataset on {api.endpoint}, or it is private and the token (hf_conn_id / HF_TOKEN) "
            "is missing or not allowed"
        ) from None
    except RevisionNotFoundError:
        raise DatasetError(f"{uri}: revision {revision!r} does not exist") from None
    except OfflineModeIsEnabled:
        raise DatasetError(
            f"{uri}: HF_HUB_OFFLINE is set, so the Hub cannot be asked for this dataset"
        ) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise DatasetError(f"{uri}: the Hub answered HTTP {status}") from None
    except Exception as error:  # connection errors from httpx
        raise DatasetError(
            f"{uri}: cannot reach the Hub at {api.endpoint} ({type(error).__name__})"
        ) from None


def _hub_files(
    uri: str, repo_id: str, commit: str, paths: list[str], endpoint: str | None, token: str | None
) -> list[SourceFile]:
    """The chosen files, pinned to the commit the listing saw, so every file comes from one revision."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    headers = build_hf_headers(token=token)
    files = []
    for path in paths:
        url = hf_hub_url(repo_id, path, repo_type="dataset", revision=commit, endpoint=endpoint)
        name = f"{uri}@{commit[:12]}/{path}"
        identity = {"repo": repo_id, "commit": commit, "path": path}
        files.append(SourceFile(name, identity, _http_stream(url, name, headers, session=get_session())))
    return files


# --- KFP artifacts ------------------------------------------------------------------------------

#: Metadata keys of a KFP ``Dataset`` artifact that point at the data, in the original's order.
ARTIFACT_PATH_KEYS = ("pvc_path", "pvc_dir", "artifact_path")


def artifact_location(path: str | None, metadata: dict[str, Any] | None, uri: str | None = None) -> str:
    """Where a KFP ``Dataset`` artifact's data is, resolved as the original component did.

    Its local ``path`` when the file or directory exists; else metadata ``pvc_path`` /
    ``pvc_dir`` (a path on the PVC), then ``artifact_path`` (``s3://``, ``http(s)://``,
    ``hf://`` or a path); else the artifact's remote ``uri``.
    """
    if path and Path(path).exists():
        return path
    for key in ARTIFACT_PATH_KEYS:
        value = (metadata or {}).get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    if uri and urlsplit(uri).scheme in ("s3", "http", "https", "hf"):
        return uri
    raise DatasetError(
        f"Dataset artifact has no data: {path or 'its path'} does not exist and its metadata has none of "
        f"{', '.join(ARTIFACT_PATH_KEYS)}"
    )


# --- dispatch -----------------------------------------------------------------------------------


#: Options that select within a HuggingFace dataset: given for any other source, they are an error.
HUB_ONLY_OPTIONS = ("split", "subset", "revision")


def parse_source(location: str, workspace: Path, options: DatasetOptions) -> Source:
    """The :class:`Source` for ``location``; raises :class:`DatasetError` naming what is wrong."""
    source = _source_for(location.strip(), workspace, options)
    given = [name for name in HUB_ONLY_OPTIONS if getattr(options, name) and name not in source.selects]
    if given and not source.uri.startswith(HUB_PREFIX):
        raise DatasetError(f"{', '.join(given)}: only for a HuggingFace dataset source, not {source.uri}")
    return source


def _source_for(location: str, workspace: Path, options: DatasetOptions) -> Source:
    if not location:
        raise DatasetError("Dataset source is empty")
    if location == BUNDLED_SOURCE:
        path = bundled_dataset_path()
        return Source(str(path), lambda: [_local_file(path)])
    scheme = urlsplit(location).scheme.lower()
    if scheme == "s3":
        return s3_source(location, options.s3)
    if scheme in ("http", "https"):
        return http_source(location)
    if location.startswith(HUB_PREFIX):
        return hub_source(location, options)
    if scheme == "file":
        return local_source(urlsplit(location).path, workspace, split=options.split)
    if scheme and scheme not in ("pvc",) and len(scheme) > 1:
        raise DatasetError(
            f"Dataset source {location!r}: unsupported scheme {scheme!r} (s3, http(s), hf, pvc, file)"
        )
    relative = location.removeprefix(PVC_PREFIX)
    looks_local = (
        os.path.isabs(location) or (workspace / relative).exists() or format_from_name(location) is not None
    )
    if not looks_local and parse_hub_id(location):
        return hub_source(location, options)
    return local_source(location, workspace, split=options.split)
