"""Tokenize chat data with instructlab-training's own data processing, and measure every sample.

instructlab's ``process_data`` applies the tokenizer's chat template and masks every label
except assistant content (plus its end-of-turn token). It drops samples shorter than 20 tokens
or at/over ``max_seq_len`` with only a log line. :func:`process_chat_data` runs the same
functions in the same order (``process_messages_into_input_ids``: load, configure the
tokenizer, tokenize and mask, filter by length, select the columns, save), so its
``data.jsonl`` is byte for byte what ``process_data`` writes (a test holds it to that). What
it adds is the measurement: the token length of *every* sample, taken between tokenizing and
filtering, so the dropped ones are counted by reason and drawn in the histogram. It leaves out
the two steps that only log: the quantile lines, and ``print_masked_samples``, which prints
whole training samples (training data never reaches a log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import DatasetError

log = logging.getLogger(__name__)

#: instructlab-training's fixed lower bound (``filter_samples_by_length``'s ``min_seq_len``).
MIN_SAMPLE_TOKENS = 20
IGNORED_LABEL = -100


@dataclass(frozen=True)
class ProcessedData:
    """What processing measured: every input sample's token length, and the kept samples' totals."""

    lengths: list[int]  # of every input sample, in input order (dropped ones included)
    kept_samples: int
    total_tokens: int  # of the kept samples
    label_tokens: int  # of the kept samples: the tokens the loss counts
    processed_path: str


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """``datasets``' progress bars off for the call: a dozen per run, all carriage returns in a log."""
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def process_chat_data(
    data_path: str | Path,
    output_dir: str | Path,
    *,
    model_path: str,
    max_seq_len: int,
    num_cpu_procs: int = 1,
) -> ProcessedData:
    """instructlab-training's data processing into ``output_dir/data.jsonl``, measured."""
    from instructlab.training import data_process as ilab

    data_path, output_dir = Path(data_path), Path(output_dir)
    if not data_path.is_file():
        raise DatasetError(f"Training data {data_path} does not exist or is not a file")
    if data_path.stat().st_size == 0:
        raise DatasetError(f"Training data {data_path} is empty")
    output_dir.mkdir(parents=True, exist_ok=True)
    # Written in a hidden directory, then renamed into place: another node (or a restarted one)
    # reading data.jsonl sees a whole file, never one being written.
    scratch = Path(tempfile.mkdtemp(prefix=".processing-", dir=output_dir))
    try:
        with quiet_datasets():
            data = ilab.load_and_validate_dataset(str(data_path), num_cpu_procs)
            tokenizer = ilab.configure_tokenizer(model_path)
            tokenized = ilab.process_samples(data, tokenizer, num_cpu_procs)
            lengths = list(tokenized["len"])
            kept = ilab.filter_samples_by_length(
                tokenized, max_seq_len, min_seq_len=MIN_SAMPLE_TOKENS, num_proc=num_cpu_procs
            )
            final = ilab.prepare_final_dataset(kept, tokenizer, num_cpu_procs)
            ilab.save_dataset(final, str(scratch), num_cpu_procs)
            total_tokens = sum(final["len"])
            label_tokens = sum(
                sum(1 for label in labels if label != IGNORED_LABEL) for labels in final["labels"]
            )
        os.replace(scratch / c.PROCESSED_DATA_FILE, output_dir / c.PROCESSED_DATA_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the mkdtemp above: never a user's directory
    return ProcessedData(
        lengths=lengths,
        kept_samples=len(final),
        total_tokens=total_tokens,
        label_tokens=label_tokens,
        processed_path=str(output_dir / c.PROCESSED_DATA_FILE),
    )


def available_cpus() -> int:
    """The CPUs this process may use: its affinity set, capped by a cgroup v2 CPU quota (a pod's limit)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    return max(1, count)
