"""``checkpoint_grace_seconds``: how long a training pod may take, after SIGTERM, to save its state.

A preempted pod (Kueue suspends the job, a node is drained or reclaimed) gets SIGTERM, then
SIGKILL after its ``terminationGracePeriodSeconds``. With on-demand checkpointing the trainer
finishes the optimizer step in flight, then every rank saves (instructlab-training 0.16
``save_on_demand_checkpoint``): the full state through accelerate's ``save_state`` under FSDP
and, beside it, a Hugging Face checkpoint. The grace period must cover both, or the kill lands
mid-write and the work since the last epoch end is lost.

What is written, per parameter (instructlab loads the model without a dtype, so the FSDP
master weights are fp32 under bf16 mixed precision, and AdamW keeps two fp32 moments):

* full state: weights 4 B + AdamW ``exp_avg`` 4 B + ``exp_avg_sq`` 4 B = 12 B;
* the Hugging Face checkpoint of the same step: 4 B;

so :data:`BYTES_PER_PARAMETER` = 16 B. The workspace PVC is assumed to take
:data:`PVC_WRITE_BYTES_PER_SECOND` (200 MB/s: a network file system, ReadWriteMany, written by
one writer; a local NVMe is 10x faster), with a safety factor of 1.5 for the state-dict gather
and a busy volume, plus :data:`STEP_IN_FLIGHT_SECONDS` for the step that must end first:

    grace = 16 B x parameters / 200 MB/s x 1.5 + 60 s, rounded up to 30 s

A Qwen2.5-1.5B (1.54e9 parameters: 24.7 GB) gets 270 s, a 7B model (112 GB) 900 s. When the base
model is a directory this process can read, its parameters are counted from the safetensors
headers (no tensor is loaded); otherwise (a Hugging Face id, a path only the pod sees) the
default is :data:`~airflow_provider_sft.core.constants.DEFAULT_CHECKPOINT_GRACE_SECONDS`, the
7B figure. Erring long costs nothing in the common case: the pod exits as soon as its state is
saved, and Kubernetes does not wait out the rest of the period; only a hung pod holds its node
for all of it. Values are bounded by :data:`MAX_CHECKPOINT_GRACE_SECONDS` (one hour: a drain
that waits longer is not a grace period); a model whose derived figure is larger (over ~30B
parameters) is capped there and needs faster storage or a sharded save.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError

FIELD = "checkpoint_grace_seconds"
#: fp32 weights + two fp32 AdamW moments (full state) + the fp32 Hugging Face checkpoint beside it.
BYTES_PER_PARAMETER = 4 + 4 + 4 + 4
#: An assumed sustained write rate of the workspace PVC (a network file system, one writer).
PVC_WRITE_BYTES_PER_SECOND = 200 * 10**6
#: The state-dict gather and a volume shared with other writers.
SAFETY_FACTOR = 1.5
#: The optimizer step in flight when SIGTERM arrives ends before the save starts.
STEP_IN_FLIGHT_SECONDS = 60
#: Periods are rounded up to this, so a log line reads 270 s, not 247 s.
ROUND_TO_SECONDS = 30
MAX_CHECKPOINT_GRACE_SECONDS = 3600


def grace_for_parameters(parameters: int) -> int:
    """The grace period, in seconds, that saves the full state of a model of ``parameters``."""
    writing = parameters * BYTES_PER_PARAMETER / PVC_WRITE_BYTES_PER_SECOND * SAFETY_FACTOR
    seconds = math.ceil((writing + STEP_IN_FLIGHT_SECONDS) / ROUND_TO_SECONDS) * ROUND_TO_SECONDS
    return min(seconds, MAX_CHECKPOINT_GRACE_SECONDS)


def parameter_count(model_dir: str | Path) -> int | None:
    """Parameters of the model in ``model_dir``, from its ``*.safetensors`` headers; None when unknown."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    try:
        for path in files:
            with safe_open(str(path), framework="numpy") as tensors:
                # a safe_open handle is not a mapping: it has keys(), no __iter__
                for name in tensors.keys():  # noqa: SIM118
                    total += math.prod(tensors.get_slice(name).get_shape())
    except Exception:  # a broken header is the training's error to report, not this estimate's
        return None
    return total


def default_checkpoint_grace_seconds(base_model: str | None) -> int:
    """Derived from a readable local model's size, else :data:`~.constants.DEFAULT_CHECKPOINT_GRACE_SECONDS`."""
    parameters = parameter_count(base_model) if base_model else None
    if parameters is None:
        return c.DEFAULT_CHECKPOINT_GRACE_SECONDS
    return grace_for_parameters(parameters)


def checked_checkpoint_grace_seconds(value: Any, *, base_model: str | None = None, field: str = FIELD) -> int:
    """Whole seconds from 1 to :data:`MAX_CHECKPOINT_GRACE_SECONDS` (a number or its text, as a form or
    ``conf`` gives it); empty (None, ``""``) is the default for ``base_model``."""
    if value is None or value == "":
        return default_checkpoint_grace_seconds(base_model)
    seconds: float = math.nan
    if not isinstance(value, bool):  # a switch is not a duration
        with contextlib.suppress(ValueError):
            seconds = float(str(value).strip())
    if not (
        math.isfinite(seconds) and seconds == int(seconds) and 1 <= seconds <= MAX_CHECKPOINT_GRACE_SECONDS
    ):
        raise InvalidParameterError(
            {
                field: f"must be a whole number of seconds from 1 to {MAX_CHECKPOINT_GRACE_SECONDS} (how "
                f"long a preempted training pod may take to save its state), got {value!r}"
            }
        )
    return int(seconds)
