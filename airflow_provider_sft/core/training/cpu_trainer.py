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
* with ``validation_split`` > 0, the samples instructlab holds out (:mod:`held_out`) are not
  trained on; their loss, summed over loss-counted tokens and divided by their count as
  ``main_ds.compute_validation_loss`` does, is a ``{"val_loss", "val_num_tokens", "step"}`` line
  every ``validation_frequency`` steps and after the last step (``main_ds`` has no end-of-run one),
  computed in eval mode without gradients: it draws no random number and changes no weight,
  so the training steps are those of a run without it;
* ``full_state/epoch_<N>/`` (model, optimizer, scheduler, random states: :mod:`cpu_state`) when
  asked, and on SIGTERM: the loop stops at the next step boundary, saves it and raises
  :class:`PreemptedError`; given such a state (``resume_from``) it continues exactly where it
  stopped: the steps already done in that epoch are skipped (the per-epoch shuffle is seeded),
  and ``samples_seen``, the step counter and the ``save_samples`` schedule carry on.

With more than one node (``PET_NNODES`` > 1) the nodes train as one job over
``torch.distributed`` with gloo: every node holds the model, takes its share of each
step's samples, and the gradients are summed before the optimizer step, so the
result is the single-process one. Only node 0 writes metrics and checkpoints. Each node also
computes the validation loss of its share of the held-out samples; the sums are added over
the nodes, so every node has the same value, the one a single process computes.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import DatasetError, PreemptedError
from airflow_provider_sft.core.files import remove_owned
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.training.cpu_state import MODEL_DIR, restore_full_state, write_full_state
from airflow_provider_sft.core.training.held_out import split_held_out
from airflow_provider_sft.core.training.nodes import Topology
from airflow_provider_sft.core.training.preemption import StopOnSigterm
from airflow_provider_sft.core.training.progress import ProgressSnapshot, ProgressTracker

if TYPE_CHECKING:
    import torch

Logger = Callable[[str], None]
OnProgress = Callable[[ProgressSnapshot], None]


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
class ValidationLoss:
    """The held-out samples' loss at one step, as ``main_ds.compute_validation_loss`` reports it."""

    loss: float  # summed token loss / loss-counted tokens, over every held-out sample
    tokens: int  # the loss-counted tokens of every held-out sample


@dataclass(frozen=True)
class CPUTrainingResult:
    steps: int
    samples_seen: int
    tokens_seen: int
    seconds: float
    checkpoints: tuple[str, ...]
    validation: ValidationLoss | None = None  # the last one computed (this node's copy: all agree)

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
        # UTC without a zone, to the microsecond as instructlab writes its own: whole seconds made
        # the tokens/s of a run of a few seconds off by half (see results/efficiency.py).
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        record = {**record, "timestamp": now.isoformat(timespec="microseconds")}
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
    resume_from: Path | None = None,
    on_progress: OnProgress | None = None,
) -> CPUTrainingResult:
    """Train ``model_path`` on instructlab-processed data; write metrics and checkpoints to ``output_dir``.

    ``resume_from`` (node 0's: the others are told) is a full state to continue from. SIGTERM
    stops the loop at the next step boundary with a saved state and :class:`PreemptedError`.
    ``on_progress`` gets node 0's snapshot after every step (the ``trainerStatus`` reporter).
    """
    topology = topology or Topology()
    _join_nodes(topology, log)
    resume_from = _agree_on_state(resume_from, topology.num_nodes)
    _seed_and_limit_threads(params.seed, threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    samples, held_out = split_held_out(
        load_processed_samples(processed_data, max_tokens_per_gpu=params.max_tokens_per_gpu),
        params.validation_split,
        params.seed,
    )
    job = _build_job(
        params, model_path, len(samples), weights=resume_from / MODEL_DIR if resume_from else None
    )
    metrics = MetricsWriter(out / c.METRICS_FILE) if topology.node_rank == 0 else _NoMetrics()
    loop = _Loop(params, job, samples, out, topology, metrics, log, on_progress, held_out=held_out)
    if resume_from is None:  # a resumed run continues the metrics of the one it resumes: one hparams line
        metrics.write(
            _hparams_record(params, model_path, processed_data, out, threads, len(samples), job)
            | {"validation_samples": len(held_out)}
        )
    else:
        loop.restore(resume_from)
    log(_plan_line(params, len(samples), job.steps_per_epoch, threads, topology.num_nodes))

    try:
        with StopOnSigterm() as stop:
            for epoch in range(loop.first_epoch, params.num_epochs):
                loop.train_epoch(epoch, stop)
        loop.validate_at_end()
        _wait_for_every_node(topology.num_nodes)
    finally:
        metrics.close()
        _leave_nodes(topology.num_nodes)
    return loop.result()


def _agree_on_state(resume_from: Path | None, world: int) -> Path | None:
    """Every node resumes from node 0's choice (node 0 decided and cleaned before the nodes joined)."""
    if world <= 1:
        return resume_from
    import torch.distributed as dist

    chosen = [str(resume_from) if resume_from else None]
    dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0]) if chosen[0] else None


