"""A small, honest SFT loop for machines without CUDA.

instructlab-training's ``main_ds`` is CUDA-only, so on a CPU the entrypoint runs
this loop instead. It follows what ``main_ds`` does on the same processed data
(``input_ids``/``labels`` from instructlab's data processing, loss only on
assistant tokens) and writes the same files, so export, metrics and the chart
cannot tell the difference:

* AdamW with instructlab's betas/eps/weight decay, gradient clipping at 1.0,
  ``transformers.get_scheduler(lr_scheduler, warmup, total_steps)``;
* an optimizer step every ``effective_batch_size`` samples, reached by gradient
  accumulation over micro-batches whose padded size stays under
  ``max_tokens_per_gpu``;
* loss = summed token cross-entropy / label tokens of the whole step;
* ``training_params_and_metrics_global0.jsonl`` (an hparams line, then one line
  per step) and ``hf_format/samples_<N>/`` checkpoints, each written to a
  temporary directory and renamed, so a reader never sees half of one;
* ``full_state/epoch_<N>/`` (model, optimizer, scheduler) when asked.

With more than one node (``PET_NNODES`` > 1) the nodes train as one job over
``torch.distributed`` with gloo: every node holds the model, takes its share of each
step's samples, and the gradients are summed before the optimizer step, so the
result is the single-process one. Only node 0 writes metrics and checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.core.files import remove_owned
from airflow_provider_sft.core.nodes import Topology
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.progress import is_progress_step, progress_line

if TYPE_CHECKING:
    import torch

Logger = Callable[[str], None]


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]

    @property
    def length(self) -> int:
        return len(self.input_ids)

    @property
    def label_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)


@dataclass(frozen=True)
class CPUTrainingResult:
    steps: int
    samples_seen: int
    tokens_seen: int
    seconds: float
    checkpoints: tuple[str, ...]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else 0.0


def load_processed_samples(path: str | Path, *, max_tokens_per_gpu: int) -> list[Sample]:
    """Read instructlab's processed ``data.jsonl``; every sample must fit one micro-batch."""
    samples = []
    too_long = []
    with Path(path).open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = jsonio.loads(line)
            sample = Sample(row["input_ids"], row["labels"])
            if sample.length > max_tokens_per_gpu:
                too_long.append((line_number, sample.length))
            samples.append(sample)
    if too_long:
        line_number, length = too_long[0]
        raise DatasetError(
            f"{len(too_long)} processed samples are longer than max_tokens_per_gpu={max_tokens_per_gpu} "
            f"(first: line {line_number} of {path}, {length} tokens); raise max_tokens_per_gpu or lower max_seq_len"
        )
    return samples


def pack_micro_batches(samples: Sequence[Sample], max_tokens: int) -> list[list[Sample]]:
    """Group samples so each padded micro-batch holds at most ``max_tokens`` tokens.

    Longest first: similar lengths share a batch, which keeps padding low.
    """
    batches: list[list[Sample]] = []
    current: list[Sample] = []
    for sample in sorted(samples, key=lambda s: s.length, reverse=True):
        width = max([sample.length] + [s.length for s in current])
        if current and width * (len(current) + 1) > max_tokens:
            batches.append(current)
            current = []
        current.append(sample)
    if current:
        batches.append(current)
    return batches


