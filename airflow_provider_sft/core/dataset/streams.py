"""Byte streams: adapt network bodies to buffered files and undo gzip/zstd by their magic bytes."""

from __future__ import annotations

import contextlib
import gzip
import io
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

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


@contextlib.contextmanager
def decoded(stream: io.BufferedReader) -> Iterator[BinaryIO]:
    """``stream`` itself, or a decompressing reader when it starts with gzip or zstd magic bytes."""
    head = stream.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        with gzip.GzipFile(fileobj=stream) as plain:
            yield buffered(plain)  # type: ignore[arg-type]
    elif head.startswith(ZSTD_MAGIC):
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(stream, read_size=BUFFER) as plain:
            yield buffered(plain)
    else:
        yield stream
