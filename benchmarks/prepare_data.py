"""Data prepared before the job vs processed in the training pod: time to the first step, and samples/s.

    python benchmarks/prepare_data.py [--samples 4700] [--repeats 3] [--pod-cpus 1]
    python benchmarks/prepare_data.py --smoke   # 235 samples, 1 repeat: does it still run?

The dataset is the bundled chat dataset repeated to ``--samples`` samples, the first user message
of each prefixed with a tag naming the run and the sample, so that no two runs read the same file
and nothing comes from the ``datasets`` cache (``HF_HOME`` is a fresh directory too). The model is
the tiny local Llama (``build_tiny_model``). Everything runs on this machine's CPU.

1. Pod start to the first training step. The real pod program
   (``python -m airflow_provider_sft.core.pod.entrypoint train run_config.json``, a ``TrainingRun``
   written by ``write_config``, device cpu, 1 epoch, batch 8, ``--pod-cpus`` cores) is started
   (a) with no prepared data: it processes the data itself, as every job did before issue 21, and
   (b) after ``prepare_data`` (all cores, the CPU step before the job) wrote the processed data into
   the run's ``processed_data_dir``: the pod logs that it is reused, not processed again. The time
   is from just before the process starts to the first progress line of step 1 on its stdout (the
   ``[sft] step 1/N ...`` line); the pod is then stopped. Runs alternate (a, b, b, a, ...).
2. Prepare throughput: ``prepare_data`` with all cores (``available_cpus()``) against
   instructlab-training's ``data_process.process_data`` with ``num_cpu_procs=1`` and with all
   cores, on the same input (each from its own copy of the file: no cache), order rotated each
   repeat. Samples/s is input samples over the call's wall time (a warm-up call first, untimed).
   Every output ``data.jsonl`` must be byte-identical, or the benchmark fails.

Medians are printed, with the saving and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import Device, TrainingRun
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.data_processing import available_cpus
from airflow_provider_sft.core.training.prepare import prepare_data
from airflow_provider_sft.core.training.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
MAX_SEQ_LEN = 512
BATCH = 8
FIRST_STEP = re.compile(r"^\[sft\] step 1(/\d+)? ")
REUSED = "is reused, not processed again"
PROCESSED = "data processing: "  # the report line after the pod processed the data
POD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(REPO),
}
#: ``--smoke``: tiny sizes, for the test that keeps the benchmark running (its numbers mean nothing).
SMOKE = {"samples": 235, "repeats": 1}


def write_dataset(path: Path, rows: list[bytes], samples: int, tag: str) -> Path:
    """``samples`` chat samples cycling through ``rows``, each first user message prefixed with
    ``[tag i]``: the same lengths give or take a token, never the same bytes as another run's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for index in range(samples):
            row = orjson.loads(rows[index % len(rows)])
            user = next(message for message in row["messages"] if message["role"] == "user")
            user["content"] = f"[{tag} {index}] {user['content']}"
            out.write(orjson.dumps(row) + b"\n")
    return path


# --- 1. pod start to the first training step ---------------------------------------------------


@dataclass(frozen=True)
class PodTiming:
    to_first_step: float  # seconds from just before the process started
    to_data: float  # seconds until the data line (processed, or reused)
    prepare_seconds: float  # prepare_data before the pod (0 when the pod processed the data)


def training_run(root: Path, name: str, model: Path, dataset: Path, pod_cpus: int) -> TrainingRun:
    params = SFTParams.parse(
        {
            "base_model": str(model),
            "resource_gpu_per_worker": 0,
            "resource_cpu_per_worker": str(pod_cpus),
            "effective_batch_size": BATCH,
            "max_tokens_per_gpu": 4096,
            "max_seq_len": MAX_SEQ_LEN,
            "num_epochs": 1,
        }
    )
    return TrainingRun(
        name=name, params=params, dataset_path=str(dataset), output_dir=str(root / name), device=Device.CPU
    )


