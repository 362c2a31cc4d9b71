"""Every training parameter of the seed component, with its defaults and validation.

Two more are Airflow's alone (the KFP component keeps the seed's signature): ``validation_split``
and ``validation_frequency``, instructlab-training's held-out validation loss.

``SFTParams`` is the single typed model shared by the Airflow operator, the KFP shim
and the training entrypoint. Field names are the seed's parameter names without
their ``training_`` prefix (``training_learning_rate`` -> ``learning_rate``);
:meth:`SFTParams.from_component_kwargs` accepts the prefixed names and reports
errors with them, so each front end sees its own names in messages.

Validation happens before anything is submitted or started, and every failure is
collected into one :class:`InvalidParameterError` naming each bad parameter, the
rule, and (except for secrets) the offending value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.quantity import parse_quantity

COMPONENT_PARAMETER_PREFIX = "training_"
INT32_MAX = 2**31 - 1
INT32_FIELDS = (
    "effective_batch_size",
    "max_tokens_per_gpu",
    "max_seq_len",
    "lr_warmup_steps",
    "num_epochs",
    "resource_gpu_per_worker",
    "resource_num_workers",
    "save_samples",
)
REDACTED = "***"


class FSDPShardingStrategy(str, Enum):
    """instructlab-training's ``ShardingStrategies``."""

    FULL_SHARD = "FULL_SHARD"
    SHARD_GRAD_OP = "SHARD_GRAD_OP"
    NO_SHARD = "NO_SHARD"
    HYBRID_SHARD = "HYBRID_SHARD"


def normalise_sharding_strategy(value: Any) -> Any:
    """``"full_shard"``, ``" Full-Shard "`` -> ``"FULL_SHARD"``: the seed upper-cased and stripped the
    value before handing it to instructlab-training, so pipelines written for it pass it that way."""
    if isinstance(value, str):
        return re.sub(r"[\s-]+", "_", value.strip()).upper()
    return value


#: oci:// model images need a pull-and-unpack step no backend has yet: refused when the
#: parameters are read, so every backend (and the trigger form) refuses it the same way.
OCI_BASE_MODEL_UNSUPPORTED = (
    "oci:// base models are not supported yet; use a HuggingFace id or a path on the PVC (or the local disk)"
)


_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name, never a path like ./x or /x


def is_hub_model_id(base_model: str) -> bool:
    """``org/name`` that is not a directory here: the Hub is where the model comes from."""
    return bool(_HUB_MODEL_ID.match(base_model)) and not Path(base_model).exists()


def hub_token_warning(base_model: str) -> str | None:
    """What to tell a person whose base model comes from the Hub without a token, or None.

    Public models download without one; a gated or private one fails on the training node,
    minutes later and far from the cause. Said once per submission, naming where a token
    goes, never a value.
    """
    if not is_hub_model_id(base_model):
        return None
    return (
        f"base_model {base_model} is downloaded from the HuggingFace Hub without a token: a gated or "
        "private model will fail on the training node. Give a token with hf_conn_id (a huggingface "
        "connection) or HF_TOKEN"
    )


class LRScheduler(str, Enum):
    """The schedulers instructlab-training's ``main_ds --lr_scheduler`` accepts."""

    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


# --- "KEY=VAL,KEY=VAL" ---------------------------------------------------------

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_MAX_ANNOTATIONS_BYTES = 256 * 1024


def parse_key_value_list(text: str, *, reveal_values: bool = True) -> dict[str, str]:
    """Parse ``"K=V,K=V"`` into a dict.

    The empty string is an empty dict; blank items (a trailing comma) are skipped.
    Values may contain ``=`` (split on the first one) but not ``,``. An item
    without ``=``, an empty key or a repeated key is an error. With
    ``reveal_values=False`` (environment variables may hold tokens) messages name
    items by position and key only.
    """
    result: dict[str, str] = {}
    for position, raw_item in enumerate(text.split(","), start=1):
        item = raw_item.strip()
        if not item:
            continue
        shown = repr(item) if reveal_values else f"item {position}"
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            # Without '=' the whole item may be a value (a token pasted alone): never shown.
            raise ValueError(f"{shown} is not KEY=VALUE (no '=')")
        if not key:
            raise ValueError(f"{shown} has an empty key")
        if key in result:
            raise ValueError(f"key {key!r} appears more than once")
        result[key] = value.strip()
    return result


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is text; a newline or NUL is not


