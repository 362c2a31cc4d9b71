"""Resolve a dataset source into ``<workspace>/dataset/train.jsonl``: validated, streamed, atomic.

Records flow one at a time from the source's byte stream through a format reader and
the chat validation into a temporary file that is renamed into place at the end, so
memory stays flat whatever the dataset's size and a failure never leaves a partial
(or a stale) ``train.jsonl``. A small manifest (source identity, options, sha256) lets
a re-run skip the work when nothing changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.dataset import formats
from airflow_provider_sft.core.dataset.formats import Format
from airflow_provider_sft.core.dataset.options import DatasetOptions, OnBadRecord
from airflow_provider_sft.core.dataset.records import BadRecordError, RecordMapping, chat_messages
from airflow_provider_sft.core.dataset.sources import Source, SourceFile, parse_source
from airflow_provider_sft.core.dataset.streams import DECOMPRESSION_ERRORS, ByteBudget, decoded, is_compressed
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.files import atomic_write_bytes, remove_owned, sha256_file

TRAIN_FILE = "train.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 2
SKIP_REASONS_KEPT = 5
TOKEN_BATCH = 512


@dataclass(frozen=True)
class DatasetStats:
    """What the training task needs to know (the operator's XCom)."""

    path: str
    source: str
    records: int
    bytes: int
    sha256: str
    files: int = 1
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)
    approx_tokens: int | None = None
    seconds: float = 0.0
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _TokenCounter:
    """Approximate token count of every message's content, batched through a fast tokenizer."""

    def __init__(self, location: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DatasetError(
                "tokenizer: counting tokens needs the 'tokenizers' package (pip install 'airflow-provider-sft[train]')"
            ) from None

        path = Path(location)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise DatasetError(
                f"tokenizer: {path} not found (give a tokenizer.json or a directory holding one)"
            )
        self._tokenizer = Tokenizer.from_file(str(path))
        self._pending: list[str] = []
        self.total = 0

    def add(self, messages: list[dict[str, Any]]) -> None:
        self._pending.extend(m["content"] for m in messages)
        if len(self._pending) >= TOKEN_BATCH:
            self.flush()

    def flush(self) -> int:
        if self._pending:
            encodings = self._tokenizer.encode_batch(self._pending, add_special_tokens=False)
            self.total += sum(len(e.ids) for e in encodings)
            self._pending.clear()
        return self.total


def _records(
    file: SourceFile, options: DatasetOptions, spool_dir: Path, budget: ByteBudget
) -> Iterator[formats.Item]:
    """The raw items of one file, in whatever format it turns out to be."""
    with file.opener() as raw:
        in_place = file.local_path is not None and not is_compressed(raw)  # type: ignore[arg-type]
        with decoded(raw, file.name, budget) as stream:  # type: ignore[arg-type]
            yield from _items(file, options, stream, spool_dir, budget, in_place=in_place)


def _items(
    file: SourceFile,
    options: DatasetOptions,
    stream: Any,
    spool_dir: Path,
    budget: ByteBudget,
    *,
    in_place: bool,
) -> Iterator[formats.Item]:
    try:
        fmt = formats.choose_format(file.name, options.format, stream.peek(8)[:8])
    except DECOMPRESSION_ERRORS as error:
        raise DatasetError(f"{file.name}: cannot be decompressed ({error})") from None
    fast = not options.tokenizer
    if fmt is Format.JSONL:
        yield from formats.read_jsonl(stream, file.name)
    elif fmt is Format.JSON:
        yield from formats.read_json_array(stream, file.name)
    elif fmt is Format.CSV:
        yield from formats.read_csv(stream, file.name, options.mapping)
    elif fmt is Format.ARROW:
        yield from formats.read_arrow(stream, file.name, options.mapping, fast=fast)
    elif in_place and file.local_path is not None:  # an uncompressed Parquet file on disk: read where it is
        budget.charge(file.local_path.stat().st_size, file.name)
        yield from formats.read_parquet(file.local_path, file.name, options.mapping, fast=fast)
    else:  # Parquet needs a seekable file: spool the (decompressed) bytes next to the output
        with _spool(spool_dir) as spool:
            shutil.copyfileobj(stream, spool, 1 << 20)
            spool.flush()
            yield from formats.read_parquet(Path(spool.name), file.name, options.mapping, fast=fast)


def _spool(spool_dir: Path) -> Any:
    return tempfile.NamedTemporaryFile(dir=spool_dir, prefix=f".spool-{os.getpid()}-", suffix=".parquet")


#: The temporaries a resolution writes, named after its process id: ``(glob, pattern)``.
_TEMPORARIES = (
    (f".{TRAIN_FILE}.*.tmp", re.compile(rf"^\.{re.escape(TRAIN_FILE)}\.(\d+)\.tmp$")),
    (".spool-*-*.parquet", re.compile(r"^\.spool-(\d+)-.*\.parquet$")),
)


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process of this machine's PID namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_dead_temporaries(out_dir: Path) -> list[str]:
    """Remove the temporaries of resolutions that were killed (their process is gone); their names.

    A resolution killed midway (SIGKILL, an evicted pod) cannot clean up after itself; the next
    one in the same directory does. A live process's temporaries, and this one's, are kept.
    """
    removed = []
    for pattern, name in _TEMPORARIES:
        for path in out_dir.glob(pattern):
            match = name.match(path.name)
            if match and int(match[1]) != os.getpid() and not _process_alive(int(match[1])):
                with contextlib.suppress(OSError):
                    remove_owned(path, out_dir, field="dataset_dir")
                    removed.append(path.name)
    return removed


class _Writer:
    """Counts, hashes and writes normalized lines; fails or skips bad records by policy."""

    def __init__(self, handle: Any, options: DatasetOptions, tokens: _TokenCounter | None):
        self.handle, self.options, self.tokens = handle, options, tokens
        self.digest = hashlib.sha256()
        self.records = self.bytes = self.skipped = 0
        self.skip_reasons: list[str] = []
        self._messages_mapping = options.mapping is RecordMapping.MESSAGES

    def bad(self, error: BadRecordError) -> None:
        if self.options.on_bad_record is OnBadRecord.FAIL:
            raise error
        self.skipped += 1
        if len(self.skip_reasons) < SKIP_REASONS_KEPT:
            self.skip_reasons.append(str(error))

    def add(self, where: str, record: Any, raw_line: bytes | None) -> None:
        if isinstance(record, formats.Validated):  # a batch checked as a whole: its output lines
            self._write(raw_line, record.count)  # type: ignore[arg-type]
            return
        if isinstance(record, BadRecordError):
            self.bad(record)
            return
        try:
            messages = chat_messages(record, where, self.options.mapping)
        except BadRecordError as error:
            self.bad(error)
            return
        if (
            raw_line is not None
            and self._messages_mapping
            and len(record) == 1
            and messages is record["messages"]
        ):
            line = raw_line.rstrip(b"\r\n") + b"\n"  # already a clean one-line chat record: keep its bytes
        else:
            line = jsonio.dumps({"messages": messages}) + b"\n"
        self._write(line)
        if self.tokens is not None:
            self.tokens.add(messages)

    def _write(self, lines: bytes | memoryview, count: int = 1) -> None:
        self.handle.write(lines)
        self.digest.update(lines)
        self.records += count
        self.bytes += len(lines)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return jsonio.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _output_dir(workspace: Path, dataset_dir: str | Path | None) -> Path:
    """``dataset_dir`` (default ``<workspace>/dataset``), refusing one that leads out of the workspace."""
    out_dir = workspace / (dataset_dir or c.DATASET_DIR)
    if out_dir.is_symlink() or out_dir.exists() or dataset_dir:
        real, root = out_dir.resolve(), workspace.resolve()
        if root not in real.parents:
            raise DatasetError(f"{out_dir} resolves to {real}, outside the workspace {workspace}; refused")
    return out_dir


def resolve_dataset(
    source: str | Source,
    workspace: str | Path,
    options: DatasetOptions | None = None,
    *,
    log: Callable[[str], None] | None = None,
    dataset_dir: str | Path | None = None,
) -> DatasetStats:
    """Validate ``source`` and write it to ``<dataset_dir>/train.jsonl``; skip when unchanged.

    ``dataset_dir`` (default ``<workspace>/dataset``) must lie inside the workspace: the
    operators give each run its own, ``<workspace>/runs/<run>/dataset``.

    Raises :class:`DatasetError` naming the source, file, line/row and field of the first
    problem (or, with ``on_bad_record="skip"``, when no good record is left); nothing is
    left in place of ``train.jsonl`` then.
    """
    started = time.monotonic()
    options = options or DatasetOptions()
    workspace = Path(workspace)
    parsed = parse_source(source, workspace, options) if isinstance(source, str) else source
    out_dir = _output_dir(workspace, dataset_dir)
    target, manifest_path = out_dir / TRAIN_FILE, out_dir / MANIFEST_FILE
    files = parsed.files()
    _refuse_sources_in(out_dir, files)
    identity = _identity(parsed.uri, files, options)
    reused = _reused_stats(target, manifest_path, identity, started)
    if reused is not None:
        return reused
    # Whatever is there was made from something else: it must not outlive a failure below.
    for stale in (manifest_path, target):
        stale.unlink(missing_ok=True)
    tokens = _TokenCounter(options.tokenizer) if options.tokenizer else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in remove_dead_temporaries(out_dir):
        if log:
            log(f"removed {name}, left by a resolution that was killed")
    writer = _write_train_file(parsed.uri, files, options, target, tokens, log)
    stats = DatasetStats(
        path=str(target),
        source=parsed.uri,
        records=writer.records,
        bytes=writer.bytes,
        sha256=writer.digest.hexdigest(),
        files=len(files),
        skipped=writer.skipped,
        skip_reasons=writer.skip_reasons,
        approx_tokens=tokens.flush() if tokens else None,
        seconds=round(time.monotonic() - started, 3),
    )
    _write_manifest(manifest_path, identity, stats)
    return stats


def _identity(uri: str, files: list[SourceFile], options: DatasetOptions) -> dict[str, Any]:
    """What the output was made from (source, each file's identity, options): equal means reusable."""
    return {
        "version": MANIFEST_VERSION,
        "source": uri,
        "files": [f.identity for f in files],
        "options": options.cache_key(),
        "tokenizer": options.tokenizer,
    }


def _write_manifest(manifest_path: Path, identity: dict[str, Any], stats: DatasetStats) -> None:
    """Record what ``train.jsonl`` was made from, so the next resolution of the same source reuses it."""
    with contextlib.suppress(OSError):  # a missing manifest only costs a re-resolve next time
        atomic_write_bytes(
            manifest_path,
            jsonio.dumps({"identity": identity, "sha256": stats.sha256, "stats": stats.to_dict()}),
        )


def _refuse_sources_in(out_dir: Path, files: list[SourceFile]) -> None:
    """Refuse a source inside the output directory: resolving would first delete what it is about to read."""
    for file in files:
        if file.local_path is not None and out_dir.resolve() in file.local_path.resolve().parents:
            raise DatasetError(
                f"{file.name}: the source lies in the output directory {out_dir}; move it elsewhere"
            )


def _reused_stats(
    target: Path, manifest_path: Path, identity: dict[str, Any], started: float
) -> DatasetStats | None:
    """The last resolution's stats when it was of the same source and options and its file is intact.

    The sha256 is checked, not only the manifest: a ``train.jsonl`` edited or truncated since
    is resolved again.
    """
    manifest = _read_manifest(manifest_path) if target.exists() else None
    if manifest and manifest.get("identity") == identity and manifest.get("sha256") == sha256_file(target):
        return DatasetStats(**{**manifest["stats"], "reused": True, "seconds": time.monotonic() - started})
    return None


def _write_train_file(
    uri: str,
    files: list[SourceFile],
    options: DatasetOptions,
    target: Path,
    tokens: _TokenCounter | None,
    log: Callable[[str], None] | None,
) -> _Writer:
    """Write every file's records to a temporary and rename it to ``target``; the writer's counts.

    On any failure the temporary is removed and ``target`` does not exist, so a reader never
    sees half a dataset.
    """
    out_dir = target.parent
    tmp = out_dir / f".{TRAIN_FILE}.{os.getpid()}.tmp"
    budget = ByteBudget(options.max_decompressed_bytes or None)
    try:
        with tmp.open("wb", buffering=1 << 20) as handle:
            writer = _Writer(handle, options, tokens)
            for file in files:
                before = writer.records
                _write_file(writer, file, options, out_dir, budget)
                if log:
                    log(f"{file.name}: {writer.records - before} records")
        if writer.records == 0:
            if writer.skipped:
                raise DatasetError(
                    f"Dataset {uri} has no usable records ({writer.skipped} bad records skipped; "
                    f"first: {writer.skip_reasons[0]})"
                )
            raise DatasetError(f"Dataset {uri} has no records")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return writer


def _write_file(
    writer: _Writer, file: SourceFile, options: DatasetOptions, spool_dir: Path, budget: ByteBudget
) -> None:
    """Pass one file's records to ``writer``; a file that is not text or not whole is named in the error."""
    try:
        for where, record, raw_line in _records(file, options, spool_dir, budget):
            writer.add(where, record, raw_line)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{file.name}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except EOFError:
        raise DatasetError(f"{file.name}: compressed stream is truncated") from None
    except DECOMPRESSION_ERRORS as error:
        raise DatasetError(f"{file.name}: cannot be decompressed ({error})") from None
