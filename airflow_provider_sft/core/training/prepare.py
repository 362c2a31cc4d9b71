"""Prepare the training data on a CPU, once, and let the training job reuse it by fingerprint.

The ``prepare`` step tokenizes the resolved dataset before the training job exists, where the
workspace is (the worker, or a CPU-only pod next to the PVC), and writes beside ``data.jsonl``
a ``prepared.json``: the fingerprint of everything the output depends on, and the data report.
The training pod computes the fingerprint of its own inputs; when it matches, no node
processes anything and no node waits for another. When it does not, node 0 processes again and
says which input changed.

The fingerprint: the dataset's sha256, the sha256 of each tokenizer file of the base model
(the chat template included, and named on its own), ``max_seq_len`` and the
instructlab-training version. Only the tokenizer files are read from the base model: they are
copied into the processed directory and the tokenizer is loaded from there, so a base model's
weights are never opened (nor downloaded, for a Hub model) on the CPU step.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.files import atomic_write_bytes, sha256_file
from airflow_provider_sft.core.training.data_processing import process_chat_data
from airflow_provider_sft.core.training.data_report import DataReport, build_report

PREPARED_FILE = "prepared.json"
TOKENIZER_DIR = "tokenizer"
#: What ``AutoTokenizer.from_pretrained`` may read from a model directory. ``config.json`` is the
#: model's metadata (its type picks the tokenizer class when ``tokenizer_config.json`` does not).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "config.json",
)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
Logger = Callable[[str], None]


def instructlab_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instructlab-training")
    except PackageNotFoundError:
        return "not installed"


def tokenizer_source(base_model: str, env: Mapping[str, str]) -> Path:
    """The directory holding the base model's tokenizer files: the model's own, or for a Hub id
    those files alone fetched into the Hub cache (``HF_TOKEN`` from ``env``), never the weights."""
    local = Path(base_model)
    if local.is_dir():
        return local
    if base_model.startswith(("/", "./", "../")):
        raise DatasetError(f"base_model {base_model} does not exist: its tokenizer cannot be read")
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(base_model, allow_patterns=list(TOKENIZER_FILES), token=env.get("HF_TOKEN") or None)
    )


def tokenizer_files(source: Path) -> dict[str, Path]:
    files = {name: source / name for name in TOKENIZER_FILES if (source / name).is_file()}
    if "tokenizer_config.json" not in files and "tokenizer.json" not in files:
        raise DatasetError(
            f"base model {source} has no tokenizer (no tokenizer.json or tokenizer_config.json)"
        )
    return files


def chat_template_sha256(files: Mapping[str, Path]) -> str:
    """The chat template the tokenizer applies: its own file, else ``tokenizer_config.json``'s."""
    for name in CHAT_TEMPLATE_FILES:
        if name in files:
            return sha256_file(files[name])
    if "tokenizer_config.json" in files:
        template = jsonio.loads(files["tokenizer_config.json"].read_bytes()).get("chat_template")
        if template is not None:
            return hashlib.sha256(jsonio.dumps(template)).hexdigest()
    return ""


def fingerprint(dataset_path: Path, files: Mapping[str, Path], max_seq_len: int) -> dict[str, Any]:
    """Everything ``data.jsonl`` depends on, each part hashed."""
    return {
        "dataset_sha256": sha256_file(dataset_path),
        "tokenizer_files": {name: sha256_file(path) for name, path in sorted(files.items())},
        "chat_template_sha256": chat_template_sha256(files),
        "max_seq_len": max_seq_len,
        "instructlab_training": instructlab_version(),
    }


def fingerprint_id(print_: Mapping[str, Any]) -> str:
    return hashlib.sha256(jsonio.dumps(dict(print_))).hexdigest()[:12]  # built in a fixed key order