def _join_nodes(topology: Topology, log: Logger) -> None:
    """Join the other nodes over gloo before anything trains: every node must build the same model."""
    world = topology.num_nodes
    if world <= 1:
        return
    import datetime

    import torch.distributed as dist

    log(
        f"joining {world} nodes over gloo at {topology.master_addr}:{topology.master_port} "
        f"as rank {topology.node_rank}"
    )
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{topology.master_addr}:{topology.master_port}",
        rank=topology.node_rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=30),
    )


def _wait_for_every_node(world: int) -> None:
    """Meet every node after the last step, so no node tears gloo down while a peer still uses it.

    Without it a node that finished first could close its sockets under a peer's last collective,
    and gloo aborted the peer at exit ("terminate called without an active exception"). Only the
    success path meets: a node that failed must not make the others wait out the 30-minute timeout.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    dist.barrier()


def _leave_nodes(world: int) -> None:
    """Tear the process group down even when training failed, so the other nodes are not left waiting."""
    if world <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _seed_and_limit_threads(seed: int, threads: int) -> None:
    """Seed torch and ``random`` so a run repeats exactly, and use only the threads the pod was given."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class _Job:
    """The model and what steps it, built once before the first step."""

    model: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    pad_id: int
    steps_per_epoch: int
    total_steps: int


def _build_job(
    params: SFTParams, model_path: str, total_samples: int, *, weights: Path | None = None
) -> _Job:
    """Load the model (from ``weights`` when resuming) and build instructlab's optimizer and schedule for it.

    AdamW with instructlab's betas/eps/weight decay and ``get_scheduler`` over the whole run,
    so the learning rate follows the curve ``main_ds`` would follow on the same data. The
    fused kernel is the same AdamW update in one pass over all parameters: on a CPU torch
    otherwise steps one tensor at a time in Python, about 3% of a step on the tiny model
    (``transformers.Trainer`` uses the fused kernel by default too).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(weights or model_path, dtype=torch.float32)
    model.train()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    steps_per_epoch = math.ceil(total_samples / params.effective_batch_size)
    total_steps = steps_per_epoch * params.num_epochs
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=params.learning_rate,
        betas=c.ADAMW_BETAS,
        eps=c.ADAMW_EPS,
        weight_decay=c.ADAMW_WEIGHT_DECAY,
        fused=True,
    )
    scheduler = get_scheduler(
        params.lr_scheduler.value,
        optimizer=optimizer,
        num_warmup_steps=params.lr_warmup_steps,
        num_training_steps=total_steps,
    )
    return _Job(model, tokenizer, optimizer, scheduler, pad_id, steps_per_epoch, total_steps)


def _hparams_record(
    params: SFTParams,
    model_path: str,
    processed_data: str | Path,
    out: Path,
    threads: int,
    total_samples: int,
    job: _Job,
) -> dict[str, Any]:
    """The metrics file's first line: the run's settings, as instructlab writes them before step 1."""
    return {
        **params.to_json_dict(),
        "model_name_or_path": model_path,
        "data_path": str(processed_data),
        "output_dir": str(out),
        "num_warmup_steps": params.lr_warmup_steps,
        "max_batch_len": params.max_tokens_per_gpu,
        "device": "cpu",
        "torch_threads": threads,
        "total_samples": total_samples,
        "num_epoch_steps": job.steps_per_epoch,
        "hparams": True,
    }


def _plan_line(params: SFTParams, total_samples: int, steps_per_epoch: int, threads: int, world: int) -> str:
    """One log line with the run's shape, so a reader of the task log knows what the steps count towards."""
    return (
        f"CPU SFT: {total_samples} samples, {params.num_epochs} epoch(s) x {steps_per_epoch} step(s), "
        f"effective batch {params.effective_batch_size}, lr {params.learning_rate:g} ({params.lr_scheduler.value}, "
        f"warmup {params.lr_warmup_steps}), {threads} thread(s)" + (f", {world} nodes" if world > 1 else "")
    )


