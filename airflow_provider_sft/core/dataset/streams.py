"""Byte streams: adapt network bodies to buffered files, undo gzip/zstd by their magic bytes, and
count what comes out: a 2 MB ``.gz`` may hold terabytes, so every decompressed (or plain) byte of
one resolution is charged to a :class:`ByteBudget` (``max_decompressed_bytes``) as it is read."""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from airflow_provider_sft.core.errors import DatasetError

try:
    from zstandard import ZstdError
except ImportError:  # zstandard is in the ``data`` extra; without it .zst sources fail on import below
    ZstdError = OSError  # type: ignore[assignment,misc]

BUFFER = 1 << 20
#: What a corrupt gzip or zstd stream raises while being read.
DECOMPRESSION_ERRORS = (OSError, zlib.error, ZstdError)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")


class ChunkReader(io.RawIOBase):
    """A raw stream over ``read(n)`` (boto3 bodies) or an iterator of chunks (httpx), for ``BufferedReader``."""

    def __init__(self, read: Callable[[int], bytes] | None = None, chunks: Iterator[bytes] | None = None):
        self._read, self._chunks, self._pending = read, chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._read is not None:
            data = self._read(len(buffer))
        else:
            data = self._pending or next(self._chunks, b"")  # type: ignore[arg-type]
            data, self._pending = data[: len(buffer)], data[len(buffer) :]
        buffer[: len(data)] = data
        return len(data)


def buffered(raw: io.RawIOBase) -> io.BufferedReader:
    return io.BufferedReader(raw, BUFFER)


def strip_compression_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


class ByteBudget:
    """The bytes all files of one resolution may yield once decompressed (``None``: no limit)."""

    def __init__(self, limit: int | None):
        self.limit, self.used = limit, 0

    def charge(self, count: int, name: str) -> None:
        self.used += count
        if self.limit is not None and self.used > self.limit:
            raise DatasetError(
                f"{name}: the dataset holds more than max_decompressed_bytes={self.limit} bytes once "
                "decompressed; refused (raise max_decompressed_bytes, or 0 for no limit, if it is really that big)"
            )


class _Counted(io.RawIOBase):
    """A raw stream over ``inner`` that charges every byte read to a budget."""

    def __init__(self, inner: BinaryIO, budget: ByteBudget, name: str):
        self._inner, self._budget, self._name = inner, budget, name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        count = self._inner.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self._budget.charge(count, self._name)
        return count or 0


def is_compressed(stream: io.BufferedReader) -> bool:
    return stream.peek(4)[:4].startswith((GZIP_MAGIC, ZSTD_MAGIC))


@contextlib.contextmanager
def decoded(stream: io.BufferedReader, name: str, budget: ByteBudget) -> Iterator[BinaryIO]:
    """The plain bytes of ``stream`` (decompressed when it starts with gzip or zstd magic bytes), counted."""
    head = stream.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=stream) as plain:
            yield buffered(_Counted(plain, budget, name))  # type: ignore[arg-type]
    elif head.startswith(ZSTD_MAGIC):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(stream, read_size=BUFFER) as plain:
            yield buffered(_Counted(plain, budget, name))
    else:
        yield buffered(_Counted(stream, budget, name))