def optimizer_steps(
    samples: Sequence[Sample], batch_size: int, seed: int, epoch: int
) -> Iterator[list[Sample]]:
    """Shuffle per epoch (seeded) and yield ``batch_size`` samples per optimizer step; keep the remainder."""
    order = list(range(len(samples)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield [samples[i] for i in order[start : start + batch_size]]


class MetricsWriter:
    """Appends instructlab-compatible JSON lines, flushed per line so readers see progress."""

    def __init__(self, path: Path):
        self._handle = path.open("ab")

    def write(self, record: dict[str, Any]) -> None:
        record = {**record, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())}
        self._handle.write(jsonio.dumps(record) + b"\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class _NoMetrics:
    """Nodes other than 0 write no metrics file (instructlab writes ``..._global0`` on rank 0)."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _sum_over_nodes(model: Any, loss_sum: float) -> float:
    """Sum gradients and the loss over the nodes (a node with no sample this step adds zeros)."""
    import torch
    import torch.distributed as dist

    grads = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss_sum], dtype=grads[0].dtype)])
    dist.all_reduce(flat)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
    return float(flat[-1])


def _collate(batch: Sequence[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    width = max(s.length for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, sample in enumerate(batch):
        input_ids[row, : sample.length] = torch.tensor(sample.input_ids)
        labels[row, : sample.length] = torch.tensor(sample.labels)
        attention[row, : sample.length] = 1
    return input_ids, labels, attention


def _save_atomically(target: Path, write: Callable[[Path], None]) -> None:
    tmp = target.parent / f".{target.name}.tmp"
    remove_owned(tmp, target.parent, field="output_dir")
    tmp.mkdir(parents=True)
    write(tmp)
    remove_owned(target, target.parent, field="output_dir")
    os.replace(tmp, target)


def train_on_cpu(
    params: SFTParams,
    *,
    model_path: str,
    processed_data: str | Path,
    output_dir: str | Path,
    threads: int = 1,
    log: Logger = print,
    topology: Topology | None = None,
) -> CPUTrainingResult:
    """Train ``model_path`` on instructlab-processed data; write metrics and checkpoints to ``output_dir``."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    topology = topology or Topology()
    rank, world = topology.node_rank, topology.num_nodes
    if world > 1:
        import datetime

        import torch.distributed as dist

        log(
            f"joining {world} nodes over gloo at {topology.master_addr}:{topology.master_port} as rank {rank}"
        )
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{topology.master_addr}:{topology.master_port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=30),
        )

    torch.set_num_threads(threads)
    torch.manual_seed(params.seed)
    random.seed(params.seed)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    samples = load_processed_samples(processed_data, max_tokens_per_gpu=params.max_tokens_per_gpu)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    steps_per_epoch = math.ceil(len(samples) / params.effective_batch_size)
    total_steps = steps_per_epoch * params.num_epochs
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=params.learning_rate,
        betas=c.ADAMW_BETAS,
        eps=c.ADAMW_EPS,
        weight_decay=c.ADAMW_WEIGHT_DECAY,
    )
    scheduler = get_scheduler(
        params.lr_scheduler.value,
        optimizer=optimizer,
        num_warmup_steps=params.lr_warmup_steps,
        num_training_steps=total_steps,
    )

    metrics = MetricsWriter(out / c.METRICS_FILE) if rank == 0 else _NoMetrics()
    metrics.write(
        {
            **params.to_json_dict(),
            "model_name_or_path": model_path,
            "data_path": str(processed_data),
            "output_dir": str(out),
            "num_warmup_steps": params.lr_warmup_steps,
            "max_batch_len": params.max_tokens_per_gpu,
            "device": "cpu",
            "torch_threads": threads,
            "total_samples": len(samples),
            "num_epoch_steps": steps_per_epoch,
            "hparams": True,
        }
    )
    log(
        f"CPU SFT: {len(samples)} samples, {params.num_epochs} epoch(s) x {steps_per_epoch} step(s), "
        f"effective batch {params.effective_batch_size}, lr {params.learning_rate:g} ({params.lr_scheduler.value}, "
        f"warmup {params.lr_warmup_steps}), {threads} thread(s)" + (f", {world} nodes" if world > 1 else "")
    )

    def save_checkpoint(samples_seen: int) -> str:
        target = out / c.HF_FORMAT_DIR / f"{c.SAMPLES_CHECKPOINT_PREFIX}{samples_seen}"

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)

        _save_atomically(target, write)
        log(f"saved checkpoint {target}")
        return str(target)

    def save_full_state(epoch: int, samples_seen: int, step: int) -> None:
        target = out / c.FULL_STATE_DIR / f"epoch_{epoch}"

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp / "model", safe_serialization=True)
            torch.save(optimizer.state_dict(), tmp / "optimizer.bin")
            torch.save(scheduler.state_dict(), tmp / "scheduler.bin")
            (tmp / "training_metadata.json").write_bytes(
                jsonio.dumps({"current_epoch": epoch, "samples_seen": samples_seen, "global_step": step})
            )

        _save_atomically(target, write)
        log(f"saved full training state {target}")

    checkpoints: list[str] = []
    step = samples_seen = tokens_seen = 0
    started = time.monotonic()
    try:
        for epoch in range(params.num_epochs):
            for step_samples in optimizer_steps(samples, params.effective_batch_size, params.seed, epoch):
                step_started = time.monotonic()
                micro_batches = pack_micro_batches(step_samples[rank::world], params.max_tokens_per_gpu)
                label_tokens = sum(s.label_tokens for s in step_samples)
                step_tokens = sum(s.length for s in step_samples)
                loss_sum = 0.0
                for batch in micro_batches:
                    input_ids, labels, attention = _collate(batch, pad_id)
                    logits = model(input_ids=input_ids, attention_mask=attention).logits
                    loss = F.cross_entropy(
                        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                        labels[:, 1:].reshape(-1),
                        ignore_index=-100,
                        reduction="sum",
                    )
                    (loss / max(label_tokens, 1)).backward()
                    loss_sum += loss.item()
                if world > 1:  # each node's loss is already over the whole step's tokens: sum
                    loss_sum = _sum_over_nodes(model, loss_sum)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.GRAD_CLIP_NORM).item()
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                previous_seen = samples_seen
                step += 1
                samples_seen += len(step_samples)
                tokens_seen += step_tokens
                elapsed = time.monotonic() - step_started
                avg_loss = loss_sum / max(label_tokens, 1)
                metrics.write(
                    {
                        "epoch": epoch,
                        "step": step,
                        "rank": 0,
                        "overall_throughput": len(step_samples) / elapsed if elapsed else 0.0,
                        "lr": lr,
                        "num_loss_counted_tokens": label_tokens,
                        "num_tokens_rank0": step_tokens,
                        "batch_size": len(step_samples),
                        "num_minibatches": len(micro_batches),
                        "avg_loss": avg_loss,
                        "samples_seen": samples_seen,
                        "gradnorm": grad_norm,
                        "total_samples": len(samples),
                        "num_epoch_steps": steps_per_epoch,
                        "tokens_per_second": step_tokens / elapsed if elapsed else 0.0,
                    }
                )
                if rank == 0 and is_progress_step(step, total_steps):
                    spent = time.monotonic() - started
                    log(
                        progress_line(
                            step=step,
                            total_steps=total_steps,
                            epoch=epoch,
                            num_epochs=params.num_epochs,
                            loss=avg_loss,
                            lr=lr,
                            grad_norm=grad_norm,
                            samples_per_second=len(step_samples) / elapsed,
                            eta_seconds=spent / step * (total_steps - step),
                        )
                    )
                save_every = params.save_samples
                if rank == 0 and save_every > 0 and samples_seen // save_every > previous_seen // save_every:
                    checkpoints.append(save_checkpoint(samples_seen))
            if rank != 0:
                continue
            if params.checkpoint_at_epoch and (
                not checkpoints or not checkpoints[-1].endswith(f"_{samples_seen}")
            ):
                checkpoints.append(save_checkpoint(samples_seen))
            if params.accelerate_full_state_at_epoch:
                save_full_state(epoch, samples_seen, step)
    finally:
        metrics.close()
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return CPUTrainingResult(
        steps=step,
        samples_seen=samples_seen,
        tokens_seen=tokens_seen,
        seconds=time.monotonic() - started,
        checkpoints=tuple(checkpoints),
    )
