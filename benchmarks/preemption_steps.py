"""Optimizer steps repeated after a preemption at 90% of an epoch: epoch-level full state vs
on-demand state at the next step boundary, and the GPU-hours that is.

    python benchmarks/preemption_steps.py [--step-seconds 20] [--gpus 8] [--at 0.9]
    python benchmarks/preemption_steps.py --smoke   # the same arithmetic: it takes no time

Arithmetic from instructlab-training 0.16's save points, not a measurement:

* **before**: the full state (model, AdamW, scheduler) is saved only at epoch ends
  (``accelerate_full_state_at_epoch``); ``save_samples`` checkpoints are Hugging Face weights
  without optimizer state and cannot resume a run. A pod killed at 90% of an epoch resumes from
  the last epoch end: every step since then is trained again.
* **after** (``on_demand_checkpointing``, the pods' grace period from ``checkpoint_grace_seconds``):
  SIGTERM writes a trigger file, the step in flight finishes, all ranks save a full state; the
  resumed run starts at the next step. No finished step is repeated; at most the one in flight
  when the kill came is done again, if the grace period ran out before it ended.

Steps per epoch are the data report's rule, ``ceil(samples / effective_batch_size)``. The step
time and GPU count are stated assumptions (flags), not measured here: this machine has no GPU.
The price of "after" is printed too: the save at SIGTERM holds the GPUs while it writes
(``core/checkpoint_grace.py``: 16 bytes per parameter at an assumed 200 MB/s, without its margin).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from airflow_provider_sft.core.checkpoint_grace import BYTES_PER_PARAMETER, PVC_WRITE_BYTES_PER_SECOND

#: The bundled dataset the example DAG trains on by default.
BUNDLED_SAMPLES = 235
QWEN_1_5B_PARAMETERS = 1_543_714_304


@dataclass(frozen=True)
class Case:
    name: str
    samples: int
    effective_batch_size: int
    num_epochs: int
    parameters: int


CASES = (
    # the example DAG's form defaults (the seed's): batch 128, 1 epoch, the bundled data
    Case("example DAG defaults", BUNDLED_SAMPLES, 128, 1, QWEN_1_5B_PARAMETERS),
    # a realistic run of the default model
    Case("10,000 samples, batch 128, 3 epochs", 10_000, 128, 3, QWEN_1_5B_PARAMETERS),
)


def steps_per_epoch(case: Case) -> int:
    return math.ceil(case.samples / case.effective_batch_size)


def repeated_before(case: Case, at: float) -> int:
    """Steps trained again when the last full state is the previous epoch end's."""
    return math.floor(at * steps_per_epoch(case))


def repeated_after(_case: Case, _at: float) -> int:
    """Finished steps trained again when the state is saved at the next step boundary: none."""
    return 0


def gpu_hours(steps: float, step_seconds: float, gpus: int) -> float:
    return steps * step_seconds * gpus / 3600


def save_seconds(parameters: int) -> float:
    """Writing one on-demand save (full state + HF checkpoint) at the assumed PVC rate."""
    return parameters * BYTES_PER_PARAMETER / PVC_WRITE_BYTES_PER_SECOND


def report(step_seconds: float, gpus: int, at: float) -> None:
    print(
        f"preemption at {at:.0%} of an epoch; assumed {step_seconds:g} s per optimizer step on {gpus} GPU(s) "
        "(arithmetic from instructlab-training's save points, not a measurement)"
    )
    print(
        "| run | steps/epoch | repeated before | repeated after | GPU-h lost before | GPU-h lost after "
        "| save at SIGTERM s (GPU-h) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in CASES:
        before, after = repeated_before(case, at), repeated_after(case, at)
        save = save_seconds(case.parameters)
        print(
            f"| {case.name} | {steps_per_epoch(case)} | {before} | {after} (at most 1 in flight) "
            f"| {gpu_hours(before, step_seconds, gpus):.2f} | {gpu_hours(after, step_seconds, gpus):.2f} "
            f"| {save:.0f} ({save * gpus / 3600:.2f}) |"
        )
    for case in CASES:
        saved = gpu_hours(repeated_before(case, at) - repeated_after(case, at), step_seconds, gpus)
        net = saved - save_seconds(case.parameters) * gpus / 3600
        print(f"{case.name}: GPU-hours saved per preemption = {saved:.2f} (net of the save: {net:.2f})")
        even = save_seconds(case.parameters) / step_seconds
        print(f"{case.name}: on-demand pays off past {even:.1f} steps since the last epoch end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-seconds", type=float, default=20.0, help="assumed seconds per optimizer step")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the run holds")
    parser.add_argument("--at", type=float, default=0.9, help="where in the epoch the preemption lands")
    parser.add_argument("--smoke", action="store_true", help="the same arithmetic (it takes no time)")
    args = parser.parse_args()
    report(args.step_seconds, args.gpus, args.at)


if __name__ == "__main__":
    main()
