"""The workspace steps of the pipeline, each one function run where the workspace is mounted.

``resolve`` writes the validated dataset into the workspace, ``prepare`` tokenizes and measures
it on a CPU before any training job exists, and ``export`` publishes the final model there; each returns the small JSON result its Airflow task pushes to XCom.
They run in the Airflow worker when it mounts the workspace (the local backend, or a PVC
mounted on the worker), and otherwise in a pod next to the PVC, as the pod program's
``resolve`` and ``export`` commands. The function and its result are the same in both
places; only the transport differs (a pod prints its result on its last log line, see
:func:`~airflow_provider_sft.core.pod.protocol.result_line`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.training.resume import IDENTITY_FILE

if TYPE_CHECKING:
    from airflow_provider_sft.core.params import SFTParams

Logger = Callable[[str], None]


def resolve(config: Mapping[str, Any], *, log: Logger, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``config``: ``source``, ``workspace``, ``dataset_dir`` (this run's) and the dataset option
    ``settings`` (secrets from ``env``)."""
    from airflow_provider_sft.core.dataset import DatasetOptions, resolve_dataset

    options = DatasetOptions.from_settings(config.get("settings", {}), env)
    if config.get("dataset_dir"):  # the DAG run's directory, which its training pods write into
        shared_dirs(Path(config["workspace"]), Path(config["dataset_dir"]).parent)
    stats = resolve_dataset(
        config["source"], config["workspace"], options, log=log, dataset_dir=config.get("dataset_dir")
    )
    return stats.to_dict()


def shared_dirs(workspace: Path, relative: Path) -> Path:
    """``<workspace>/<relative>`` (``runs/<run>``), each level group-writable when created here
    (setgid, like an fsGroup volume).

    In ``shared`` mode the worker resolves the dataset into the DAG run's directory, and the
    training pods, another user of the same group, write their checkpoints next to it.
    """
    from airflow_provider_sft.core.files import owned_path

    owned_path(workspace / relative, workspace, field="dataset_dir")  # never a level outside it
    workspace.mkdir(parents=True, exist_ok=True)  # the workspace itself is the user's: as it comes
    path = workspace
    for part in relative.parts:
        path = path / part
        if not path.exists():
            path.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # not ours to change on some volumes
                path.chmod(0o2775)
    return path


def prepare_config(
    dataset_path: str, processed_dir: str, params: SFTParams, *, base_model: str | None = None
) -> dict[str, Any]:
    """The config :func:`prepare` reads, from the training parameters (``base_model``: the
    parameter's, or the caller's resolved path to it)."""
    return {
        "dataset_path": dataset_path,
        "processed_dir": processed_dir,
        "base_model": base_model or params.base_model,
        "max_seq_len": params.max_seq_len,
        "effective_batch_size": params.effective_batch_size,
        "num_epochs": params.num_epochs,
    }


