"""Bounded input: a huge record or a decompression bomb is refused early with flat memory; a killed
resolution's temporaries are removed by the next one; no file content reaches an error message.

The big inputs are generated lazily: a sparse file (3 GiB that take no disk) and a gzip made of one
compressed member repeated (3 GiB once decompressed, a few MB on disk).
"""

from __future__ import annotations

import gzip
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_provider_sft.core.dataset import DatasetOptions, resolve_dataset
from airflow_provider_sft.core.dataset.formats import MAX_RECORD_BYTES
from airflow_provider_sft.core.errors import DatasetError
from tests.dataset_files import GOOD, assert_nothing_written, jsonl_bytes, read_output, write_jsonl

GIB = 1 << 30
RSS_LIMIT_BYTES = 300 << 20
#: A guard against a run-away child (the defect held 6 GB): the address space it may reserve.
ADDRESS_SPACE_LIMIT = 2 * GIB
REPO = Path(__file__).resolve().parents[4]


def sparse_single_line(path: Path, size: int) -> Path:
    """``size`` bytes on one line, almost all a hole in the file: nothing is written to disk."""
    with path.open("wb") as handle:
        handle.write(b'{"messages": "')
        handle.truncate(size)
    return path


def gzip_single_line(path: Path, size: int) -> Path:
    """A gzip whose content is ``size`` bytes without a newline: one member, written again and again."""
    chunk = 64 << 20
    member = gzip.compress(b"a" * chunk, compresslevel=9)
    with path.open("wb") as handle:
        handle.write(gzip.compress(b'{"messages": "'))
        for _ in range(size // chunk):
            handle.write(member)
    return path


def resolve_in_child(source: Path, workspace: Path, **options) -> tuple[int, str, int]:
    """Resolve in a real subprocess; its exit code, stderr and its own peak RSS in bytes.

    The peak is the child's ``VmHWM`` after ``exec``, printed by itself on the way out: the
    ``ru_maxrss`` of ``wait4`` also counts the pages the forked child shared with this (large,
    torch-importing) pytest process before ``exec``, and read 400 MiB for a child that used 100.
    """
    code = (
        "import atexit, re, sys\n"
        "atexit.register(lambda: print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]))\n"
        "from airflow_provider_sft.core.dataset import DatasetOptions, resolve_dataset\n"
        f"resolve_dataset({str(source)!r}, {str(workspace)!r}, DatasetOptions(**{options!r}))\n"
    )

    def limit_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=limit_address_space,
    )
    return child.returncode, child.stderr, int(child.stdout.split()[-1]) * 1024  # VmHWM is in KiB


@pytest.mark.parametrize("make", [sparse_single_line, gzip_single_line], ids=["plain", "gzip"])
def test_a_3_gib_single_line_is_refused_by_its_size_with_flat_memory(tmp_path, make):
    source = make(tmp_path / "huge.jsonl", 3 * GIB) if make is sparse_single_line else None
    source = source or make(tmp_path / "huge.jsonl.gz", 3 * GIB)
    try:
        code, stderr, peak_rss = resolve_in_child(source, tmp_path / "ws")
    finally:
        source.unlink()
    assert code == 1
    assert f"{source}:1: line is longer than {MAX_RECORD_BYTES} bytes" in stderr, stderr[-2000:]
    assert "aaaa" not in stderr  # the content is never echoed
    assert peak_rss < RSS_LIMIT_BYTES, f"peak RSS {peak_rss / 2**20:.0f} MiB"
    assert_nothing_written(tmp_path / "ws")