@dataclass(frozen=True)
class _StepStats:
    """What one optimizer step did, as its metrics line and progress line report it."""

    samples: int
    micro_batches: int
    label_tokens: int
    tokens: int
    loss_sum: float
    grad_norm: float
    lr: float

    @property
    def avg_loss(self) -> float:
        return self.loss_sum / max(self.label_tokens, 1)


def _summed_token_loss(model: Any, batch: Sequence[Sample], pad_id: int) -> torch.Tensor:
    """The cross-entropy of every label token of one padded micro-batch, summed (``main_ds``'s)."""
    import torch.nn.functional as F

    input_ids, labels, attention = _collate(batch, pad_id)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


def _accumulate_gradients(
    model: Any, micro_batches: Sequence[Sequence[Sample]], pad_id: int, label_tokens: int
) -> float:
    """Forward and backward each micro-batch; return the step's summed token loss.

    Each micro-batch's loss is divided by the label tokens of the WHOLE step (every node's
    share included), so the accumulated gradient is the step's mean, as in ``main_ds``.
    """
    loss_sum = 0.0
    for batch in micro_batches:
        loss = _summed_token_loss(model, batch, pad_id)
        (loss / max(label_tokens, 1)).backward()
        loss_sum += loss.item()
    return loss_sum


def _train_step(job: _Job, step_samples: list[Sample], max_tokens: int, rank: int, world: int) -> _StepStats:
    """One optimizer step over this node's share of ``step_samples``: accumulate, sum over nodes, clip, step."""
    import torch

    micro_batches = pack_micro_batches(step_samples[rank::world], max_tokens)
    label_tokens = sum(s.label_tokens for s in step_samples)
    loss_sum = _accumulate_gradients(job.model, micro_batches, job.pad_id, label_tokens)
    if world > 1:  # each node's loss is already over the whole step's tokens: sum
        loss_sum = _sum_over_nodes(job.model, loss_sum)
    grad_norm = torch.nn.utils.clip_grad_norm_(job.model.parameters(), c.GRAD_CLIP_NORM).item()
    lr = job.scheduler.get_last_lr()[0]
    job.optimizer.step()
    job.scheduler.step()
    job.optimizer.zero_grad(set_to_none=True)
    return _StepStats(
        samples=len(step_samples),
        micro_batches=len(micro_batches),
        label_tokens=label_tokens,
        tokens=sum(s.length for s in step_samples),
        loss_sum=loss_sum,
        grad_norm=grad_norm,
        lr=lr,
    )


def validation_loss(
    job: _Job, held_out: Sequence[Sample], max_tokens: int, rank: int, world: int
) -> ValidationLoss:
    """Each node's share of ``held_out``, in eval mode without gradients; the sums added over the nodes.

    Eval mode and ``no_grad`` are ``main_ds``'s: no dropout, so no random number is drawn and the
    next training step is the one it would have been. Every node returns the same value.
    """
    import torch

    loss_sum = 0.0
    job.model.eval()
    try:
        with torch.no_grad():
            for batch in pack_micro_batches(held_out[rank::world], max_tokens):
                loss_sum += _summed_token_loss(job.model, batch, job.pad_id).item()
    finally:
        job.model.train()
    if world > 1:
        import torch.distributed as dist

        total = torch.tensor([loss_sum], dtype=torch.float64)
        dist.all_reduce(total)
        loss_sum = float(total[0])
    tokens = sum(s.label_tokens for s in held_out)
    return ValidationLoss(loss=loss_sum / max(tokens, 1), tokens=tokens)


