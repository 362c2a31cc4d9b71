"""Tokenize chat data with instructlab-training's own data processing, and report what it dropped.

instructlab's ``process_data`` applies the tokenizer's chat template and masks
every label except assistant content (plus its end-of-turn token). It drops
samples shorter than 20 tokens or at/over ``max_seq_len`` with only a log line;
:func:`process_chat_data` counts them so the caller can report it before any
training time is spent. It also prints a few whole training samples and draws
progress bars: both are switched off while it runs (:func:`without_sample_previews`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessingReport:
    input_samples: int
    kept_samples: int
    dropped_samples: int
    total_tokens: int
    label_tokens: int
    max_sample_tokens: int
    processed_path: str

    def to_dict(self) -> dict:
        return asdict(self)


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def _no_sample_preview(*_args: object, **_kwargs: object) -> None:
    """Stands in for instructlab's ``print_masked_samples``: prints nothing."""


@contextlib.contextmanager
def without_sample_previews() -> Iterator[None]:
    """instructlab's data processing without its sample previews and progress bars.

    ``process_data`` calls the module-level ``print_masked_samples``, which prints a few
    random training conversations whole ("Original Input: ...") and their labels as
    ``<|MASK|>`` runs. Training data is the user's, and may be private: it must not reach any
    log (the task log, ``train.log``, a pod log or wherever a cluster ships those). It is
    replaced for the call, at the source. ``datasets``' progress bars, a dozen per run and
    all carriage returns in a log file, are off for the call too. Both are restored after.
    """
    import datasets
    from instructlab.training import data_process

    preview = data_process.print_masked_samples
    bars_were_on = not datasets.are_progress_bars_disabled()
    data_process.print_masked_samples = _no_sample_preview
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        data_process.print_masked_samples = preview
        if bars_were_on:
            datasets.enable_progress_bars()


def process_chat_data(
    data_path: str | Path,
    output_dir: str | Path,
    *,
    model_path: str,
    max_seq_len: int,
    num_cpu_procs: int = 1,
) -> ProcessingReport:
    """Run instructlab-training's data processing into ``output_dir/data.jsonl``."""
    from instructlab.training import data_process

    data_path, output_dir = Path(data_path), Path(output_dir)
    if not data_path.is_file():
        raise DatasetError(f"Training data {data_path} does not exist or is not a file")
    input_samples = count_lines(data_path)
    if input_samples == 0:
        raise DatasetError(f"Training data {data_path} is empty")
    output_dir.mkdir(parents=True, exist_ok=True)
    # Processed in a hidden directory, then renamed into place: another node (or a restarted
    # one) reading data.jsonl sees a whole file, never one being written.
    scratch = Path(tempfile.mkdtemp(prefix=".processing-", dir=output_dir))
    try:
        with without_sample_previews():
            data_process.process_data(
                data_path=str(data_path),
                data_output_path=str(scratch),
                max_seq_len=max_seq_len,
                model_path=model_path,
                num_cpu_procs=num_cpu_procs,
            )
        os.replace(scratch / c.PROCESSED_DATA_FILE, output_dir / c.PROCESSED_DATA_FILE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    processed = output_dir / c.PROCESSED_DATA_FILE
    kept = total = labelled = longest = 0
    with processed.open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = jsonio.loads(line)
            kept += 1
            total += row["len"]
            labelled += sum(1 for label in row["labels"] if label != -100)
            longest = max(longest, row["len"])
    if kept == 0:
        raise DatasetError(
            f"Data processing kept none of the {input_samples} samples of {data_path}: every sample is "
            f"shorter than 20 tokens or at least max_seq_len={max_seq_len} tokens"
        )
    return ProcessingReport(
        input_samples=input_samples,
        kept_samples=kept,
        dropped_samples=input_samples - kept,
        total_tokens=total,
        label_tokens=labelled,
        max_sample_tokens=longest,
        processed_path=str(processed),
    )