def _coerce_mapping(value: Any, *, reveal_values: bool) -> dict[str, str]:
    mapping = _mapping(value, reveal_values=reveal_values)
    for key, val in mapping.items():
        if _CONTROL.search(key) or _CONTROL.search(val):
            where = f"{key!r}" if _CONTROL.search(key) else f"the value of {key!r}"
            raise ValueError(
                f"{where} holds a control character (a newline or NUL): items are separated by ','"
            )
    return mapping


def _mapping(value: Any, *, reveal_values: bool) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_key_value_list(value, reveal_values=reveal_values)
    if isinstance(value, Mapping):
        out = {}
        for key, val in value.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"keys must be non-empty strings, got {key!r}")
            if not isinstance(val, str | int | float | bool):
                raise ValueError(f"value of {key!r} must be a string")
            out[key] = str(val)
        return out
    raise ValueError(f"must be a 'KEY=VAL,KEY=VAL' string or a mapping, got {type(value).__name__}")


def _check_qualified_key(key: str) -> None:
    """Kubernetes label/annotation key: ``[prefix/]name``."""
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"key {key!r}: prefix {prefix!r} must be a lowercase DNS subdomain")
    if len(name) > 63 or not _QUALIFIED_NAME_PART.match(name):
        raise ValueError(
            f"key {key!r}: name part must be 1-63 alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )


# --- Scalar helpers --------------------------------------------------------------


def _reject_bool(value: Any) -> Any:
    # pydantic's lax mode turns True into 1; for a count that is always a mistake.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


def parse_labels(value: Any) -> dict[str, str]:
    """Kubernetes labels from ``"k=v,k=v"`` or a mapping; keys and values in Kubernetes syntax."""
    labels = _coerce_mapping(value, reveal_values=True)
    for key, label_value in labels.items():
        _check_qualified_key(key)
        if len(label_value) > 63 or not _LABEL_VALUE.match(label_value):
            raise ValueError(
                f"value {label_value!r} of {key!r} must be at most 63 alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric"
            )
    return labels


def parse_annotations(value: Any) -> dict[str, str]:
    """Kubernetes annotations from ``"k=v,k=v"`` or a mapping (qualified keys, 256 KiB in all)."""
    annotations = _coerce_mapping(value, reveal_values=True)
    for key in annotations:
        _check_qualified_key(key)
    size = sum(len(k) + len(v) for k, v in annotations.items())
    if size > _MAX_ANNOTATIONS_BYTES:
        raise ValueError(f"total size must be at most 256 KiB, got {size} bytes")
    return annotations


def kubernetes_quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a Kubernetes quantity such as '500m', '4' or '64Gi', got {value!r}")
    text = str(value).strip()
    try:
        quantity = parse_quantity(text)
    except ValueError:
        raise ValueError(
            f"must be a Kubernetes quantity such as '500m', '4' or '64Gi', got {value!r}"
        ) from None
    if quantity <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return text


class SFTParams(BaseModel):
    """The seed component's training parameters (without ``training_`` prefix).

    Optional parameters of the seed (``None`` = "backend default") resolve to
    instructlab-training's defaults here, so a run records the values it used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    base_model: str = Field(c.DEFAULT_BASE_MODEL, description="Base model (HuggingFace ID or local path).")
    effective_batch_size: PositiveInt = Field(
        c.DEFAULT_EFFECTIVE_BATCH_SIZE, description="Effective batch size per optimizer step."
    )
    max_tokens_per_gpu: PositiveInt = Field(
        c.DEFAULT_MAX_TOKENS_PER_GPU, description="Max tokens per GPU (memory cap)."
    )
    max_seq_len: PositiveInt = Field(c.DEFAULT_MAX_SEQ_LEN, description="Max sequence length in tokens.")
    learning_rate: float = Field(c.DEFAULT_LEARNING_RATE, description="Learning rate (default: 5e-6).")
    lr_warmup_steps: NonNegativeInt = Field(
        c.DEFAULT_LR_WARMUP_STEPS, description="Learning rate warmup steps."
    )
    checkpoint_at_epoch: bool = Field(
        c.DEFAULT_CHECKPOINT_AT_EPOCH, description="Save checkpoint at each epoch."
    )
    num_epochs: PositiveInt = Field(
        c.DEFAULT_NUM_EPOCHS, description="Number of training epochs (default: 1)."
    )
    data_output_dir: str | None = Field(None, description="Directory for processed training data.")
    envs: dict[str, str] = Field(
        default_factory=dict, description="Environment overrides as KEY=VAL,KEY=VAL."
    )
    resource_cpu_per_worker: str = Field(c.DEFAULT_CPU_PER_WORKER, description="CPU cores per worker.")
    resource_gpu_per_worker: NonNegativeInt = Field(c.DEFAULT_GPU_PER_WORKER, description="GPUs per worker.")
    resource_memory_per_worker: str = Field(
        c.DEFAULT_MEMORY_PER_WORKER, description="Memory per worker (e.g., 64Gi)."
    )
    resource_num_procs_per_worker: Literal["auto"] | PositiveInt = Field(
        c.DEFAULT_NUM_PROCS_PER_WORKER, description="Processes per worker (auto or int)."
    )
    resource_num_workers: PositiveInt = Field(c.DEFAULT_NUM_WORKERS, description="Number of training pods.")
    metadata_labels: dict[str, str] = Field(
        default_factory=dict, description="Pod labels as key=value,key=value."
    )
    metadata_annotations: dict[str, str] = Field(
        default_factory=dict, description="Pod annotations as key=value,key=value."
    )
    seed: NonNegativeInt = Field(c.DEFAULT_SEED, description="Random seed for reproducibility.")
    use_liger: bool = Field(c.DEFAULT_USE_LIGER, description="Enable Liger kernel optimizations.")
    lr_scheduler: LRScheduler = Field(
        LRScheduler(c.DEFAULT_LR_SCHEDULER), description="LR scheduler type (cosine, linear, etc.)."
    )
    save_samples: NonNegativeInt = Field(c.DEFAULT_SAVE_SAMPLES, description="Number of samples to save.")
    accelerate_full_state_at_epoch: bool = Field(
        c.DEFAULT_ACCELERATE_FULL_STATE_AT_EPOCH, description="Save full accelerate state."
    )
    fsdp_sharding_strategy: FSDPShardingStrategy = Field(
        FSDPShardingStrategy(c.DEFAULT_FSDP_SHARDING_STRATEGY),
        description="FSDP sharding strategy (FULL_SHARD, HYBRID_SHARD, NO_SHARD).",
    )
    # Beyond the seed (Airflow only): instructlab-training 0.16.2's TrainingArgs of the same names.
    validation_split: float = Field(
        c.DEFAULT_VALIDATION_SPLIT,
        description="Share of the samples held out for the validation loss, in [0, 1); 0 disables it.",
    )
    validation_frequency: PositiveInt | None = Field(
        None,
        description="Compute the validation loss every this many optimizer steps (required with a split).",
    )

    # --- normalisation before field validation --------------------------------

    @model_validator(mode="before")
    @classmethod
    def _none_means_default(cls, values: Any) -> Any:
        # The seed's Optional[...] = None parameters mean "use the default".
        if isinstance(values, Mapping):
            return {key: value for key, value in values.items() if value is not None}
        return values

    @field_validator(*INT32_FIELDS, "seed", "learning_rate", "validation_split", mode="before")
    @classmethod
    def _numbers_are_not_bools(cls, value: Any) -> Any:
        return _reject_bool(value)

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate_positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"must be a finite number > 0, got {value!r}")
        return value

    @field_validator("validation_split")
    @classmethod
    def _validation_split_is_a_fraction(cls, value: float) -> float:
        # instructlab's TrainingArgs refuses the same range, but only on the training node.
        if not math.isfinite(value) or not 0 <= value < 1:
            raise ValueError(f"must be a fraction in [0, 1) (0: no validation), got {value!r}")
        return value

    @field_validator("validation_frequency", mode="before")
    @classmethod
    def _validation_frequency_unset_when_blank(cls, value: Any) -> Any:
        # An empty form field or template renders as "": not set, like None.
        if isinstance(value, str) and not value.strip():
            return None
        return _reject_bool(value)

    @field_validator("seed")
    @classmethod
    def _seed_fits_numpy(cls, value: int) -> int:
        if value >= 2**32:
            raise ValueError(f"must be < 2**32, got {value}")
        return value

    @field_validator("base_model")
    @classmethod
    def _base_model_not_blank(cls, value: str) -> str:
        if not value.strip() or value != value.strip():
            raise ValueError(f"must be a HuggingFace model id or a path, got {value!r}")
        if value.startswith("hf://"):
            raise ValueError(
                f"hf:// names datasets here; give a HuggingFace model as org/name, got {value!r} "
                f"(use {value.removeprefix('hf://')!r})"
            )
        if value.startswith("oci://"):
            raise ValueError(f"{OCI_BASE_MODEL_UNSUPPORTED}, got {value!r}")
        return value

    @field_validator("fsdp_sharding_strategy", mode="before")
    @classmethod
    def _sharding_strategy_as_the_seed_read_it(cls, value: Any) -> Any:
        return normalise_sharding_strategy(value)

    @field_validator("data_output_dir")
    @classmethod
    def _data_output_dir_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be a directory path or None, got an empty string")
        return value

    @field_validator("resource_cpu_per_worker", "resource_memory_per_worker", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> str:
        return kubernetes_quantity(value)

    @field_validator("resource_num_procs_per_worker", mode="before")
    @classmethod
    def _procs(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, bool):
            raise ValueError(f"must be 'auto' or an integer >= 1, got {value!r}")
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(f"must be 'auto' or an integer >= 1, got {value!r}")
        number = int(value) if isinstance(value, str) else value
        if isinstance(number, int) and number < 1:
            raise ValueError(f"must be 'auto' or an integer >= 1, got {value!r}")
        return number

    @field_validator("envs", mode="before")
    @classmethod
    def _envs(cls, value: Any) -> dict[str, str]:
        envs = _coerce_mapping(value, reveal_values=False)
        for key in envs:
            if not _ENV_NAME.match(key):
                raise ValueError(f"variable name {key!r} must match [-._a-zA-Z][-._a-zA-Z0-9]*")
        return envs

    @field_validator("metadata_labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return parse_labels(value)

    @field_validator("metadata_annotations", mode="before")
    @classmethod
    def _annotations(cls, value: Any) -> dict[str, str]:
        return parse_annotations(value)

    # --- construction from each front end ------------------------------------

    @classmethod
    def parse(cls, values: Mapping[str, Any], *, name_prefix: str = "") -> SFTParams:
        """Validate ``values``; raise one :class:`InvalidParameterError` listing every problem.

        ``name_prefix`` is prepended to parameter names in messages (the KFP shim
        passes ``"training_"``).
        """
        try:
            params = cls.model_validate(dict(values))
        except ValidationError as exc:
            raise InvalidParameterError(explain(exc, name_prefix)) from None
        if problems := params.topology_problems():
            raise InvalidParameterError({f"{name_prefix}{k}": v for k, v in problems.items()})
        return params

    def topology_problems(self) -> dict[str, str]:
        """Combinations that cannot train, by parameter name (each field involved is named)."""
        problems: dict[str, str] = {}
        for name in INT32_FIELDS:  # Kubernetes and instructlab-training take int32
            if getattr(self, name) > INT32_MAX:
                problems[name] = f"must be at most {INT32_MAX}, got {getattr(self, name)}"
        if problems:
            return problems
        if not self.checkpoint_at_epoch and self.save_samples == 0:
            # instructlab writes hf_format/ checkpoints only at epoch ends or every save_samples:
            # with both off, hours of GPU time would end with no model to export.
            reason = "checkpoint_at_epoch=false with save_samples=0 would write no model checkpoint"
            problems["checkpoint_at_epoch"] = f"{reason}; enable it, or set save_samples > 0"
            problems["save_samples"] = f"{reason}; set it > 0, or enable checkpoint_at_epoch"
        if self.max_tokens_per_gpu < self.max_seq_len:
            problems["max_tokens_per_gpu"] = (
                f"{self.max_tokens_per_gpu} is below max_seq_len={self.max_seq_len}: instructlab-training's "
                "multipack needs max_seq_len <= max_tokens_per_gpu (raise it, or lower max_seq_len)"
            )
        if self.validation_split > 0 and self.validation_frequency is None:
            problems["validation_frequency"] = (
                f"is required with validation_split={self.validation_split:g}: how many optimizer steps "
                "between two validation losses (an integer >= 1)"
            )
        procs, gpus = self.resource_num_procs_per_worker, self.resource_gpu_per_worker
        if gpus == 0 and procs not in ("auto", 1):
            problems["resource_num_procs_per_worker"] = (
                f"the CPU trainer (resource_gpu_per_worker=0) runs one process per worker, got {procs}; "
                "use more workers instead"
            )
        elif gpus > 0 and procs != "auto" and int(procs) > gpus:
            problems["resource_num_procs_per_worker"] = (
                f"{procs} processes per worker, but each worker has {gpus} GPU(s): one process drives one GPU"
            )
        if self.world_size > self.effective_batch_size and not problems:
            problems["effective_batch_size"] = (
                f"{self.effective_batch_size} is smaller than the world size {self.world_size} "
                f"({self.resource_num_workers} worker(s) x {self.world_size // self.resource_num_workers} "
                "process(es)): every process needs at least one sample per step"
            )
        return problems

    @classmethod
    def from_component_kwargs(cls, **kwargs: Any) -> SFTParams:
        """Build from the seed component's ``training_*`` parameter names."""
        values = {}
        for name, value in kwargs.items():
            if not name.startswith(COMPONENT_PARAMETER_PREFIX):
                raise InvalidParameterError({name: "unknown parameter (expected a training_* name)"})
            values[name.removeprefix(COMPONENT_PARAMETER_PREFIX)] = value
        return cls.parse(values, name_prefix=COMPONENT_PARAMETER_PREFIX)

    # --- derived values ----------------------------------------------------------

    @property
    def world_size(self) -> int:
        """Training processes over all workers: one per GPU (or as set), one per CPU worker."""
        procs = self.resource_num_procs_per_worker
        per_worker = (
            1
            if self.resource_gpu_per_worker == 0
            else (self.resource_gpu_per_worker if procs == "auto" else int(procs))
        )
        return self.resource_num_workers * per_worker

    @property
    def cpu_cores(self) -> float:
        return float(parse_quantity(self.resource_cpu_per_worker))

    @property
    def memory_bytes(self) -> int:
        return int(parse_quantity(self.resource_memory_per_worker))

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-safe dict (enums as values) for run configs, metrics and XCom.

        Environment values are masked: ``envs`` may carry tokens, and this dict is
        written to files and logs. The backends pass the real values to the
        training process's environment only.
        """
        data = self.model_dump(mode="json")
        data["envs"] = dict.fromkeys(self.envs, REDACTED)
        return data


def explain(
    exc: ValidationError, name_prefix: str = "", model: type[BaseModel] | None = None
) -> dict[str, str]:
    """A pydantic error as {parameter: reason}, with "did you mean" for unknown names."""
    known = list((model or SFTParams).model_fields)
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "parameters"
        name = f"{name_prefix}{field}"
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, known, n=1)
            hint = f"; did you mean {name_prefix}{close[0]}?" if close else ""
            errors[name] = f"unknown parameter{hint}"
        else:
            errors.setdefault(name, _message(field, error))
    return errors


def _message(field: str, error: Any) -> str:
    ctx = error.get("ctx") or {}
    value = error.get("input")
    shown = "" if field == "envs" else f", got {value!r}"
    kind = error["type"]
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "greater_than":
        return f"must be > {ctx['gt']}{shown}"
    if kind == "greater_than_equal":
        return f"must be >= {ctx['ge']}{shown}"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"must be an integer{shown}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number{shown}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false{shown}"
    if kind == "enum":
        return f"must be one of {ctx.get('expected')}{shown}"
    if kind in ("string_type",):
        return f"must be a string{shown}"
    if kind in ("literal_error",):
        return f"must be {ctx.get('expected')}{shown}"
    return f"{error['msg']}{shown}"
