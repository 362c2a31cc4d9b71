"""The model card: ``README.md`` with the Hub's metadata header, written into every exported model.

It says what the model is and how it was made, for whoever finds it in a bucket or on the Hub:
the base model, the dataset (source and sha256), every training parameter, the metrics (loss,
validation loss, tokens, GPU-hours), the data report, and the provider version and program
sha256 that trained it. Those last come from the run-facts line the training process wrote
(``core/pod/provenance.py``), not from the process that exports: an export weeks later, with a
newer provider, still names what really trained the model. What a run did not record (an older
run without ``run_config.json``, metrics or facts) is said to be unknown, never guessed.

The header is YAML made of JSON values (YAML's JSON subset): no YAML library is needed where
the export runs (a pod with only the training image's packages). The card holds no training
data: counts, lengths and hashes only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import airflow_provider_sft
from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.params import is_hub_model_id

MODEL_CARD_FILE = "README.md"
UNKNOWN = "unknown"
TAGS = ("sft", "instructlab", "airflow-provider-sft")


def model_card(
    run_dir: Path,
    *,
    summary: Mapping[str, Any],
    data_report: Mapping[str, Any] | None,
    efficiency: Mapping[str, Any] | None,
    facts: Mapping[str, Any] | None = None,
) -> str:
    """The card of the run in ``run_dir`` (its ``run_config.json``); ``facts``: the run-facts line
    of its metrics (``MetricsLog.facts``: where it ran, what trained it)."""
    run = _run_config(run_dir)
    params = run.get("params") or {}
    facts = facts or {}
    dataset = facts.get("dataset") or {}
    base_model = str(params.get("base_model") or "")
    source = str(dataset.get("source") or run.get("dataset_path") or "")
    name = run_dir.name
    lines = [
        *_header(name, base_model, source, summary),
        f"# {name}",
        "",
        f"Fine-tuned from `{base_model or UNKNOWN}` with supervised fine-tuning "
        "(instructlab-training), run by airflow-provider-sft.",
        "",
        "## Provenance",
        "",
        *_table(
            [
                ("Base model", base_model or f"{UNKNOWN} (the run has no {c.RUN_CONFIG_FILE})"),
                ("Dataset source", source or UNKNOWN),
                ("Dataset sha256", dataset.get("sha256") or f"{UNKNOWN} (not recorded by this run)"),
                (
                    "Trained by airflow-provider-sft",
                    facts.get("provider_version") or f"{UNKNOWN} (not recorded)",
                ),
                ("Training program sha256", facts.get("program_sha256") or f"{UNKNOWN} (not recorded)"),
                ("Device", _device(facts)),
                ("Training started", facts.get("started") or UNKNOWN),
                ("Exported by airflow-provider-sft", airflow_provider_sft.__version__),
            ],
            ("Provenance", "Value"),
        ),
        "",
        "## Training parameters",
        "",
        *_parameters(run),
        "",
        "## Results",
        "",
        *_results(summary, efficiency),
        "",
        "## Training data",
        "",
        *_data(data_report),
        "",
    ]
    return "\n".join(lines)


def _run_config(run_dir: Path) -> dict[str, Any]:
    try:
        value = jsonio.loads((run_dir / c.RUN_CONFIG_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _yaml(value: Any) -> str:
    """A YAML value: JSON is YAML."""
    return jsonio.dumps(value).decode()


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _header(name: str, base_model: str, source: str, summary: Mapping[str, Any]) -> list[str]:
    """The Hub's metadata (``ModelCardData``): library, base model and dataset ids, tags, and the
    validation loss as a model-index result when the run measured one."""
    header = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    header.append(f"tags: {_yaml(list(TAGS))}")
    if is_hub_model_id(base_model):
        header.append(f"base_model: {_yaml(base_model)}")
    # hf://org/name[@revision][:split] -> the dataset id the Hub knows: org/name
    hub_dataset = re.split(r"[@:]", source.removeprefix("hf://"))[0] if source.startswith("hf://") else None
    if hub_dataset:
        header.append(f"datasets: {_yaml([hub_dataset])}")
    validation = _finite(summary.get("validation_loss"))
    if validation is not None:
        result = {
            "task": {"type": "text-generation", "name": "Text Generation"},
            "dataset": {
                "type": hub_dataset or "custom",
                "name": f"{hub_dataset or source or UNKNOWN} (held-out validation split)",
                "split": "validation",
            },
            "metrics": [
                {"type": "loss", "value": validation, "name": "Validation loss"},
                {
                    "type": "perplexity",
                    "value": round(math.exp(min(validation, c.PERPLEXITY_LOSS_CAP)), 4),
                    "name": "Validation perplexity",
                },
            ],
        }
        header.append(f"model-index: {_yaml([{'name': name, 'results': [result]}])}")
    return [*header, "---", ""]


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else _yaml(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows)]


def _device(facts: Mapping[str, Any]) -> str:
    device = facts.get("device")
    if not device:
        return UNKNOWN
    if device == "cpu":
        return "cpu"
    gpus = f"{facts.get('num_nodes') or '?'} node(s) x {facts.get('gpus_per_node') or '?'} GPU(s)"
    return f"{device}: {facts.get('gpu_name') or 'GPU'}, {gpus}"


def _parameters(run: Mapping[str, Any]) -> list[str]:
    params = run.get("params")
    if not params:
        return [f"Unknown: the run has no {c.RUN_CONFIG_FILE} (it predates the file, or it was removed)."]
    rows = [(f"`{key}`", value) for key, value in sorted(params.items())]
    rows += [
        (f"`{key}` (run)", run[key])
        for key in ("device", "resume", "max_dropped_fraction", "checkpoint_grace_seconds")
        if key in run
    ]
    return _table(rows, ("Parameter", "Value"))


def _number(value: Any, digits: int = 4) -> str | None:
    number = _finite(value)
    if number is None:
        return None
    return str(int(number)) if number.is_integer() and abs(number) >= 1 else f"{number:.{digits}g}"


def _results(summary: Mapping[str, Any], efficiency: Mapping[str, Any] | None) -> list[str]:
    if not summary or not summary.get("steps"):
        return ["Unknown: the run recorded no training metrics (no loss, tokens or GPU-hours)."]
    efficiency = efficiency or {}
    why = efficiency.get("not_available") or {}

    def figure(value: Any, key: str | None = None, unit: str = "") -> str:
        text = _number(value)
        if text is not None:
            return f"{text}{unit}"
        reason = why.get(key) if key else None
        return f"n/a ({reason})" if reason else "n/a"

    validation = "none measured (no validation_split)"
    if summary.get("validation_loss") is not None:
        validation = (
            f"{figure(summary.get('validation_loss'))} at step {summary.get('validation_step')} "
            f"(best {figure(summary.get('best_validation_loss'))} at step {summary.get('best_validation_step')})"
        )
    rows = [
        ("Final loss", figure(summary.get("final_loss"))),
        ("Final loss, smoothed (EMA)", figure(summary.get("final_loss_smoothed"))),
        ("Lowest loss", figure(summary.get("min_loss"))),
        ("Perplexity (exp of the final loss)", figure(summary.get("perplexity"))),
        ("Validation loss", validation),
        ("Steps", summary.get("steps")),
        ("Epochs", summary.get("epochs")),
        ("Samples seen", summary.get("samples_seen")),
        ("Tokens", summary.get("total_tokens")),
        ("Resumes", len(summary.get("resumes") or [])),
        ("Training time", figure(efficiency.get("training_seconds"), "training_seconds", " s")),
        ("GPU-hours", figure(efficiency.get("gpu_hours"), "gpu_hours")),
        ("Tokens/s", figure(efficiency.get("tokens_per_second"), "tokens_per_second")),
        ("MFU", figure(efficiency.get("mfu"), "mfu")),
        ("Cost", figure(efficiency.get("cost"), "cost")),
    ]
    return _table(rows, ("Metric", "Value"))


def _data(report: Mapping[str, Any] | None) -> list[str]:
    if not report:
        return ["Unknown: the run has no data report (it predates the report)."]
    keys = (
        ("input_samples", "Input samples"),
        ("kept_samples", "Kept samples"),
        ("dropped_too_short", "Dropped: under the minimum length"),
        ("dropped_too_long", "Dropped: at or over max_seq_len"),
        ("total_tokens", "Tokens (kept samples)"),
        ("label_tokens", "Label tokens (trained on)"),
        ("max_sample_tokens", "Longest sample (tokens)"),
        ("max_seq_len", "max_seq_len"),
        ("suggested_max_seq_len", "Suggested max_seq_len"),
        ("effective_batch_size", "Effective batch size"),
        ("steps_per_epoch", "Steps per epoch"),
        ("total_steps", "Total steps"),
    )
    rows = [(label, report[key]) for key, label in keys if key in report]
    percentiles = report.get("percentiles") or {}
    if percentiles:
        rows.append(("Token-length percentiles", ", ".join(f"{k}: {v}" for k, v in percentiles.items())))
    histogram = report.get("histogram") or {}
    edges, counts = histogram.get("edges") or [], histogram.get("counts") or []
    lines = _table(rows, ("Data", "Value"))
    if counts and len(edges) == len(counts) + 1:
        lines += ["", "Token lengths:", "", "| Tokens | Samples |", "|---|---|"]
        lines += [f"| {edges[i]}-{edges[i + 1] - 1} | {count} |" for i, count in enumerate(counts)]
    return lines