def differences(prepared: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between the fingerprint the data was prepared with and this one, in words."""
    reasons = []
    if prepared.get("dataset_sha256") != current["dataset_sha256"]:
        reasons.append("the dataset changed (sha256)")
    if prepared.get("chat_template_sha256") != current["chat_template_sha256"]:
        reasons.append("the chat template changed")
    old_files, new_files = prepared.get("tokenizer_files", {}), current["tokenizer_files"]
    changed = sorted(
        name for name in old_files.keys() | new_files.keys() if old_files.get(name) != new_files.get(name)
    )
    if changed:
        reasons.append(f"tokenizer files differ: {', '.join(changed)}")
    if prepared.get("max_seq_len") != current["max_seq_len"]:
        reasons.append(f"max_seq_len {prepared.get('max_seq_len')} -> {current['max_seq_len']}")
    if prepared.get("instructlab_training") != current["instructlab_training"]:
        reasons.append(
            f"instructlab-training {prepared.get('instructlab_training')} prepared it, this is "
            f"{current['instructlab_training']}"
        )
    return reasons


@dataclass(frozen=True)
class PreparedData:
    processed_dir: str
    fingerprint: dict[str, Any]
    report: DataReport

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed_dir": self.processed_dir,
            "fingerprint": self.fingerprint,
            "fingerprint_id": fingerprint_id(self.fingerprint),
            "report": self.report.to_dict(),
        }


def stage_tokenizer(files: Mapping[str, Path], processed_dir: Path) -> Path:
    """Copy the tokenizer files into ``<processed_dir>/tokenizer/``: processing loads them from there."""
    target = processed_dir / TOKENIZER_DIR
    target.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        shutil.copyfile(path, target / name)
    return target


def prepare_data(
    dataset_path: str | Path,
    processed_dir: str | Path,
    *,
    base_model: str,
    max_seq_len: int,
    effective_batch_size: int,
    num_epochs: int,
    num_cpu_procs: int,
    env: Mapping[str, str],
) -> PreparedData:
    """Tokenize and measure the dataset into ``processed_dir``; ``prepared.json`` is written last."""
    dataset_path, processed_dir = Path(dataset_path), Path(processed_dir)
    files = tokenizer_files(tokenizer_source(base_model, env))
    current = fingerprint(dataset_path, files, max_seq_len)
    (processed_dir / PREPARED_FILE).unlink(missing_ok=True)  # never describes a data.jsonl being replaced
    tokenizer_dir = stage_tokenizer(files, processed_dir)
    processed = process_chat_data(
        dataset_path,
        processed_dir,
        model_path=str(tokenizer_dir),
        max_seq_len=max_seq_len,
        num_cpu_procs=num_cpu_procs,
    )
    report = build_report(
        processed, max_seq_len=max_seq_len, effective_batch_size=effective_batch_size, num_epochs=num_epochs
    )
    prepared = PreparedData(str(processed_dir), current, report)
    atomic_write_bytes(processed_dir / PREPARED_FILE, jsonio.dumps(prepared.to_dict(), indent=True))
    return prepared


def reusable(
    dataset_path: str | Path,
    processed_dir: str | Path,
    *,
    base_model: str,
    max_seq_len: int,
    env: Mapping[str, str],
) -> tuple[PreparedData | None, str]:
    """The prepared data when its fingerprint matches these inputs, else None and the reason."""
    processed_dir = Path(processed_dir)
    try:
        recorded = jsonio.loads((processed_dir / PREPARED_FILE).read_bytes())
    except FileNotFoundError:
        return None, "no data was prepared before the job"
    except (OSError, ValueError) as exc:
        return None, f"{processed_dir / PREPARED_FILE} cannot be read ({exc})"
    if not (processed_dir / c.PROCESSED_DATA_FILE).is_file():
        return None, f"{processed_dir / c.PROCESSED_DATA_FILE} is missing"
    files = tokenizer_files(tokenizer_source(base_model, env))
    current = fingerprint(Path(dataset_path), files, max_seq_len)
    if reasons := differences(recorded.get("fingerprint", {}), current):
        return None, "; ".join(reasons)
    report = replace(
        DataReport.from_dict(recorded["report"]), processed_path=str(processed_dir / c.PROCESSED_DATA_FILE)
    )
    return PreparedData(str(processed_dir), current, report), ""  # the paths as this process sees them
