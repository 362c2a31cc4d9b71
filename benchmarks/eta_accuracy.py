"""How right is the ETA? The demo training, each snapshot's ETA against the time that really remained.

    python benchmarks/eta_accuracy.py [--threads 1]
    python benchmarks/eta_accuracy.py --smoke   # 24 samples, 1 epoch: does it still run?

Trains the demo's run (``DEMO_TRAINING``: the tiny local Llama, the bundled dataset after
instructlab's data processing, 6 epochs of batch 8, the checkpoints it writes) with the CPU loop
the local backend runs, and records every step's :class:`ProgressSnapshot`: its time and ETA.
Once the loop has returned, the real remaining time of each snapshot is known; the error at 25%,
50% and 75% of the run's samples is ``(ETA - real) / real``. Target: within 15%.

Two runs: at a steady speed, and one that slows to half speed at 40% of its samples (after each
step from there, the progress callback sleeps as long as a step took so far: the machine got
busier). In the same run, the baseline is the ETA from the whole run's average speed (the
samples since the first step over their time), what the ETA would be without the window.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.cpu_trainer import train_on_cpu
from airflow_provider_sft.core.training.data_processing import process_chat_data
from airflow_provider_sft.core.training.progress import ProgressSnapshot
from airflow_provider_sft.core.training.tiny_model import build_tiny_model
from airflow_provider_sft.demo import DEMO_TRAINING

POINTS = (25, 50, 75)
TARGET = 0.15
SLOW_FROM = 0.40  # the slowed run halves its speed from this share of its samples
SMOKE = {"samples": 24, "num_epochs": 1}


@dataclass(frozen=True)
class Seen:
    at: float
    eta: float | None
    average_eta: float | None  # the whole-run average's ETA, the baseline
    share: float  # of the run's samples


def train(
    model: Path, processed: str, out: Path, overrides: dict, threads: int, slow: bool
) -> tuple[list[Seen], float]:
    """One demo training; every step's snapshot, and the time the loop returned."""
    params = SFTParams.parse({**DEMO_TRAINING, **overrides})
    seen: list[Seen] = []
    first: list[ProgressSnapshot] = []
    step_times: list[float] = []
    slowed_by: list[float] = []

    def on_progress(snapshot: ProgressSnapshot) -> None:
        assert snapshot.samples_seen is not None and snapshot.total_samples
        if not first:
            first.append(snapshot)
        start = first[0]
        average_eta = None
        if snapshot.samples_seen > start.samples_seen and snapshot.at > start.at:
            speed = (snapshot.samples_seen - start.samples_seen) / (snapshot.at - start.at)
            average_eta = (snapshot.total_samples - snapshot.samples_seen) / speed
        if seen:
            step_times.append(snapshot.at - seen[-1].at)
        share = snapshot.samples_seen / snapshot.total_samples
        seen.append(Seen(snapshot.at, snapshot.eta_seconds, average_eta, share))
        if slow and share >= SLOW_FROM and step_times:
            if not slowed_by:  # a step's time at the speed so far: each step from here takes twice as long
                slowed_by.append(statistics.median(step_times))
            time.sleep(slowed_by[0])

    train_on_cpu(
        params,
        model_path=str(model),
        processed_data=processed,
        output_dir=out,
        threads=threads,
        log=lambda _line: None,
        on_progress=on_progress,
    )
    return seen, time.time()


def report(name: str, seen: list[Seen], ended: float, shape: str, load: float) -> None:
    after = os.getloadavg()[0]
    print(
        f"\n{name} ({shape}; {ended - seen[0].at:.1f} s from step 1; load average {load:.1f} before, {after:.1f} after):"
    )
    worst, worst_average = 0.0, 0.0
    for point in POINTS:
        at = next(s for s in seen if s.share * 100 >= point)
        real = ended - at.at
        error = (at.eta - real) / real if at.eta is not None and real > 0 else float("nan")
        average = (at.average_eta - real) / real if at.average_eta is not None and real > 0 else float("nan")
        if error == error and average == average:  # NaN when a point has no ETA (too few steps)
            worst, worst_average = max(worst, abs(error)), max(worst_average, abs(average))
        print(
            f"  at {point}%: ETA {at.eta or 0:.1f} s, real {real:.1f} s, error {error:+.1%} "
            f"(whole-run average {average:+.1%})"
        )
    print(f"  max |error| = {worst:.1%} (whole-run average {worst_average:.1%}; target {TARGET:.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: check it still runs")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    overrides = {"num_epochs": SMOKE["num_epochs"]} if args.smoke else {}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf")
        model = build_tiny_model(root / "model")
        data = process_chat_data(
            bundled_dataset_path(), root / "data", model_path=str(model), max_seq_len=512
        )
        processed = data.processed_path
        if args.smoke:
            lines = Path(processed).read_text().splitlines(keepends=True)[: SMOKE["samples"]]
            processed = str(root / "samples.jsonl")
            Path(processed).write_text("".join(lines))
        samples = len(Path(processed).read_text().splitlines())
        params = SFTParams.parse({**DEMO_TRAINING, **overrides})
        steps = -(-samples // params.effective_batch_size)
        shape = (
            f"{samples} samples, {params.num_epochs} epochs x {steps} steps, batch "
            f"{params.effective_batch_size}, {args.threads} thread(s)"
        )
        for name, slow in (("steady speed", False), (f"half speed from {SLOW_FROM:.0%}", True)):
            load = os.getloadavg()[0]  # other work on the machine changes the speed: no ETA foresees it
            seen, ended = train(
                model, processed, root / name.replace(" ", "-"), overrides, args.threads, slow
            )
            report(f"ETA accuracy, {name}", seen, ended, shape, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
