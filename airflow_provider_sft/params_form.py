"""Airflow ``Param``\\ s for the trigger form, derived from :class:`SFTParams` (one source of truth).

Types, enums, minimums, defaults and descriptions come from the pydantic model's
JSON schema, so the UI form validates input the same way the operator does.
Mapping parameters (envs, labels, annotations) are ``KEY=VAL,KEY=VAL`` strings
as in the seed component.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from airflow_provider_sft.core.params import SFTParams

_MAPPINGS = {"envs", "metadata_labels", "metadata_annotations"}

#: Trigger-form sections (Airflow renders each as a collapsible group).
SECTIONS = {
    "Model and data": ("base_model", "max_seq_len", "data_output_dir"),
    "Optimisation": (
        "effective_batch_size",
        "max_tokens_per_gpu",
        "learning_rate",
        "lr_scheduler",
        "lr_warmup_steps",
        "num_epochs",
        "seed",
    ),
    "Checkpoints": ("checkpoint_at_epoch", "save_samples", "accelerate_full_state_at_epoch"),
    "Resources": (
        "resource_cpu_per_worker",
        "resource_gpu_per_worker",
        "resource_memory_per_worker",
        "resource_num_procs_per_worker",
        "resource_num_workers",
        "fsdp_sharding_strategy",
        "use_liger",
    ),
    "Pod metadata and environment": ("envs", "metadata_labels", "metadata_annotations"),
}
_SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}
_ACRONYMS = {"lr": "LR", "gpu": "GPU", "cpu": "CPU", "fsdp": "FSDP", "procs": "processes"}


def _title(name: str) -> str:
    words = [_ACRONYMS.get(word, word) for word in name.split("_")]
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


def _schema_for(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "title": _title(name),
        "description": prop.get("description", ""),
        "section": _SECTION_OF[name],
    }
    if name in _MAPPINGS:
        return {**schema, "type": "string", "default": ""}
    if name == "resource_num_procs_per_worker":
        return {**schema, "type": "string", "pattern": "^(auto|[1-9][0-9]*)$", "default": "auto"}
    if "$ref" in prop:
        enum = defs[prop["$ref"].rsplit("/", 1)[-1]]
        return {**schema, "type": "string", "enum": enum["enum"], "default": prop["default"]}
    if "anyOf" in prop:
        types = [option["type"] for option in prop["anyOf"]]
        return {**schema, "type": types, "default": prop.get("default")}
    schema.update(type=prop["type"], default=prop.get("default"))
    if "exclusiveMinimum" in prop:
        schema["minimum"] = prop["exclusiveMinimum"] + 1
    if "minimum" in prop:
        schema["minimum"] = prop["minimum"]
    if name == "learning_rate":
        schema["exclusiveMinimum"] = 0
    return schema


def training_param_schemas(**defaults: Any) -> dict[str, dict[str, Any]]:
    """JSON schema per training parameter; ``defaults`` override the seed's defaults."""
    full = SFTParams.model_json_schema()
    defs = full.get("$defs", {})
    schemas = {name: _schema_for(name, prop, defs) for name, prop in full["properties"].items()}
    for name, value in defaults.items():
        schemas[name]["default"] = value
    return schemas


def training_params(**defaults: Any) -> dict[str, Param]:
    """``Param`` per training parameter, for a DAG's ``params=``."""
    params = {}
    for name, schema in training_param_schemas(**defaults).items():
        schema = dict(schema)
        default = schema.pop("default")
        params[name] = Param(default, **schema)
    return params