class _Loop:
    """The epochs and steps of one run: counts what was trained and decides what to write when.

    Only node 0 writes checkpoints and progress lines; every node steps the same model.
    """

    def __init__(
        self,
        params: SFTParams,
        job: _Job,
        samples: list[Sample],
        out: Path,
        topology: Topology,
        metrics: MetricsWriter | _NoMetrics,
        log: Logger,
        on_progress: OnProgress | None = None,
        *,
        held_out: Sequence[Sample] = (),
    ):
        self.params, self.job, self.samples, self.out = params, job, samples, out
        self.held_out = held_out
        self.validation: ValidationLoss | None = None  # the latest
        self._validated_step: int | None = None
        self.rank, self.world = topology.node_rank, topology.num_nodes
        self.metrics, self.log, self.on_progress = metrics, log, on_progress
        # the progress lines and trainerStatus: the same tracker as the CUDA path's follower
        self.progress = ProgressTracker(
            num_epochs=params.num_epochs, effective_batch_size=params.effective_batch_size
        )
        self.step = self.samples_seen = self.tokens_seen = 0
        self.first_epoch = self._skip_steps = 0
        self.checkpoints: list[str] = []
        self.started = time.monotonic()

    def restore(self, state_dir: Path) -> None:
        """Continue after the last step ``state_dir`` holds (the model was loaded from it already)."""
        metadata = restore_full_state(state_dir, optimizer=self.job.optimizer, scheduler=self.job.scheduler)
        epoch, per_epoch = metadata["current_epoch"], self.job.steps_per_epoch
        self.samples_seen, self.tokens_seen = metadata["samples_seen"], metadata.get("tokens_seen", 0)
        if "global_step" in metadata:  # saved mid-epoch (or at its last step, before its end)
            self.step, self.first_epoch = metadata["global_step"], epoch
            self._skip_steps = self.step - epoch * per_epoch
        else:  # saved at the end of its epoch
            self.step, self.first_epoch = (epoch + 1) * per_epoch, epoch + 1

    def train_epoch(self, epoch: int, stop: StopOnSigterm) -> None:
        """Every step of one epoch (but those a resumed state holds), then the end-of-epoch saves.

        After each step every node asks whether a node got SIGTERM; if so, they stop there.
        """
        params = self.params
        steps = optimizer_steps(self.samples, params.effective_batch_size, params.seed, epoch)
        skip, self._skip_steps = self._skip_steps, 0
        for step_samples in itertools.islice(steps, skip, None):
            step_started = time.monotonic()
            stats = _train_step(self.job, step_samples, params.max_tokens_per_gpu, self.rank, self.world)
            previous_seen = self.samples_seen
            self.step += 1
            self.samples_seen += stats.samples
            self.tokens_seen += stats.tokens
            elapsed = time.monotonic() - step_started
            record = self._step_record(epoch, stats, elapsed)
            self.metrics.write(record)
            if self.rank == 0:
                self._report_step(record, previous_seen)
            frequency = self.params.validation_frequency
            if self.held_out and frequency and self.step % frequency == 0:  # main_ds's schedule
                self._validate()
            if stop.agreed(self.world):
                self._stop(epoch)
        if self.rank == 0:
            self._end_epoch(epoch)

    def validate_at_end(self) -> None:
        """The trained model's validation loss, unless the last step's was just computed."""
        if self.held_out and self._validated_step != self.step:
            self._validate()

    def _validate(self) -> None:
        """Every node computes the held-out loss; node 0 writes instructlab's line and says it."""
        self.validation = validation_loss(
            self.job, self.held_out, self.params.max_tokens_per_gpu, self.rank, self.world
        )
        self._validated_step = self.step
        record = {
            "val_loss": self.validation.loss,
            "val_num_tokens": self.validation.tokens,
            "step": self.step,
        }
        self.metrics.write(record)
        if self.rank == 0:
            self.log(
                f"validation at step {self.step}: loss {self.validation.loss:.4f} over "
                f"{self.validation.tokens} tokens of {len(self.held_out)} held-out samples"
            )
            snapshot = self.progress.update(record, at=time.time())  # the pod's status carries it
            if snapshot is not None and self.on_progress is not None:
                self.on_progress(snapshot)

    def _stop(self, epoch: int) -> None:
        """Preempted: node 0 saves the full state of this step, every node waits for it and stops."""
        if self.rank == 0:
            self.log(f"preempted: SIGTERM received, saving the full state at step {self.step}")
            self._save_full_state(epoch, mid_epoch=True)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # no node reports a state saved before node 0 saved it
        raise PreemptedError(step=self.step, epoch=epoch, samples_seen=self.samples_seen)

    def _step_record(self, epoch: int, stats: _StepStats, elapsed: float) -> dict[str, Any]:
        """One metrics line in instructlab's keys, so metrics, the chart and export read CPU runs unchanged."""
        return {
            "epoch": epoch,
            "step": self.step,
            "rank": 0,
            "overall_throughput": stats.samples / elapsed if elapsed else 0.0,
            "lr": stats.lr,
            "num_loss_counted_tokens": stats.label_tokens,
            "num_tokens_rank0": stats.tokens,
            "batch_size": stats.samples,
            "num_minibatches": stats.micro_batches,
            "avg_loss": stats.avg_loss,
            "samples_seen": self.samples_seen,
            "gradnorm": stats.grad_norm,
            "total_samples": len(self.samples),
            "num_epoch_steps": self.job.steps_per_epoch,
            "tokens_per_second": stats.tokens / elapsed if elapsed else 0.0,
        }

    def _report_step(self, record: dict[str, Any], previous_seen: int) -> None:
        """Node 0's progress (a line about 20 times a run, the snapshot to ``on_progress``) from the
        step's metrics line, as the CUDA path's follower reads it; a checkpoint each time
        ``save_samples`` more were seen."""
        snapshot = self.progress.update(record, at=time.time())
        if snapshot is not None:
            if snapshot.gets_line:
                self.log(snapshot.line())
            if self.on_progress is not None:
                self.on_progress(snapshot)
        save_every = self.params.save_samples
        if save_every > 0 and self.samples_seen // save_every > previous_seen // save_every:
            self.checkpoints.append(self._save_checkpoint())

    def _end_epoch(self, epoch: int) -> None:
        """The epoch's checkpoint (unless a ``save_samples`` one was just written) and full state, as asked."""
        if self.params.checkpoint_at_epoch and (
            not self.checkpoints or not self.checkpoints[-1].endswith(f"_{self.samples_seen}")
        ):
            self.checkpoints.append(self._save_checkpoint())
        if self.params.accelerate_full_state_at_epoch:
            self._save_full_state(epoch)

    def _save_checkpoint(self) -> str:
        """``hf_format/samples_<N>/``: the model and tokenizer export reads, written whole or not at all."""
        target = self.out / c.HF_FORMAT_DIR / f"{c.SAMPLES_CHECKPOINT_PREFIX}{self.samples_seen}"
        job = self.job

        def write(tmp: Path) -> None:
            job.model.save_pretrained(tmp, safe_serialization=True)
            job.tokenizer.save_pretrained(tmp)

        _save_atomically(target, write)
        self.log(f"saved checkpoint {target}")
        return str(target)

    def _save_full_state(self, epoch: int, *, mid_epoch: bool = False) -> None:
        """``full_state/epoch_<N>/`` (see :mod:`cpu_state`); ``global_step`` only in a mid-epoch one,
        as instructlab writes it: without it a resume starts at the next epoch."""
        target = self.out / c.FULL_STATE_DIR / f"epoch_{epoch}"
        metadata = {
            "current_epoch": epoch,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
        }
        if mid_epoch:
            metadata["global_step"] = self.step
        job = self.job

        def write(tmp: Path) -> None:
            write_full_state(
                tmp, model=job.model, optimizer=job.optimizer, scheduler=job.scheduler, metadata=metadata
            )

        _save_atomically(target, write)
        self.log(f"saved full training state {target}")

    def result(self) -> CPUTrainingResult:
        return CPUTrainingResult(
            steps=self.step,
            samples_seen=self.samples_seen,
            tokens_seen=self.tokens_seen,
            seconds=time.monotonic() - self.started,
            checkpoints=tuple(self.checkpoints),
            validation=self.validation,
        )