def test_a_decompression_bomb_stops_at_max_decompressed_bytes(tmp_path):
    line = jsonl_bytes([GOOD])
    member = gzip.compress(line * ((1 << 20) // len(line)))  # 1 MiB of valid records
    source = tmp_path / "bomb.jsonl.gz"
    source.write_bytes(member * 24)  # 24 MiB once decompressed
    with pytest.raises(
        DatasetError, match=r"bomb\.jsonl\.gz: the dataset holds more than max_decompressed_bytes=8388608"
    ):
        resolve_dataset(str(source), tmp_path / "ws", DatasetOptions(max_decompressed_bytes=8 << 20))
    assert_nothing_written(tmp_path / "ws")
    stats = resolve_dataset(
        str(source), tmp_path / "ws", DatasetOptions(max_decompressed_bytes=0)
    )  # 0: no limit
    assert stats.bytes >= 20 << 20


def test_the_default_cap_is_a_sane_finite_number():
    assert 1 * GIB < DatasetOptions().max_decompressed_bytes < 1024 * GIB


def test_a_killed_resolution_leaves_a_temporary_the_next_one_removes(tmp_path):
    line = jsonl_bytes([GOOD])
    member = gzip.compress(line * ((8 << 20) // len(line)))
    source = tmp_path / "slow.jsonl.gz"
    source.write_bytes(member * 512)  # 4 GiB of valid records: far longer to resolve than the test waits
    workspace = tmp_path / "ws"
    code = f"from airflow_provider_sft.core.dataset import resolve_dataset; resolve_dataset({str(source)!r}, {str(workspace)!r})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    temporary = workspace / "dataset" / f".train.jsonl.{child.pid}.tmp"
    try:
        for _ in range(600):  # until it is midway: its temporary holds records
            if temporary.exists() and temporary.stat().st_size > 0:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the resolution ended before it could be killed"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert temporary.exists()  # what SIGKILL leaves behind
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live_temporary = workspace / "dataset" / f".train.jsonl.{alive.pid}.tmp"
    live_temporary.write_bytes(b"in progress")
    try:
        logged: list[str] = []
        resolve_dataset(str(write_jsonl(tmp_path / "small.jsonl", [GOOD])), workspace, log=logged.append)
        assert not temporary.exists()
        assert live_temporary.exists()  # a running resolution's file is not touched
        assert f"removed {temporary.name}, left by a resolution that was killed" in logged
        assert read_output(workspace) == [GOOD]
    finally:
        alive.kill()
        alive.wait()


def test_a_csv_symlink_to_a_system_file_is_refused_without_echoing_it(tmp_path):
    (tmp_path / "data.csv").symlink_to("/etc/passwd")
    with pytest.raises(DatasetError) as info:
        resolve_dataset(str(tmp_path / "data.csv"), tmp_path / "ws")
    assert "a symlink into the system directory /etc" in str(info.value)
    assert "root:" not in str(info.value)
    assert_nothing_written(tmp_path / "ws")


def test_a_file_that_is_not_a_dataset_never_has_its_content_in_the_error(tmp_path):
    first_line = Path("/etc/passwd").read_text().splitlines()[0]
    (tmp_path / "copied.csv").write_text(Path("/etc/passwd").read_text())
    with pytest.raises(DatasetError) as info:
        resolve_dataset(str(tmp_path / "copied.csv"), tmp_path / "ws")
    assert "copied.csv:1: CSV column 'messages' is missing" in str(info.value)
    assert first_line not in str(info.value) and "root:" not in str(info.value)
    (tmp_path / "columns.csv").write_text("prompt,answer\nhi,hello\n")
    with pytest.raises(
        DatasetError, match=r"columns\.csv:1: CSV column 'messages' is missing \(header: prompt, answer\)"
    ):
        resolve_dataset(str(tmp_path / "columns.csv"), tmp_path / "ws")


def test_a_bad_role_is_named_by_its_field_not_its_value(tmp_path):
    secret_text = "the-private-role-text-" + "x" * 20
    record = {"messages": [{"role": secret_text, "content": "a"}, {"role": "assistant", "content": "b"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(DatasetError, match=r"d\.jsonl:1: messages\[0\]\.role must be one of") as info:
        resolve_dataset(str(tmp_path / "d.jsonl"), tmp_path / "ws")
    assert secret_text not in str(info.value)


def test_a_csv_line_over_the_record_cap_is_refused_by_its_size(tmp_path):
    source = tmp_path / "wide.csv"
    with source.open("wb") as handle:
        handle.write(b"messages\n")
        handle.truncate(
            9 + MAX_RECORD_BYTES + 10
        )  # a second line of NUL bytes, longer than one record may be
    with pytest.raises(DatasetError, match=rf"wide\.csv:2: line is longer than {MAX_RECORD_BYTES} bytes"):
        resolve_dataset(str(source), tmp_path / "ws")


def test_a_json_array_record_over_the_cap_is_refused_by_its_size(tmp_path):
    source = tmp_path / "big.json"
    with source.open("wb") as handle:
        handle.write(b'[{"messages": "')
        handle.truncate(MAX_RECORD_BYTES + (4 << 20))  # one unterminated record, longer than the cap
    with pytest.raises(DatasetError, match=rf"big\.json:1: record 1 is longer than {MAX_RECORD_BYTES} bytes"):
        resolve_dataset(str(source), tmp_path / "ws")
    assert_nothing_written(tmp_path / "ws")
