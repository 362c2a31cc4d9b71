"""The trigger form of an SFT pipeline: Airflow ``Param``\\ s, typed, titled, sectioned, in order.

Types, enums, minimums and defaults come from :class:`SFTParams` (one source of truth); the
titles and descriptions are written for the person at the form, not derived from field names.
Every rule JSON Schema can express is in the schema, so a bad value is refused when the run is
triggered (UI, REST ``conf``), before any task: quantities, Kubernetes label keys and values,
minimums, int32 maximums, enums. Two exceptions, each for a reason: numeric bounds sit inside
``allOf`` (the form's number input reads a top-level ``minimum``/``maximum`` and silently clamps
what was typed to them), and ``envs`` has no pattern: Airflow's refusal prints the value it
refused, and ``envs`` may hold a token; the pipeline's first task checks it and names the item
without its value. Rules across fields are checked by that first task too
(:class:`~airflow_provider_sft.operators.validate.ValidateRunOperator`).

Optional text fields are nullable (``["null", "string"]``, default ``None``): Airflow's form
treats an empty string as a missing required value, so ``""`` defaults would block *Trigger*.
An empty field means "not set" everywhere downstream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import Param

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.checkpoint_grace import MAX_CHECKPOINT_GRACE_SECONDS
from airflow_provider_sft.core.dataset import BUNDLED_SOURCE, Format, OnBadRecord, RecordMapping
from airflow_provider_sft.core.params import INT32_FIELDS, INT32_MAX, SFTParams

# --- patterns (valid in Python's ``re`` and in JavaScript) ---------------------------------

#: A Kubernetes quantity: a number with an exponent or a suffix (the API server's grammar).
QUANTITY_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?\s*$"
_LABEL_KEY = (
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_LABEL_ITEM = rf"\s*{_LABEL_KEY}\s*=\s*([A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?)?\s*"
#: ``key=value,...`` in Kubernetes label syntax (``[prefix/]name``, values of at most 63 characters).
LABEL_LIST_PATTERN = rf"^({_LABEL_ITEM}(,{_LABEL_ITEM})*)?$"
_ANNOTATION_ITEM = rf"\s*{_LABEL_KEY}\s*=[^,]*"
#: ``key=value,...`` with Kubernetes annotation keys (any value without a comma).
ANNOTATION_LIST_PATTERN = rf"^({_ANNOTATION_ITEM}(,{_ANNOTATION_ITEM})*)?$"

#: One word: connection ids, HuggingFace splits, subsets and revisions (a space is a typo).
WORD_PATTERN = r"^\S+$"
#: A DNS-1123 label (namespaces) and subdomain (PVCs, runtimes), as the API server checks them.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

#: The form's sections, in the order the dialog shows them.
SECTIONS = (
    "Model and training",
    "Dataset",
    "Resources",
    "Checkpoints",
    "Publish",
    "Where it runs",
    "Kubernetes",
    "Pod metadata and environment",
)

#: Title, section and description of each training parameter, as the form shows them.
TRAINING_FORM: dict[str, tuple[str, str, str]] = {
    "base_model": (
        "Base model",
        "Model and training",
        "A HuggingFace model id (org/name) or a directory with the model (a path the training "
        "process can read; relative paths are relative to the workspace).",
    ),
    "num_epochs": ("Epochs", "Model and training", "Passes over the dataset."),
    "learning_rate": ("Learning rate", "Model and training", "Peak learning rate, > 0 (e.g. 5e-6)."),
    "lr_scheduler": (
        "Learning-rate schedule",
        "Model and training",
        "How the learning rate changes over the run.",
    ),
    "lr_warmup_steps": (
        "Warm-up steps",
        "Model and training",
        "Optimizer steps over which the learning rate rises from 0 to its peak.",
    ),
    "effective_batch_size": (
        "Effective batch size",
        "Model and training",
        "Samples per optimizer step, over all GPUs (gradient accumulation makes up the rest).",
    ),
    "max_seq_len": (
        "Max sequence length",
        "Model and training",
        "Samples this long or longer (in tokens) are dropped, and reported.",
    ),
    "max_tokens_per_gpu": (
        "Max tokens per GPU",
        "Model and training",
        "Tokens in one GPU's micro-batch: the memory cap. At least the max sequence length.",
    ),
    "seed": ("Random seed", "Model and training", "Same seed, same data order and initialisation."),
    "validation_split": (
        "Validation split",
        "Model and training",
        "Share of the samples held out (not trained on) for a validation loss, from 0 (none) to below 1, "
        "e.g. 0.05. Needs a validation frequency.",
    ),
    "validation_frequency": (
        "Validation every N steps",
        "Model and training",
        "With a validation split: the validation loss is computed every this many optimizer steps "
        "(and at the end on a CPU). Empty: no validation.",
    ),
    "resource_gpu_per_worker": (
        "GPUs per worker",
        "Resources",
        "0 trains on the CPU. On the local backend: the CUDA devices present, or 0.",
    ),
    "resource_cpu_per_worker": (
        "CPUs per worker",
        "Resources",
        "A Kubernetes quantity: 4, 500m. On the local backend: the torch threads.",
    ),
    "resource_memory_per_worker": (
        "Memory per worker",
        "Resources",
        "A Kubernetes quantity: 64Gi, 512Mi. Enforced: the run is stopped above it.",
    ),
    "resource_num_workers": ("Workers (nodes)", "Resources", "Training pods; the local backend runs one."),
    "resource_num_procs_per_worker": (
        "Processes per worker",
        "Resources",
        "'auto' (one per GPU) or a number no larger than the GPUs per worker.",
    ),
    "fsdp_sharding_strategy": (
        "FSDP sharding",
        "Resources",
        "How model state is split across GPUs (HYBRID_SHARD: within a node, replicated across nodes).",
    ),
    "use_liger": (
        "Liger kernels",
        "Resources",
        "Faster fused kernels on CUDA (needs liger-kernel in the image).",
    ),
    "checkpoint_at_epoch": (
        "Checkpoint every epoch",
        "Checkpoints",
        "Write a model checkpoint at the end of each epoch.",
    ),
    "save_samples": (
        "Checkpoint every N samples",
        "Checkpoints",
        "Also write a checkpoint each time this many samples have been trained on; 0: never. "
        "With neither this nor per-epoch checkpoints there is no model to export.",
    ),
    "accelerate_full_state_at_epoch": (
        "Resumable state every epoch",
        "Checkpoints",
        "Keep the optimizer and scheduler state too (removed after the export unless kept).",
    ),
    "data_output_dir": (
        "Processed data directory",
        "Checkpoints",
        "Where the tokenized data goes; empty: the run's own data/ directory.",
    ),
    "envs": (
        "Environment variables",
        "Pod metadata and environment",
        "KEY=VALUE,KEY=VALUE for the training process (e.g. NCCL_DEBUG=INFO). Not for secrets: a "
        "token belongs in a connection (hf_conn_id) or a Kubernetes Secret; values whose names "
        "look secret (TOKEN, PASSWORD, API_KEY, ...) are masked in logs and Rendered Templates, but "
        "the run's conf keeps what was typed.",
    ),
    "metadata_labels": (
        "Pod labels",
        "Pod metadata and environment",
        "key=value,key=value on the training pods, Kubernetes label syntax.",
    ),
    "metadata_annotations": (
        "Pod annotations",
        "Pod metadata and environment",
        "key=value,key=value on the training pods.",
    ),
}

#: What the form proposes as the field is typed (a list under it); Airflow's error on a bad value
#: shows them too, in the schema it prints.
_EXAMPLES = {
    "resource_cpu_per_worker": ["1", "4", "500m"],
    "resource_memory_per_worker": ["8Gi", "64Gi", "512Mi"],
    "resource_num_procs_per_worker": ["auto", "1", "8"],
}
_NULLABLE = {"envs", "metadata_labels", "metadata_annotations", "data_output_dir"}
_PATTERNS = {
    "resource_cpu_per_worker": QUANTITY_PATTERN,
    "resource_memory_per_worker": QUANTITY_PATTERN,
    "resource_num_procs_per_worker": r"^\s*(auto|[1-9][0-9]*)\s*$",
    "metadata_labels": LABEL_LIST_PATTERN,
    "metadata_annotations": ANNOTATION_LIST_PATTERN,
}


def _schema_for(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    title, section, description = TRAINING_FORM[name]
    schema: dict[str, Any] = {"title": title, "description": description, "section": section}
    if "anyOf" in prop:  # an optional number (``int | None``): the field may stay empty
        number = next(item for item in prop["anyOf"] if item.get("type") != "null")
        prop = {**number, "default": prop.get("default")}
        schema.update(type=["null", prop["type"]], default=prop["default"])
    elif name in _NULLABLE:
        schema.update(type=["null", "string"], default=None)
    elif name in _PATTERNS:  # quantities and "auto|N": strings in the seed's interface
        schema.update(type="string", default=str(prop["default"]))
    elif "$ref" in prop:
        schema.update(
            type="string", enum=defs[prop["$ref"].rsplit("/", 1)[-1]]["enum"], default=prop["default"]
        )
    elif prop["type"] == "boolean":  # a switch is never empty: no "required" mark on it
        schema.update(type=["null", "boolean"], default=prop.get("default"))
    else:
        schema.update(type=prop["type"], default=prop.get("default"))
    if name in _PATTERNS:
        schema["pattern"] = _PATTERNS[name]
    if name in _EXAMPLES:
        schema["examples"] = _EXAMPLES[name]
    bounds = _bounds(name, prop)
    if bounds:
        # Not top-level "minimum"/"maximum": the form's number input reads those and silently
        # clamps what was typed (-8 became 1, and a run started). Inside allOf the UI ignores
        # them and Airflow's check on trigger refuses the value, naming the field.
        schema["allOf"] = [{"title": title, **bounds}]
    return schema


def _bounds(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    """The numeric bounds of a training parameter, as JSON schema keywords."""
    bounds: dict[str, Any] = {}
    if "exclusiveMinimum" in prop:  # pydantic's PositiveInt: > 0
        bounds["minimum"] = prop["exclusiveMinimum"] + 1
    if "minimum" in prop:
        bounds["minimum"] = prop["minimum"]
    if name in INT32_FIELDS:
        bounds["maximum"] = INT32_MAX
    if name == "seed":
        bounds["maximum"] = 2**32 - 1
    if name == "learning_rate":
        bounds = {"exclusiveMinimum": 0}
    if name == "validation_split":
        bounds = {"minimum": 0, "exclusiveMaximum": 1}
    return bounds


def training_param_schemas(**defaults: Any) -> dict[str, dict[str, Any]]:
    """JSON schema per training parameter; ``defaults`` override the seed's defaults."""
    full = SFTParams.model_json_schema()
    defs = full.get("$defs", {})
    properties = full["properties"]
    schemas = {name: _schema_for(name, properties[name], defs) for name in TRAINING_FORM}  # form order
    for name, value in defaults.items():
        schemas[name]["default"] = value
    return schemas


