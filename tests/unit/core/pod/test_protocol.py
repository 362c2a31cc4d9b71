"""The task log shows the provider's lines; the full output keeps everything, and no training sample."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends import JobStatus
from airflow_provider_sft.core.backends.local import LocalConfig, LocalProcessBackend
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.pod.protocol import (
    Shown,
    classify_log_line,
    error_line,
    node_prefix,
    parse_result,
    provider_line,
    result_line,
)
from airflow_provider_sft.core.run import TrainingRun
from airflow_provider_sft.core.sample_data import bundled_dataset_path

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("[sft] step 3/40 epoch 1/1 loss 1.2000", Shown(INFO, "[sft] step 3/40 epoch 1/1 loss 1.2000")),
        ("[sft node 1/2] joining 2 nodes", Shown(INFO, "[sft node 1/2] joining 2 nodes")),
        (
            "[sft] warning: data processing: 3 dropped",
            Shown(WARNING, "[sft] warning: data processing: 3 dropped"),
        ),
        ("[sft] a warning: not at the start", Shown(INFO, "[sft] a warning: not at the start")),
        ("ERROR: base_model /m does not exist", Shown(ERROR, "ERROR: base_model /m does not exist")),
        # a progress bar rewrote its line, or was left without a newline before ours
        ("Map:  10%|#  | 1/10\rMap: 100%|###| 10/10\r[sft] done in 3.0s", Shown(INFO, "[sft] done in 3.0s")),
        ("Epoch 0:  5%|▌  | 5/100 [00:01<00:19][sft] step 5/100", Shown(INFO, "[sft] step 5/100")),
        (
            "bar 50%\rERROR: instructlab-training exited with status 1",
            Shown(ERROR, "ERROR: instructlab-training exited with status 1"),
        ),
        # everything else only the full output keeps
        ("INFO instructlab.training.data_process: quantile 90th: 70", None),
        ("\x1b[35mOriginal Input: <|im_start|>user\x1b[0m", None),
        ("\x1b[33mInstruction ex sample 1: <|MASK|><|MASK|>\x1b[0m", None),
        ("Generating train split: 235 examples [00:00, 117075.83 examples/s]", None),
        ("WARNING transformers.modeling_utils: some weights were not initialized", None),
        ("Traceback (most recent call last):", None),
        ('SFT_RESULT {"path": "/w/dataset/train.jsonl"}', None),
        ("torch.distributed: ERROR: a library's own error line", None),
        ("[sft]no space", None),
        ("", None),
    ],
)
def test_classify_log_line(line, shown):
    assert classify_log_line(line) == shown


def test_node_prefix():
    assert node_prefix(0, 1) == "[sft] "
    assert node_prefix(1, 3) == "[sft node 1/3] "
    assert classify_log_line(node_prefix(2, 3) + "done").level == INFO


def test_a_steps_result_line_round_trips_is_never_shown_and_the_last_one_counts():
    result = {"records": 3, "path": "/ws/dätä set/train.jsonl", "stats": {"skipped": None}}
    line = result_line(result)
    assert line.startswith("SFT_RESULT ") and "\n" not in line
    assert classify_log_line(line) is None
    assert (
        parse_result([provider_line("resolved"), result_line({"records": 1}), line, "a trailing line"])
        == result
    )
    assert parse_result([provider_line("resolved"), "ERROR: no result"]) is None


def test_the_error_line_is_shown_as_an_error_and_its_message_is_the_failure():
    shown = classify_log_line("bar 50%\r" + error_line("train failed: OSError: disk full"))
    assert shown == Shown(ERROR, "ERROR: train failed: OSError: disk full")
    assert shown.error == "train failed: OSError: disk full"
    assert classify_log_line(provider_line("ERROR: quoted, not a failure")).error is None


MIXED_OUTPUT = [
    "Generating train split: 0 examples\rGenerating train split: 235 examples",
    "[sft] run fake: device cpu",
    "INFO instructlab.training.data_process: quantile 90th: 70",
    "WARNING transformers: something a library says",
    "[sft] warning: data processing: 1 dropped",
    "Converting:  50%\rConverting: 100%\r[sft] step 1/2 loss 1.0000",
    "[sft] step 2/2 loss 0.5000",
    "Traceback (most recent call last):",
    '  File "x.py", line 1, in <module>',
    "RuntimeError: the library's reason",
]


def fake_python(tmp_path: Path, lines: list[str], *, error: str | None, code: int) -> str:
    """An interpreter stand-in that prints ``lines`` (then ``ERROR: error``) and exits with ``code``."""
    script = tmp_path / "fake_python"
    printed = [*lines, *([f"ERROR: {error}"] if error else [])]
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"for line in json.loads({json.dumps(json.dumps(printed))}):\n"
        "    print(line, flush=True)\n"
        f"sys.exit({code})\n"
    )
    script.chmod(0o755)
    return str(script)


def make_run(tmp_path: Path) -> TrainingRun:
    values = {
        "resource_gpu_per_worker": 0,
        "resource_cpu_per_worker": "1",
        "resource_memory_per_worker": "4Gi",
    }
    return TrainingRun(
        name="fake-run",
        params=SFTParams.parse(values),
        dataset_path=str(bundled_dataset_path()),
        output_dir=str(tmp_path / "runs" / "fake-run"),
    )


def run_fake(tmp_path: Path, *, error: str | None, code: int):
    run = make_run(tmp_path)
    backend = LocalProcessBackend(
        LocalConfig(python=fake_python(tmp_path, MIXED_OUTPUT, error=error, code=code))
    )
    shown: list[str] = []
    result = backend.wait(backend.submit(run), on_log=shown.append, timeout_seconds=60)
    return result, shown, Path(run.output_dir) / c.TRAIN_LOG_FILE


def test_the_local_backend_keeps_every_line_and_shows_the_providers(tmp_path):
    result, shown, train_log = run_fake(tmp_path, error="the run's reason", code=3)
    assert train_log.read_bytes().decode().split("\n") == [*MIXED_OUTPUT, "ERROR: the run's reason", ""]
    full_output = f"[sft] full output: {train_log}"
    assert shown == [
        full_output,
        "[sft] run fake: device cpu",
        "[sft] warning: data processing: 1 dropped",
        "[sft] step 1/2 loss 1.0000",
        "[sft] step 2/2 loss 0.5000",
        "ERROR: the run's reason",
        full_output,
    ]
    assert [classify_log_line(line).level for line in shown] == [INFO, INFO, WARNING, INFO, INFO, ERROR, INFO]
    assert result.status is JobStatus.FAILED
    assert result.message == "training process exited with status 3: the run's reason"


def test_a_failure_without_an_error_line_is_explained_by_the_whole_outputs_tail(tmp_path):
    result, shown, _ = run_fake(tmp_path, error=None, code=1)
    assert "RuntimeError: the library's reason" not in shown  # not in the task log as a line ...
    assert result.message == "training process exited with status 1: " + "\n".join(
        MIXED_OUTPUT[-5:]
    )  # ... but here


def test_a_success_names_the_full_output_at_both_ends(tmp_path):
    result, shown, train_log = run_fake(tmp_path, error=None, code=0)
    assert result.succeeded
    assert shown[0] == shown[-1] == f"[sft] full output: {train_log}"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_operator_logs_each_line_at_its_level():
    from airflow_provider_sft.operators.training_log import TRAINING_LOG, log_training_line

    records = _Records()  # on the logger itself: importing Airflow reconfigures the root's handlers
    TRAINING_LOG.addHandler(records)
    try:
        for line in ("[sft] step 1/2", "[sft] warning: 3 dropped", "ERROR: boom", "TrainJob t: running"):
            log_training_line(line)
    finally:
        TRAINING_LOG.removeHandler(records)
    assert TRAINING_LOG.name == "airflow_provider_sft.training"
    assert [(r.levelno, r.getMessage()) for r in records.records] == [
        (INFO, "[sft] step 1/2"),
        (WARNING, "[sft] warning: 3 dropped"),
        (ERROR, "ERROR: boom"),
        (INFO, "TrainJob t: running"),  # a backend's own line
    ]


def assistant_replies() -> list[str]:
    """The bundled dataset's assistant replies (read, never written)."""
    with bundled_dataset_path().open() as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]


@pytest.mark.slow
def test_data_processing_prints_no_training_sample(tiny_model, tmp_path, capfd):
    import datasets

    from airflow_provider_sft.core.training.data_processing import process_chat_data

    bars_were_disabled = datasets.are_progress_bars_disabled()
    report = process_chat_data(
        bundled_dataset_path(), tmp_path / "data", model_path=str(tiny_model), max_seq_len=512
    )
    assert report.kept_samples == 235
    out, err = capfd.readouterr()
    printed = out + err
    for marker in ("Original Input", "ex sample", "<|MASK|>", "examples/s"):
        assert marker not in printed
    assert not [reply for reply in assistant_replies() if reply in printed]
    # the progress bar setting is the caller's again after the call
    assert datasets.are_progress_bars_disabled() == bars_were_disabled
