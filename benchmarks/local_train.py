"""CPU SFT loop vs ``transformers.Trainer``: tokens/s on the same tiny model and data, in one run.

    python benchmarks/local_train.py [--repeats 3] [--epochs 3] [--threads 1]
    python benchmarks/local_train.py --smoke   # 1 run each, 16 samples: does it still run?

Both train the tiny local Llama on the bundled chat dataset after instructlab's
data processing, with the same optimizer settings (AdamW, betas (0.9, 0.95),
cosine schedule with warmup, clip 1.0), batch size 8, the same number of steps
and the same torch thread count. Runs alternate (ours, Trainer, ours, ...) so
machine noise hits both; the medians and their ratio are printed. Tokens/s
counts real (unpadded) tokens over the training loop only (model loading and
data processing excluded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.sample_data import bundled_dataset_path
from airflow_provider_sft.core.training.cpu_trainer import train_on_cpu
from airflow_provider_sft.core.training.data_processing import process_chat_data
from airflow_provider_sft.core.training.tiny_model import build_tiny_model

BATCH = 8
LR = 1e-3
WARMUP = 10
#: ``--smoke``: tiny sizes, for the test that keeps the benchmark running (its numbers mean nothing).
SMOKE = {"repeats": 1, "epochs": 1, "samples": 16}


def first_samples(processed: str, count: int, out: Path) -> tuple[str, int]:
    """The first ``count`` processed samples as their own file (all of them when ``count`` is 0)."""
    lines = Path(processed).read_text().splitlines(keepends=True)
    if count:
        lines = lines[:count]
        processed = str(out)
        out.write_text("".join(lines))
    return processed, len(lines)


def ours(model: Path, processed: str, out: Path, epochs: int, threads: int) -> tuple[float, int, float]:
    params = SFTParams.parse(
        {
            "resource_gpu_per_worker": 0,
            "effective_batch_size": BATCH,
            "max_tokens_per_gpu": 8192,
            "max_seq_len": 512,
            "learning_rate": LR,
            "lr_warmup_steps": WARMUP,
            "num_epochs": epochs,
            # No checkpoint inside the timed loop: Trainer below saves none either.
            "checkpoint_at_epoch": False,
            "save_samples": 10**9,
            "accelerate_full_state_at_epoch": False,
        }
    )
    result = train_on_cpu(
        params,
        model_path=str(model),
        processed_data=processed,
        output_dir=out,
        threads=threads,
        log=lambda _m: None,
    )
    last = json.loads((out / "training_params_and_metrics_global0.jsonl").read_text().splitlines()[-1])
    return result.tokens_seen / result.seconds, result.steps, last["avg_loss"]


def trainer(model: Path, processed: str, out: Path, epochs: int, threads: int) -> tuple[float, int, float]:
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model)
    data = load_dataset("json", data_files=processed, split="train").remove_columns(["len"])
    tokens_per_epoch = sum(len(ids) for ids in data["input_ids"])
    steps = epochs * math.ceil(len(data) / BATCH)
    losses: list[float] = []

    class KeepLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        num_train_epochs=epochs,
        learning_rate=LR,
        warmup_steps=WARMUP,
        lr_scheduler_type="cosine",
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=42,
    )
    run = Trainer(
        model=AutoModelForCausalLM.from_pretrained(model),
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[KeepLoss()],
    )
    run.remove_callback(PrinterCallback)  # keep the benchmark output readable
    started = time.monotonic()
    run.train()
    seconds = time.monotonic() - started
    return epochs * tokens_per_epoch / seconds, steps, losses[-1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", type=int, default=0, help="train on the first N samples (0: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: check it still runs")
    args = parser.parse_args()
    if args.smoke:
        args.repeats, args.epochs, args.samples = SMOKE["repeats"], SMOKE["epochs"], SMOKE["samples"]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf")
        model = build_tiny_model(root / "model")
        report = process_chat_data(
            bundled_dataset_path(), root / "data", model_path=str(model), max_seq_len=512
        )
        processed, samples = first_samples(report.processed_path, args.samples, root / "samples.jsonl")
        results: dict[str, list[tuple[float, int, float]]] = {"ours": [], "trainer": []}
        for repeat in range(args.repeats):
            for name, fn in (("ours", ours), ("trainer", trainer)):
                out = root / f"{name}-{repeat}"
                out.mkdir()
                results[name].append(fn(model, processed, out, args.epochs, args.threads))
                tps, steps, loss = results[name][-1]
                print(
                    f"  run {repeat + 1} {name:8s} {tps:8.0f} tokens/s  {steps} steps  final loss {loss:.3f}",
                    flush=True,
                )

    median = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    print(
        f"\nCPU SFT loop vs transformers.Trainer ({args.threads} thread(s), {samples} samples, "
        f"batch {BATCH}, {args.epochs} epochs, median of {args.repeats}):"
    )
    print(f"  ours    {median['ours']:8.0f} tokens/s")
    print(f"  Trainer {median['trainer']:8.0f} tokens/s")
    print(f"  ratio ours/Trainer = {median['ours'] / median['trainer']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
