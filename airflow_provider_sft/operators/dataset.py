"""Resolve the training dataset into the workspace (its own task, XCom-linked to training)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.dataset import BUNDLED_SOURCE, DatasetOptions
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.lineage import LineageMixin
from airflow_provider_sft.operators.failures import bad_input_is_final
from airflow_provider_sft.operators.workspace import (
    STEP_TEMPLATE_FIELDS,
    WorkspaceStepsMixin,
    dag_run_dir_name,
)


class ResolveDatasetOperator(WorkspaceStepsMixin, LineageMixin, BaseOperator):
    """Validate a chat dataset from anywhere and write it to ``<workspace>/runs/<run>/dataset/train.jsonl``.

    ``<run>`` is this task's run name (from dag id, run id, task id and map index): concurrent
    DAG runs never share a dataset file.

    Records stream one at a time into a temporary file renamed into place, so memory stays
    flat and a failure leaves no ``train.jsonl``; an unchanged source is not resolved twice.

    :param source: where the data is (templated):
        ``"bundled"`` (the sample shipped with the package); a path, absolute or relative to
        the workspace (``pvc://rel/path`` too), file or directory of shards;
        ``s3://bucket/key`` or ``s3://bucket/prefix/``; an ``http(s)://`` URL; a HuggingFace
        dataset ``org/name`` or ``hf://org/name[@revision][:split]``.
    :param workspace: workspace root, the local stand-in for the training PVC. (templated)
    :param format: ``auto`` (by file name, then content), ``jsonl``, ``json`` (an array),
        ``parquet`` or ``csv``; gzip/zstd compression is recognised by its magic bytes.
    :param mapping: ``messages`` (records are chat samples), or convert ``prompt_completion``
        (``prompt``, ``completion``) or ``instruction`` (``instruction``, ``input``, ``output``)
        records. Never guessed.
    :param on_bad_record: ``fail`` (default: the first bad record fails the task naming file,
        line and field) or ``skip`` (counted in ``skipped``, first reasons in ``skip_reasons``).
    :param split: HuggingFace split (default ``train``); ``subset``: its subset directory;
        ``revision``: branch, tag or commit (default: the source's ``@rev``, then the connection's,
        else ``main``). Given for any other kind of source, these three are an error.
    :param tokenizer: a ``tokenizer.json`` (or its directory) to report ``approx_tokens``.
    :param max_decompressed_bytes: the most bytes the source's files may hold together once
        decompressed (default 32 GiB; 0: no limit). A small ``.gz`` can expand to terabytes and
        fill the workspace; past the limit the task fails naming the file, and writes nothing.
    :param hf_conn_id: a ``huggingface`` connection (token, endpoint); default ``HF_TOKEN``/``HF_ENDPOINT``.
    :param aws_conn_id: an ``aws`` connection for ``s3://`` (keys, region, ``endpoint_url`` extra);
        default: boto3's chain (environment, profile, role).
    :param s3_endpoint_url: S3-compatible endpoint (MinIO, Ceph...), overriding the connection's.
    :param region_name: S3 region, overriding the connection's. Both are an error for a non-S3 source.

    On the ``kubernetes`` backend in ``cluster`` workspace mode (see
    :class:`~airflow_provider_sft.operators.workspace.WorkspaceStepsMixin` for ``backend``,
    ``workspace_mode``, ``pvc_mount_path``, ``kubernetes``, ``kubernetes_conn_id``) the
    resolution runs in a pod that mounts the PVC, with the connections' secrets in a Secret;
    paths are then paths on the PVC. The image must have what the source needs (``boto3``
    for ``s3://``, ``httpx`` for ``http(s)://``; the hub and local files need nothing more).

    Returns (XCom) the stats: ``path``, ``source``, ``records``, ``skipped``, ``skip_reasons``,
    ``bytes``, ``sha256``, ``files``, ``approx_tokens``, ``seconds``, ``reused``.
    """

    template_fields: Sequence[str] = (
        "source",
        "workspace",
        "format",
        "mapping",
        "on_bad_record",
        "split",
        "subset",
        "revision",
        "tokenizer",
        "s3_endpoint_url",
        "region_name",
        "hf_conn_id",
        "aws_conn_id",
        *STEP_TEMPLATE_FIELDS,
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        workspace: str,
        source: str = BUNDLED_SOURCE,
        format: str = "auto",
        mapping: str = "messages",
        on_bad_record: str = "fail",
        split: str | None = None,
        subset: str | None = None,
        revision: str | None = None,
        tokenizer: str | None = None,
        max_decompressed_bytes: int | None = None,
        hf_conn_id: str | None = None,
        aws_conn_id: str | None = None,
        s3_endpoint_url: str | None = None,
        region_name: str | None = None,
        backend: str = "local",
        workspace_mode: str | None = None,
        pvc_mount_path: str | None = None,
        kubernetes: dict[str, Any] | None = None,
        kubernetes_conn_id: str | None = "kubernetes_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        super().__init__(**kwargs)
        self._init_steps(backend, workspace_mode, pvc_mount_path, kubernetes, kubernetes_conn_id)
        self.source = source
        self.workspace = workspace
        self.format = format
        self.mapping = mapping
        self.on_bad_record = on_bad_record
        self.split = split
        self.subset = subset
        self.revision = revision
        self.tokenizer = tokenizer
        self.max_decompressed_bytes = max_decompressed_bytes
        self.hf_conn_id = hf_conn_id
        self.aws_conn_id = aws_conn_id  # "" (an empty form field) means none, like None
        self.s3_endpoint_url = s3_endpoint_url
        self.region_name = region_name

    def build_options(self) -> DatasetOptions:
        """The validated options, credentials from the connections (never logged or returned)."""
        from airflow_provider_sft.hooks.aws_connection import s3_options
        from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

        s3_settings = {"s3_endpoint_url": self.s3_endpoint_url, "region_name": self.region_name}
        misplaced = {name: "only for an s3:// source" for name, value in s3_settings.items() if value}
        if misplaced and not str(self.source).strip().startswith("s3://"):
            raise InvalidParameterError(misplaced, kind="dataset")
        hub = HuggingFaceHook(self.hf_conn_id or None)
        return DatasetOptions.build(
            format=self.format,
            mapping=self.mapping,
            on_bad_record=self.on_bad_record,
            split=self.split,
            subset=self.subset,
            revision=self.revision,
            hf_default_revision=hub.get_revision(),
            tokenizer=self.tokenizer,
            max_decompressed_bytes=self.max_decompressed_bytes,
            hf_endpoint=hub.get_endpoint(),
            hf_token=hub.get_token(),
            s3=s3_options(
                self.aws_conn_id or None, endpoint_url=self.s3_endpoint_url, region_name=self.region_name
            ),
        )

    def execute(self, context: Any) -> dict[str, Any]:
        with bad_input_is_final():  # a bad parameter is not retried
            return self._execute(context)

    def _execute(self, context: Any) -> dict[str, Any]:
        options = self.build_options()
        dataset_dir = Path(c.RUNS_DIR) / dag_run_dir_name(self, context) / c.DATASET_DIR
        config = {
            "source": self.source,
            "workspace": self.step_workspace,
            "dataset_dir": str(dataset_dir),
            "settings": options.settings(),
        }
        stats = self.run_step(context, "resolve", config, secret_env=options.secret_env())
        verb = "Reused unchanged" if stats["reused"] else "Resolved"
        self.log.info(
            "%s dataset %s: %d records (%d skipped) from %d file(s), %d bytes in %.1f s -> %s",
            verb,
            stats["source"],
            stats["records"],
            stats["skipped"],
            stats["files"],
            stats["bytes"],
            stats["seconds"],
            stats["path"],
        )
        for reason in stats["skip_reasons"]:
            self.log.warning("Skipped: %s", reason)
        self.record_lineage(inputs=[(stats["source"], "datasets")], outputs=[(stats["path"], "datasets")])
        return stats