def _text(title: str, section: str, description: str, **schema: Any) -> Param:
    """An optional text field: empty (``None``) means not set."""
    return Param(
        None, type=["null", "string"], title=title, section=section, description=description, **schema
    )


def _choice(default: str, choices: list[str], title: str, section: str, description: str) -> Param:
    """A required pick from a closed list (a drop-down in the form)."""
    return Param(default, type="string", enum=choices, title=title, section=section, description=description)


def pipeline_params(workspace: str, **defaults: Any) -> dict[str, Param]:
    """Every Param of the example pipeline (training, dataset, where it runs), in section order.

    ``defaults`` override any field's default (the demo passes its tiny model and CPU settings).
    """
    params: dict[str, Param] = {
        name: Param(schema.pop("default"), **schema) for name, schema in training_param_schemas().items()
    }
    params.update(_dataset_params())
    params.update(_dataset_access_params())
    params.update(_resume_params())
    params.update(_cost_params())
    params.update(_publish_params())
    params.update(_where_it_runs_params(workspace))
    params.update(_kubernetes_params())
    for name, value in defaults.items():
        params[name] = Param(value, description=params[name].description, schema=dict(params[name].schema))
    return ordered(params)


def _dataset_params() -> dict[str, Param]:
    """Section "Dataset": what the data is and how its records read."""
    return {
        "dataset": Param(
            BUNDLED_SOURCE,
            type="string",
            minLength=1,
            title="Dataset source",
            section="Dataset",
            description=(
                "'bundled' (a sample shipped with the provider); a file or a directory of shards "
                "(absolute, or relative to the workspace); s3://bucket/key-or-prefix/; an http(s):// "
                "URL; or a HuggingFace dataset org/name[@revision][:split]."
            ),
        ),
        "dataset_format": _choice(
            Format.AUTO.value,
            [f.value for f in Format],
            "File format",
            "Dataset",
            "auto: from the file name, then the content. gzip and zstd are recognised by themselves.",
        ),
        "dataset_mapping": _choice(
            RecordMapping.MESSAGES.value,
            [m.value for m in RecordMapping],
            "Record layout",
            "Dataset",
            "messages (chat samples), or convert prompt/completion or instruction/input/output records.",
        ),
        "on_bad_record": _choice(
            OnBadRecord.FAIL.value,
            [o.value for o in OnBadRecord],
            "Bad records",
            "Dataset",
            "fail: stop at the first bad record, naming file, line and field; skip: count and drop them.",
        ),
        "max_dropped_fraction": Param(
            c.DEFAULT_MAX_DROPPED_FRACTION,
            type="number",
            allOf=[{"title": "Most samples the run may lose", "minimum": 0, "maximum": 1}],  # not clamped
            title="Most samples the run may lose",
            section="Dataset",
            description=(
                "A share from 0 to 1. Samples under 20 tokens or at/over max_seq_len are dropped by the data "
                "processing; past this share the run stops before any GPU is asked for, with a max_seq_len "
                "that would keep 99%."
            ),
        ),
    }