def start_to_first_step(config: Path, expect: str) -> tuple[float, float]:
    """Start the pod program, stop it at its step-1 progress line; seconds to that line and to the
    data line (the one containing ``expect``). Only the program's ``[sft] `` lines are looked at."""
    started = time.monotonic()
    pod = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_sft.core.pod.entrypoint", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        cwd=REPO,
        env={**os.environ, **POD_ENV},
    )
    assert pod.stdout is not None
    own_lines: list[str] = []
    to_data = None
    try:
        for line in pod.stdout:
            now = time.monotonic() - started
            if not line.startswith(("[sft] ", "ERROR: ")):
                continue  # libraries' lines: the full output, never shown here
            own_lines.append(line.rstrip())
            if expect in line:
                to_data = now
            if FIRST_STEP.match(line):
                if to_data is None:
                    raise SystemExit(f"the pod never logged {expect!r}:\n" + "\n".join(own_lines))
                return now, to_data
        raise SystemExit(
            f"the pod exited ({pod.wait()}) before its first step:\n" + "\n".join(own_lines[-20:])
        )
    finally:
        pod.terminate()  # the first step is what is measured: the rest of the epoch is not
        pod.wait()
        pod.stdout.close()


def pod_timing(
    root: Path, tag: str, rows: list[bytes], model: Path, samples: int, pod_cpus: int, *, prepared: bool
) -> PodTiming:
    name = f"{'prepared' if prepared else 'in-pod'}-{tag}"
    dataset = write_dataset(root / "datasets" / f"{name}.jsonl", rows, samples, name)
    run = training_run(root / "runs", name, model, dataset, pod_cpus)
    config = run.write_config()
    prepare_seconds = 0.0
    if prepared:
        started = time.monotonic()
        prepare_data(
            dataset,
            run.processed_data_dir,
            base_model=str(model),
            max_seq_len=MAX_SEQ_LEN,
            effective_batch_size=BATCH,
            num_epochs=1,
            num_cpu_procs=available_cpus(),
            env=os.environ,
        )
        prepare_seconds = time.monotonic() - started
    to_step, to_data = start_to_first_step(config, REUSED if prepared else PROCESSED)
    shutil.rmtree(run.output_dir)
    return PodTiming(to_step, to_data, prepare_seconds)


# --- 2. prepare throughput -----------------------------------------------------------------------


def ours(dataset: Path, out: Path, model: Path, cpus: int) -> None:
    prepare_data(
        dataset,
        out,
        base_model=str(model),
        max_seq_len=MAX_SEQ_LEN,
        effective_batch_size=BATCH,
        num_epochs=1,
        num_cpu_procs=cpus,
        env=os.environ,
    )


def instructlab(procs: int) -> Callable[[Path, Path, Path, int], None]:
    def process(dataset: Path, out: Path, model: Path, _cpus: int) -> None:
        from instructlab.training.data_process import process_data

        process_data(str(dataset), str(out), MAX_SEQ_LEN, str(model), num_cpu_procs=procs)

    return process


def contenders(cpus: int) -> dict[str, Callable[[Path, Path, Path, int], None]]:
    return {
        f"prepare_data ({cpus} procs)": ours,
        "process_data (1 proc)": instructlab(1),
        f"process_data ({cpus} procs)": instructlab(cpus),
    }


