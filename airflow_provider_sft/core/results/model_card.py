"""The model card: ``README.md`` with the Hub's metadata header, written into every exported model.

It says what the model is and how it was made, for whoever finds it in a bucket or on the Hub:
the base model, the training parameters, the final loss. (#24 extends it: dataset sha256, every
parameter, validation loss, data report, efficiency, provider version and program sha256.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio

MODEL_CARD_FILE = "README.md"


def model_card(
    run_dir: Path,
    *,
    summary: Mapping[str, Any],
    data_report: Mapping[str, Any] | None,
    efficiency: Mapping[str, Any] | None,
) -> str:
    """The card of the run in ``run_dir`` (its ``run_config.json``; an older run without one gets
    a card that says what is unknown)."""
    try:
        run = jsonio.loads((run_dir / c.RUN_CONFIG_FILE).read_bytes())
    except FileNotFoundError:
        run = {}
    params = run.get("params") or {}
    base_model = str(params.get("model_path") or "unknown")
    header = ["---", "library_name: transformers", "tags:", "- sft", "- airflow-provider-sft"]
    if base_model != "unknown" and not base_model.startswith("/"):
        header.append(f"base_model: {jsonio.dumps(base_model).decode()}")
    header.append("---")
    lines = [
        f"# {run_dir.name}",
        "",
        f"Fine-tuned from `{base_model}` with supervised fine-tuning (instructlab-training).",
        "",
        "## Results",
        "",
        *(
            f"- {key}: {value}"
            for key, value in sorted(summary.items())
            if not isinstance(value, list | dict)
        ),
    ]
    return "\n".join([*header, *lines, ""])