def _dataset_access_params() -> dict[str, Param]:
    """Section "Dataset", continued: which part of a HuggingFace dataset, and the connections that reach it."""
    return {
        "dataset_split": _text(
            "HuggingFace split",
            "Dataset",
            "Empty: train. Only for HuggingFace datasets.",
            pattern=WORD_PATTERN,
        ),
        "dataset_subset": _text(
            "HuggingFace subset",
            "Dataset",
            "A subset (configuration) directory. Only for HuggingFace datasets.",
            pattern=WORD_PATTERN,
        ),
        "dataset_revision": _text(
            "HuggingFace revision",
            "Dataset",
            "Branch, tag or commit; empty: main. Only for HuggingFace datasets.",
            pattern=WORD_PATTERN,
        ),
        "hf_conn_id": _text(
            "HuggingFace connection",
            "Dataset",
            "A 'huggingface' connection (token, endpoint) for datasets, models and an hf:// publish; empty: "
            "HF_TOKEN of the worker.",
            pattern=WORD_PATTERN,
        ),
        "aws_conn_id": _text(
            "S3 connection",
            "Dataset",
            "An 'aws' connection (keys, region, endpoint_url) for s3:// sources and an s3:// publish; empty: the "
            "worker's environment.",
            pattern=WORD_PATTERN,
        ),
    }