@contextlib.contextmanager
def stdout_discarded() -> Iterator[None]:
    """This process's stdout (file descriptor 1, so worker processes' too) to /dev/null for the call:
    ``process_data`` prints whole training samples (``print_masked_samples``), and training data is
    never printed."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def throughput_round(
    root: Path, tag: str, rows: list[bytes], model: Path, samples: int, cpus: int, order: list[str]
) -> dict[str, float]:
    """Samples/s of each contender on the same content (each its own copy of the file)."""
    functions = contenders(cpus)
    source = write_dataset(root / "datasets" / f"throughput-{tag}.jsonl", rows, samples, f"throughput-{tag}")
    speeds, outputs = {}, {}
    for index, name in enumerate(order):
        dataset = root / "datasets" / f"throughput-{tag}-{index}.jsonl"
        shutil.copyfile(source, dataset)
        out = root / "prepared" / f"{tag}-{index}"
        with stdout_discarded():  # for every contender alike
            started = time.monotonic()
            functions[name](dataset, out, model, cpus)
            speeds[name] = samples / (time.monotonic() - started)
        outputs[name] = (out / c.PROCESSED_DATA_FILE).read_bytes()
    reference = outputs[order[0]]
    differing = [name for name, data in outputs.items() if data != reference]
    if differing:
        raise SystemExit(f"data.jsonl differs from {order[0]}'s: {', '.join(differing)}")
    return speeds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=4700, help="samples in each dataset (235 repeated)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pod-cpus", type=int, default=1, help="the training pod's resource_cpu_per_worker")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: check it still runs")
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.repeats = SMOKE["samples"], SMOKE["repeats"]
    for name, value in POD_ENV.items():
        if name != "PYTHONPATH":
            os.environ[name] = value
    cpus = available_cpus()
    rows = [line for line in bundled_dataset_path().read_bytes().splitlines() if line.strip()]

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf")  # before datasets is imported: a cache of its own
        model = build_tiny_model(root / "model")
        import datasets

        datasets.disable_progress_bars()  # for every contender alike

        pods: dict[bool, list[PodTiming]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for prepared in (False, True) if repeat % 2 == 0 else (True, False):
                timing = pod_timing(
                    root, str(repeat), rows, model, args.samples, args.pod_cpus, prepared=prepared
                )
                pods[prepared].append(timing)
                print(
                    f"  run {repeat + 1} {'prepared data' if prepared else 'no prepared data':17s} "
                    f"first step after {timing.to_first_step:5.1f} s (data ready at {timing.to_data:5.1f} s)"
                    + (f", prepare_data before it {timing.prepare_seconds:.1f} s" if prepared else ""),
                    flush=True,
                )

        warm_up = list(contenders(cpus))
        throughput_round(root, "warm-up", rows, model, len(rows), cpus, warm_up)
        speeds: dict[str, list[float]] = {name: [] for name in warm_up}
        for repeat in range(args.repeats):
            order = warm_up[repeat % 3 :] + warm_up[: repeat % 3]
            for name, speed in throughput_round(
                root, f"r{repeat}", rows, model, args.samples, cpus, order
            ).items():
                speeds[name].append(speed)
            print(
                f"  run {repeat + 1} "
                + ", ".join(f"{name} {speeds[name][-1]:.0f}" for name in warm_up)
                + " samples/s; data.jsonl byte-identical",
                flush=True,
            )

    before = statistics.median(t.to_first_step for t in pods[False])
    after = statistics.median(t.to_first_step for t in pods[True])
    prepare = statistics.median(t.prepare_seconds for t in pods[True])
    print(
        f"\nPod start to first training step ({args.samples} samples, pod {args.pod_cpus} CPU(s), "
        f"median of {args.repeats}):"
    )
    print(f"  no prepared data  {before:6.1f} s")
    print(
        f"  prepared data     {after:6.1f} s   (prepare_data before the job: {prepare:.1f} s on {cpus} CPUs)"
    )
    print(f"  saving {before - after:.1f} s, ratio before/after = {before / after:.2f}")

    median = {name: statistics.median(values) for name, values in speeds.items()}
    ours_name, one, many = warm_up
    print(f"\nPrepare throughput ({args.samples} samples, {cpus} CPUs, median of {args.repeats}):")
    for name in warm_up:
        print(f"  {name:26s} {median[name]:8.0f} samples/s")
    print(f"  ratio prepare_data/process_data(1 proc) = {median[ours_name] / median[one]:.2f}")
    print(f"  ratio prepare_data/process_data({cpus} procs) = {median[ours_name] / median[many]:.2f}")
    print("  data.jsonl byte-identical in every run: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