def prepare(config: Mapping[str, Any], *, log: Logger, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``config``: ``dataset_path``, ``processed_dir``, ``base_model``, ``max_seq_len``,
    ``effective_batch_size``, ``num_epochs``. Tokenizes on every CPU this process may use and
    returns the fingerprint and the data report; the caller judges it (the gate), so a run
    stopped by the gate fails the same way wherever the step ran."""
    from airflow_provider_sft.core.files import make_group_writable
    from airflow_provider_sft.core.training.data_processing import available_cpus
    from airflow_provider_sft.core.training.prepare import prepare_data

    cpus = available_cpus()
    log(f"tokenizing {config['dataset_path']} with the tokenizer of {config['base_model']} on {cpus} CPU(s)")
    prepared = prepare_data(
        config["dataset_path"],
        config["processed_dir"],
        base_model=config["base_model"],
        max_seq_len=config["max_seq_len"],
        effective_batch_size=config["effective_batch_size"],
        num_epochs=config["num_epochs"],
        num_cpu_procs=cpus,
        env=env,
    )
    make_group_writable(Path(prepared.processed_dir))  # a pod of another user may have to redo it
    return prepared.to_dict()


def export(config: Mapping[str, Any], *, log: Logger, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``config``: ``run_dir``, ``model_dir``, ``metrics_path``, and ``latest_path``: a small JSON
    file naming the newest exported model, replaced atomically (never the model itself);
    optional ``job_created`` (when the training job was created, ISO 8601), ``gpu_hour_cost``,
    and ``publish_to`` with the publish ``settings`` (secrets from ``env``): where the model
    then goes (see :mod:`~airflow_provider_sft.core.publish`). The result carries the loss
    curve, the data report and the efficiency figures (also in ``metrics.json``), and the
    ``publication``."""
    from airflow_provider_sft.core.publish import PublishOptions, parse_destination, publish
    from airflow_provider_sft.core.results.efficiency import checked_gpu_hour_cost, run_efficiency
    from airflow_provider_sft.core.results.export import (
        export_model,
        require_metrics_file,
        select_final_checkpoint,
    )
    from airflow_provider_sft.core.results.metrics import read_metrics_log, summarize_log, write_summary
    from airflow_provider_sft.core.results.model_card import MODEL_CARD_FILE, model_card

    # Every input is checked before anything is written.
    gpu_hour_cost = checked_gpu_hour_cost(config.get("gpu_hour_cost"))
    destination = parse_destination(config.get("publish_to"))
    options = PublishOptions.from_settings(config.get("publish_settings") or {}, env) if destination else None
    run_dir = Path(config["run_dir"])
    metrics_file = require_metrics_file(run_dir)  # before the model is published

    metrics = read_metrics_log(metrics_file)
    records, summary = metrics.records, summarize_log(metrics)
    data_report = read_data_report(run_dir)
    checkpoint = select_final_checkpoint(run_dir)
    efficiency = run_efficiency(
        metrics,
        model_dir=checkpoint,  # its config.json: the model's size and shape
        job_created=config.get("job_created"),
        gpu_hour_cost=gpu_hour_cost,
    ).to_dict()
    card = model_card(
        run_dir,
        summary=summary.to_dict(),
        data_report=data_report,
        efficiency=efficiency,
        facts=metrics.facts,
    )
    result = export_model(
        run_dir, config["model_dir"], extra_files={MODEL_CARD_FILE: card.encode()}, checkpoint=checkpoint
    )
    log(
        f"exported {result.source_checkpoint} -> {result.model_path} ({result.files} files, {result.bytes} bytes)"
    )
    metrics_path = write_summary(
        summary, Path(config["metrics_path"]), data=data_report, efficiency=efficiency
    )
    publication = None
    if destination and options:
        publication = publish(
            result.model_path, destination, run_name=run_dir.name, options=options, log=log
        ).to_dict()
    if config.get("latest_path"):
        from airflow_provider_sft.core.files import atomic_write_bytes

        latest = {"run_dir": str(run_dir), "model_path": result.model_path, "metrics_path": str(metrics_path)}
        if publication:
            latest["published"] = publication["uri"]
        atomic_write_bytes(config["latest_path"], jsonio.dumps(latest, indent=True))
    if config.get("prune"):  # last: until the model is published, the run's newest full state can resume it
        pruned = prune_intermediate(run_dir)
        log(f"pruned the run's intermediate state ({', '.join(pruned) or 'nothing'}); the model is kept")
    return {
        "model_path": result.model_path,
        "source_checkpoint": result.source_checkpoint,
        "files": result.files,
        "bytes": result.bytes,
        "metrics_path": str(metrics_path),
        "metrics": summary.to_dict(),
        "steps": [asdict(record) for record in records],
        "resumes": summary.resumes,  # the loss chart marks them
        "data_report": data_report,
        "efficiency": efficiency,
        "publication": publication,
    }


def read_data_report(run_dir: Path) -> dict[str, Any] | None:
    """The report of the data the run trained on, as its node 0 wrote it (None for an older run)."""
    try:
        return jsonio.loads((run_dir / c.DATA_REPORT_FILE).read_bytes())
    except FileNotFoundError:
        return None


#: What a run keeps only until its model is exported: optimizer state (and the identity that
#: lets a new attempt resume from it: kept as long as the state, no longer), checkpoints (the
#: exported model holds hard links to, or copies of, the files it needs) and processed data.
#: Retention: the newest complete ``full_state/`` survives until the export has published the
#: model (the model, ``metrics.json`` and ``latest.json`` written): an export that fails on the
#: way leaves the run resumable (``resume="auto"``). Then, unless ``keep_intermediate``, all go.
INTERMEDIATE = (c.FULL_STATE_DIR, IDENTITY_FILE, c.HF_FORMAT_DIR, c.PROCESSED_DIR)


def prune_intermediate(run_dir: Path) -> list[str]:
    """Remove the run's intermediate state (never its final model, metrics or log)."""
    from airflow_provider_sft.core.files import remove_owned

    return [
        name for name in INTERMEDIATE if remove_owned(run_dir / name, run_dir, field="training_output_dir")
    ]


STEPS: dict[str, Callable[..., dict[str, Any]]] = {"resolve": resolve, "prepare": prepare, "export": export}