def _resume_params() -> dict[str, Param]:
    """Section "Checkpoints", continued: what a new attempt of the run starts from."""
    return {
        "resume": _choice(
            c.DEFAULT_RESUME,
            ["auto", "never"],
            "Resume",
            "Checkpoints",
            "auto: after a preemption or a retry, continue from the run's newest complete saved state of the "
            "same settings, data, model and code (the task log says from where, or why not); never: start clean.",
        ),
    }


def _cost_params() -> dict[str, Param]:
    """Section "Resources", continued: what a GPU-hour costs, for the run's cost in ``metrics.json``."""
    return {
        "gpu_hour_cost": Param(
            None,
            type=["null", "number"],
            allOf=[{"title": "GPU-hour price", "minimum": 0}],  # not top-level: the input would clamp it
            title="GPU-hour price",
            section="Resources",
            description=(
                "The price of one GPU-hour (any currency): the run's cost is its GPU-hours x this, in "
                "metrics.json, the chart page and the summary. Empty: no cost."
            ),
        ),
    }


#: What the form lets through as ``publish_to``; the validate task parses it (one error naming the field).
PUBLISH_TO_PATTERN = r"^\s*(s3|hf)://\S+\s*$"


def _publish_params() -> dict[str, Param]:
    """Section "Publish": where the exported model leaves the cluster (empty: it stays in the workspace)."""
    return {
        "publish_to": _text(
            "Publish to",
            "Publish",
            "s3://bucket/prefix/ (through the S3 connection; each run under prefix/runs/<run>/, then "
            "prefix/latest.json names it) or hf://org/name[@revision] (through the HuggingFace connection; a "
            "private repo, one commit). Empty: the model stays in the workspace. Either way the export emits "
            "the model's Airflow Asset, which starts sft_evaluate.",
            pattern=PUBLISH_TO_PATTERN,
        ),
    }


