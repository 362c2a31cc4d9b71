"""Resolve the training dataset into the workspace (its own task, XCom-linked to training)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.core.dataset import BUNDLED_SOURCE, resolve_dataset
from airflow_provider_sft.lineage import LineageMixin


class ResolveDatasetOperator(LineageMixin, BaseOperator):
    """Validate a chat dataset and write it to ``<workspace>/dataset/train.jsonl``.

    :param source: ``"bundled"`` (the sample shipped with the package), a JSONL file, or a
        directory of ``*.jsonl`` files. (templated)
    :param workspace: workspace root, the local stand-in for the training PVC. (templated)

    Returns (XCom) the dataset stats: ``path``, ``records``, ``bytes``, ``sha256``, ``source``, ``reused``.
    """

    template_fields: Sequence[str] = ("source", "workspace")
    ui_color = "#e8f4fd"

    def __init__(self, *, workspace: str, source: str = BUNDLED_SOURCE, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self.source = source
        self.workspace = workspace

    def execute(self, context: Any) -> dict[str, Any]:
        stats = resolve_dataset(self.source, self.workspace)
        verb = "Reused unchanged" if stats.reused else "Resolved"
        self.log.info(
            "%s dataset %s: %d records, %d bytes -> %s",
            verb,
            stats.source,
            stats.records,
            stats.bytes,
            stats.path,
        )
        self.record_lineage(inputs=[(stats.source, "datasets")], outputs=[(stats.path, "datasets")])
        return stats.to_dict()