def _where_it_runs_params(workspace: str) -> dict[str, Param]:
    """Section "Where it runs": the backend, and the worker-side directory every run lives under."""
    return {
        "backend": _choice(
            "local",
            ["local", "kubernetes"],
            "Backend",
            "Where it runs",
            "local: on the Airflow worker (CUDA if present, else the CPU); kubernetes: a Kubeflow TrainJob.",
        ),
        "workspace": Param(
            workspace,
            type="string",
            minLength=1,
            title="Workspace",
            section="Where it runs",
            description=(
                "A directory on the Airflow side: the local backend's runs and the loss chart; in "
                "shared mode, where the worker mounts the PVC."
            ),
        ),
    }


def _kubernetes_params() -> dict[str, Param]:
    """Section "Kubernetes": read only on the kubernetes backend (the PVC, namespace, job kind, image)."""
    return {
        "workspace_mode": _choice(
            "cluster",
            ["cluster", "shared"],
            "Workspace mode",
            "Kubernetes",
            "cluster: only the pods mount the PVC (at /workspace); shared: the worker mounts it at the workspace too.",
        ),
        "pvc_name": _text(
            "Workspace PVC",
            "Kubernetes",
            "Required on kubernetes: the PVC the pods use as workspace (ReadWriteMany for several workers).",
            pattern=DNS_SUBDOMAIN_PATTERN,
        ),
        "namespace": _text(
            "Namespace",
            "Kubernetes",
            "Where the TrainJob goes; empty: the connection's namespace.",
            pattern=DNS_LABEL_PATTERN,
        ),
        "job_kind": _choice(
            "TrainJob",
            ["TrainJob", "PyTorchJob"],
            "Job kind",
            "Kubernetes",
            "TrainJob: Kubeflow Trainer v2. PyTorchJob: Training Operator v1 (Master + Workers; needs an image).",
        ),
        "image": _text(
            "Training image",
            "Kubernetes",
            "Python with torch and instructlab-training. Empty: the TrainJob runtime's image; required for a PyTorchJob.",
        ),
        "runtime_name": Param(
            "torch-distributed",
            type="string",
            pattern=DNS_SUBDOMAIN_PATTERN,
            title="Training runtime",
            section="Kubernetes",
            description="The ClusterTrainingRuntime: torch-distributed upstream, training-hub on OpenShift AI.",
        ),
        "job_labels": _text(
            "TrainJob labels",
            "Kubernetes",
            "key=value,... on the TrainJob itself, e.g. kueue.x-k8s.io/queue-name=gpu-queue.",
            pattern=LABEL_LIST_PATTERN,
        ),
        "checkpoint_grace_seconds": Param(
            None,
            type=["null", "integer"],
            # not top-level minimum/maximum: the form's number input would clamp what was typed
            allOf=[
                {"title": "Checkpoint grace period", "minimum": 1, "maximum": MAX_CHECKPOINT_GRACE_SECONDS}
            ],
            title="Checkpoint grace period (s)",
            section="Kubernetes",
            description=(
                f"Seconds a preempted training pod may take to save its state (1 to {MAX_CHECKPOINT_GRACE_SECONDS}): "
                "the pods' terminationGracePeriodSeconds. Empty: derived from a local base model's size, "
                f"else {c.DEFAULT_CHECKPOINT_GRACE_SECONDS} (enough for 7B parameters)."
            ),
        ),
    }


#: A JSON file of form defaults (``{"base_model": ..., ...}``) the example DAG reads: how
#: ``sft-demo --serve`` makes *Trigger* with the defaults train its tiny model offline.
FORM_DEFAULTS_ENV = "SFT_FORM_DEFAULTS"


def form_defaults() -> dict[str, Any]:
    """The defaults named by ``$SFT_FORM_DEFAULTS`` (none when unset)."""
    path = os.environ.get(FORM_DEFAULTS_ENV)
    if not path:
        return {}
    return json.loads(Path(path).read_text())


def ordered(params: Mapping[str, Param]) -> dict[str, Param]:
    """``params`` by section in :data:`SECTIONS` order (Airflow shows sections as they first appear)."""
    rank: dict[str | None, int] = {section: index for index, section in enumerate(SECTIONS)}
    return dict(sorted(params.items(), key=lambda item: rank.get(item[1].schema.get("section"), len(rank))))
