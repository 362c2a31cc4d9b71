"""How well a run used what it ran on: tokens/s (overall, per GPU), MFU, GPU-hours, cost, time to first step.

The figures come from the run's own record, nothing measured twice:

* the metrics JSONL's step lines (tokens per step, timestamps; :mod:`metrics` reads them).
  instructlab's ``num_tokens_rank0`` is, despite its name, the step's tokens summed over every
  rank (``BatchLossManager._reduce_metrics``), and the CPU loop writes every node's: the run's;
* the run-facts line the training process appends to the same file as an hparams line before
  it trains (:func:`facts_record`): the device, the GPU's name as ``torch.cuda.get_device_name()``
  gives it, nodes and GPUs per node, when the process started, and the UTC offset of the step
  timestamps (instructlab writes ``datetime.now().isoformat()``, the pod's local time; the CPU
  loop writes UTC);
* the model's ``config.json`` (parameter count, FLOPs per token);
* from the backend, when it knows it: when the job was created (a Kubernetes job's
  ``creationTimestamp``, a local run's submit time).

The training time is the time between each stretch's first and last step (a resumed run's
waits are not training, see :func:`metrics.timed_stretches`), and the tokens over it are those
of the steps it measures: each stretch's first step ended at its first timestamp, so its tokens
are not counted. Where a figure has no meaning (MFU, GPU-hours or cost of a CPU run) or cannot be
known (a GPU not in :data:`PEAK_BF16_TFLOPS`), it is ``None`` and ``not_available`` says why.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.results.metrics import FACTS_KEY, MetricsLog, timed_stretches

#: Peak dense (no sparsity) BF16 tensor throughput per GPU, in TFLOP/s, by the name
#: ``torch.cuda.get_device_name()`` reports; first match wins, so a variant precedes its family.
#: Datasheets give the sparse figure with an asterisk: the dense one is half of it.
PEAK_BF16_TFLOPS: tuple[tuple[str, re.Pattern[str], float], ...] = (
    # NVIDIA HGX B200 (nvidia.com/en-us/data-center/hgx): FP16/BF16 36 PFLOPS for 8 GPUs, sparse.
    ("B200", re.compile(r"\bB200\b"), 2250.0),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: BF16 Tensor Core 1,979 TFLOPS, sparse.
    ("GH200", re.compile(r"\bGH200\b"), 989.5),
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): H200 NVL BF16 1,671 TFLOPS, sparse.
    ("H200 NVL", re.compile(r"\bH200\b.*\bNVL\b"), 835.5),
    # NVIDIA H200 datasheet: H200 SXM BF16 Tensor Core 1,979 TFLOPS, sparse.
    ("H200 SXM", re.compile(r"\bH200\b"), 989.5),
    # NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): H100 NVL BF16 1,671 TFLOPS, sparse.
    ("H100 NVL", re.compile(r"\bH100\b.*\bNVL\b"), 835.5),
    # NVIDIA H100 datasheet: H100 PCIe BF16 Tensor Core 1,513 TFLOPS, sparse.
    ("H100 PCIe", re.compile(r"\bH100\b.*\bPCIE\b"), 756.5),
    # NVIDIA H100 datasheet: H100 SXM BF16 Tensor Core 1,979 TFLOPS, sparse ("H100 80GB HBM3").
    ("H100 SXM", re.compile(r"\bH100\b"), 989.5),
    # NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): BFLOAT16 Tensor
    # Core 312 TFLOPS dense, 624 sparse; the same for SXM4 and PCIe, 40 and 80 GB.
    ("A100", re.compile(r"\bA100\b"), 312.0),
    # NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS dense, 733 sparse.
    ("L40S", re.compile(r"\bL40S\b"), 362.05),
    # NVIDIA L40 datasheet: BF16 Tensor Core 181.05 TFLOPS dense, 362.1 sparse.
    ("L40", re.compile(r"\bL40\b"), 181.05),
    # NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS, sparse.
    ("L4", re.compile(r"\bL4\b"), 121.0),
    # NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOPS dense, 250 sparse (not AWS's A10G).
    ("A10", re.compile(r"\bA10\b"), 125.0),
    # AMD Instinct MI300X datasheet: peak BF16 1,307.4 TFLOPS dense, 2,614.9 sparse.
    ("MI300X", re.compile(r"\bMI300X\b"), 1307.4),
)
#: GPUs without BF16 tensor cores: the runs' bf16 has no peak to be measured against.
NO_BF16 = re.compile(r"\b(V100|T4|P100|P40)\b")

#: Who started what the time to the first step is counted from.
FROM_JOB_CREATED = "job_created"
FROM_RUN_STARTED = "run_started"


def peak_bf16_flops(gpu_name: str | None) -> tuple[float | None, str]:
    """The GPU's peak dense BF16 FLOP/s and the table row it matched; ``None`` and why when unknown."""
    if not gpu_name:
        return None, "the run did not record its GPU's name"
    name = gpu_name.upper()
    for label, pattern, tflops in PEAK_BF16_TFLOPS:
        if pattern.search(name):
            return tflops * 1e12, label
    if NO_BF16.search(name):
        return None, f"{gpu_name} has no BF16 tensor cores: there is no BF16 peak to compare with"
    known = ", ".join(label for label, _, _ in PEAK_BF16_TFLOPS)
    return None, f"{gpu_name} is not in the table of peak BF16 throughputs ({known})"


# --- model FLOPs ----------------------------------------------------------------------------


class UnsupportedModelConfig(ValueError):
    """A ``config.json`` whose parameters this module cannot count (the reason MFU is n/a)."""


def _int(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UnsupportedModelConfig(f"config.json has no positive integer {key!r} (got {value!r})")
    return value


def parameter_count(config: Mapping[str, Any]) -> int:
    """The parameters of a decoder-only Llama-family model (Llama, Mistral, Qwen2/3, Granite, Gemma)
    from its ``config.json``, as ``sum(p.numel() for p in model.parameters())`` counts them.

    Embeddings ``vocab x hidden`` (and the output projection again unless ``tie_word_embeddings``),
    then per layer: attention ``q`` and ``o`` (``hidden x heads*head_dim``), ``k`` and ``v``
    (``hidden x kv_heads*head_dim``, grouped-query attention), their biases with
    ``attention_bias`` (always for Qwen2), the gated MLP ``3 x hidden x intermediate`` (biases
    with ``mlp_bias``), two RMSNorm weights (and Qwen3's q/k norms); then the final norm.
    A mixture of experts is refused: its FLOPs per token depend on the experts each token uses.
    """
    if any(config.get(key) for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise UnsupportedModelConfig("a mixture-of-experts model: its FLOPs per token are not counted here")
    hidden, layers = _int(config, "hidden_size"), _int(config, "num_hidden_layers")
    heads, vocab = _int(config, "num_attention_heads"), _int(config, "vocab_size")
    intermediate = _int(config, "intermediate_size")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    model_type = str(config.get("model_type", ""))
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attention = 2 * hidden * q_out + 2 * hidden * kv_out
    if config.get("attention_bias") or model_type == "qwen2":
        attention += q_out + 2 * kv_out + (hidden if config.get("attention_bias") else 0)
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden if config.get("mlp_bias") else 0)
    norms = 2 * hidden + (2 * head_dim if model_type == "qwen3" else 0)
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return embeddings + layers * (attention + mlp + norms) + hidden


def training_flops_per_token(config: Mapping[str, Any], seq_len: float) -> float:
    """Model FLOPs of one trained token: ``6 N + 12 L H Q T``.

    PaLM (Chowdhery et al. 2022, arXiv:2204.02311), Appendix B: the forward and backward pass
    take ``6N`` matmul FLOPs per token (2 forward, 4 backward, per parameter; Kaplan et al.
    2020, section 2.1) plus ``12 L H Q T`` for the self-attention scores, with ``L`` layers,
    ``H`` heads of dimension ``Q`` (``H Q`` = the hidden size) and sequence length ``T``; the
    model FLOPs, not the hardware's (no activation recomputation). ``N`` counts every parameter,
    embeddings included, as Chinchilla does (Hoffmann et al. 2022, arXiv:2203.15556, Appendix F):
    with tied embeddings that is the output projection's matmul.
    """
    layers, hidden = _int(config, "num_hidden_layers"), _int(config, "hidden_size")
    return 6 * parameter_count(config) + 12 * layers * hidden * seq_len


# --- the run's facts ------------------------------------------------------------------------


def facts_record(
    *,
    device: str,
    gpu_name: str | None,
    num_nodes: int,
    gpus_per_node: int,
    started: datetime,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The hparams line the training process appends to the metrics JSONL before it trains.

    instructlab writes its own hparams lines (``vars(args)``) and cannot be told to add the
    GPU's name; this line carries what the efficiency figures need from where the run ran, and
    ``provenance`` (what trained it: ``core/pod/provenance.py``) for the model card.
    """
    offset = 0 if device == "cpu" else time.localtime().tm_gmtoff  # the CPU loop writes UTC
    return {
        "hparams": True,
        FACTS_KEY: True,
        "device": device,
        "gpu_name": gpu_name,
        "num_nodes": num_nodes,
        "gpus_per_node": gpus_per_node,
        "started": started.astimezone(timezone.utc).isoformat(),
        "timestamp_utc_offset_seconds": offset,
        **(provenance or {}),
    }


def cuda_device_name() -> str | None:
    """The name ``torch.cuda.get_device_name()`` gives this process's first GPU; None without one."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


# --- the figures ----------------------------------------------------------------------------


def checked_gpu_hour_cost(value: Any, *, field: str = "gpu_hour_cost") -> float | None:
    """The price of one GPU-hour (any currency), a number >= 0; empty (None, ``""``): no cost."""
    if value is None or value == "":
        return None
    try:
        cost = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        cost = math.nan
    if not (math.isfinite(cost) and cost >= 0):
        raise InvalidParameterError(
            {field: f"must be a number >= 0 (the price of one GPU-hour), got {value!r}"}
        )
    return cost


@dataclass(frozen=True)
class Efficiency:
    """The run's efficiency figures (``metrics.json``'s ``efficiency``); ``None`` = n/a, see ``not_available``."""

    device: str | None
    gpu_name: str | None
    num_gpus: int | None  # nodes x GPUs per node; None on a CPU
    training_seconds: float | None
    tokens_per_second: float | None
    tokens_per_second_per_gpu: float | None
    model_parameters: int | None
    flops_per_token: float | None
    peak_flops_per_gpu: float | None
    mfu: float | None  # a share, 0..1
    gpu_hours: float | None
    gpu_hour_cost: float | None
    cost: float | None
    time_to_first_step_seconds: float | None
    time_to_first_step_from: str | None  # FROM_JOB_CREATED or FROM_RUN_STARTED
    not_available: dict[str, str] = field(default_factory=dict)  # figure -> why it is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Efficiency:
        values: dict[str, Any] = {key: data.get(key) for key in cls.__dataclass_fields__}
        values["not_available"] = dict(data.get("not_available") or {})
        return cls(**values)


def _moment(value: str | None, utc_offset_seconds: float = 0) -> datetime | None:
    """An ISO timestamp as an aware time; a naive one is in the writer's zone (``utc_offset_seconds``)."""
    try:  # Python 3.10's fromisoformat does not read Kubernetes' "Z"
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:
        return None
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone(timedelta(seconds=utc_offset_seconds)))
    return moment


def _time_to_first_step(metrics: MetricsLog, since: datetime | None, offset: float) -> float | None:
    """Seconds from ``since`` to the first step written after it (a retry's job: its own first step)."""
    if since is None:
        return None
    for record in metrics.records:
        moment = _moment(record.timestamp, offset)
        if moment is not None and moment >= since:
            return (moment - since).total_seconds()
    return None


def _timed_tokens(metrics: MetricsLog, offset: float) -> tuple[float, int]:
    """The training time and the tokens trained in it: each stretch's first to last step, and
    the tokens of its steps after the first (the first one ended at the stretch's first timestamp)."""
    seconds, tokens = 0.0, 0
    for stretch in timed_stretches(metrics.records, metrics.resumes):
        first, last = _moment(stretch[0].timestamp, offset), _moment(stretch[-1].timestamp, offset)
        if first is not None and last is not None and last > first:
            seconds += (last - first).total_seconds()
            tokens += sum(record.tokens or 0 for record in stretch[1:])
    return seconds, tokens


def compute_efficiency(
    metrics: MetricsLog,
    facts: Mapping[str, Any],
    *,
    model_config: Mapping[str, Any] | None,
    job_created: str | None = None,
    gpu_hour_cost: float | None = None,
    max_seq_len: int | None = None,
) -> Efficiency:
    """The figures of one run (see the module's docstring); ``model_config`` is its ``config.json``.

    The attention term's sequence length is the run's mean sample length (its tokens over its
    samples): packed, padding-free samples attend within themselves, not over ``max_seq_len``,
    which is used only when the samples were not counted.
    """
    why: dict[str, str] = {}
    device = facts.get("device")
    offset = float(facts.get("timestamp_utc_offset_seconds") or 0)
    on_gpu = device == "cuda"
    num_gpus = None
    if on_gpu:
        num_gpus = int(facts.get("num_nodes") or 1) * int(facts.get("gpus_per_node") or 0) or None
    seconds, tokens = _timed_tokens(metrics, offset)
    training_seconds = seconds if seconds > 0 else None
    tokens_per_second = tokens / seconds if seconds > 0 and tokens else None
    if tokens_per_second is None:
        why["tokens_per_second"] = "fewer than two timed steps with token counts in the metrics"
    per_gpu = tokens_per_second / num_gpus if tokens_per_second is not None and num_gpus else None
    if not on_gpu:
        cpu_reason = "a CPU run: there is no GPU" if device == "cpu" else "the run did not record its device"
        for name in ("tokens_per_second_per_gpu", "mfu", "gpu_hours", "cost"):
            why[name] = cpu_reason

    parameters = flops = None
    if model_config is None:
        why.setdefault("mfu", "the model's config.json could not be read")
    else:
        samples = max((r.samples_seen or 0 for r in metrics.records), default=0)
        total_tokens = sum(r.tokens or 0 for r in metrics.records)
        seq_len = total_tokens / samples if samples and total_tokens else max_seq_len
        try:
            parameters = parameter_count(model_config)
            flops = training_flops_per_token(model_config, seq_len) if seq_len else None
            if flops is None:
                why.setdefault("mfu", "the run recorded neither its samples' lengths nor max_seq_len")
        except UnsupportedModelConfig as exc:
            why.setdefault("mfu", str(exc))
    peak, matched = peak_bf16_flops(facts.get("gpu_name")) if on_gpu else (None, "")
    if on_gpu and peak is None:
        why.setdefault("mfu", matched)
    mfu = per_gpu * flops / peak if per_gpu and flops and peak else None
    if mfu is None:
        why.setdefault("mfu", why.get("tokens_per_second", "no tokens/s per GPU"))

    gpu_hours = num_gpus * training_seconds / 3600 if num_gpus and training_seconds else None
    if on_gpu and gpu_hours is None:
        why["gpu_hours"] = "the run's GPU count or training time is unknown"
    cost = gpu_hours * gpu_hour_cost if gpu_hours is not None and gpu_hour_cost is not None else None
    if gpu_hour_cost is None:
        why["cost"] = "no gpu_hour_cost was given"
    elif cost is None:
        why.setdefault("cost", why.get("gpu_hours", "no GPU-hours"))

    since_from = FROM_JOB_CREATED if job_created else FROM_RUN_STARTED
    since = _moment(job_created or facts.get("started"))
    first_step = _time_to_first_step(metrics, since, offset)
    if first_step is None:
        why["time_to_first_step_seconds"] = (
            "neither the job's creation nor the run's start was recorded"
            if since is None
            else "no step was timed after it"
        )
    return Efficiency(
        device=device,
        gpu_name=facts.get("gpu_name"),
        num_gpus=num_gpus,
        training_seconds=training_seconds,
        tokens_per_second=tokens_per_second,
        tokens_per_second_per_gpu=per_gpu,
        model_parameters=parameters,
        flops_per_token=flops,
        peak_flops_per_gpu=peak,
        mfu=mfu,
        gpu_hours=gpu_hours,
        gpu_hour_cost=gpu_hour_cost,
        cost=cost,
        time_to_first_step_seconds=first_step,
        time_to_first_step_from=since_from if first_step is not None else None,
        not_available=why,
    )


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """A model directory's (or file's) ``config.json``; None when it cannot be read."""
    path = Path(path)
    try:
        config = jsonio.loads((path / "config.json" if path.is_dir() else path).read_bytes())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def run_efficiency(
    metrics: MetricsLog,
    *,
    model_dir: str | Path | None,
    job_created: str | None = None,
    gpu_hour_cost: float | None = None,
) -> Efficiency:
    """The efficiency of the run whose metrics JSONL was read into ``metrics``, its model at ``model_dir``."""
    config = read_model_config(model_dir) if model_dir is not None else None
    return compute_efficiency(
        metrics, metrics.facts, model_config=config, job_created=job_created, gpu_hour_cost=gpu_hour_cost
    )


# --- how the figures read -------------------------------------------------------------------


def _or_na(value: float | None, text: str) -> str:
    return "n/a" if value is None else text


def efficiency_parts(efficiency: Efficiency) -> list[str]:
    """The figures as short phrases, the same in the summary line and on the chart page:
    ``1234 tokens/s``, ``617 tokens/s per GPU``, ``MFU 41.2%``, ``3.20 GPU-hours``, ``cost 12.80``,
    ``first step after 95s (from job created)``; a figure without meaning reads ``n/a``."""
    e = efficiency
    parts = [
        f"{_or_na(e.tokens_per_second, f'{e.tokens_per_second or 0:.0f}')} tokens/s",
        f"{_or_na(e.tokens_per_second_per_gpu, f'{e.tokens_per_second_per_gpu or 0:.0f}')} tokens/s per GPU",
        f"MFU {_or_na(e.mfu, f'{(e.mfu or 0) * 100:.3g}%')}",
        f"GPU-hours {_or_na(e.gpu_hours, f'{e.gpu_hours or 0:.3g}')}",
    ]
    parts.append(f"cost {_or_na(e.cost, f'{e.cost or 0:.2f}')}")
    if e.time_to_first_step_seconds is not None:
        since = "job created" if e.time_to_first_step_from == FROM_JOB_CREATED else "run started"
        parts.append(f"first step {e.time_to_first_step_seconds:.0f}s after {since}")
    else:
        parts.append("time to first step n/a")
    return parts


def efficiency_rows(efficiency: Efficiency) -> Sequence[tuple[str, str, str]]:
    """``(figure, value, note)`` rows for the chart page's table; the note says why a value is n/a."""
    e, why = efficiency, efficiency.not_available
    gpu = f"{e.gpu_name} x {e.num_gpus}" if e.gpu_name and e.num_gpus else (e.device or "unknown")

    def row(label: str, key: str, value: float | None, text: str) -> tuple[str, str, str]:
        return (label, _or_na(value, text), why.get(key, "") if value is None else "")

    since = "job created" if e.time_to_first_step_from == FROM_JOB_CREATED else "run started"
    return [
        ("Device", gpu, ""),
        row("Tokens/s", "tokens_per_second", e.tokens_per_second, f"{e.tokens_per_second or 0:,.0f}"),
        row(
            "Tokens/s per GPU",
            "tokens_per_second_per_gpu",
            e.tokens_per_second_per_gpu,
            f"{e.tokens_per_second_per_gpu or 0:,.0f}",
        ),
        row("MFU", "mfu", e.mfu, f"{(e.mfu or 0) * 100:.3g}%"),
        row("GPU-hours", "gpu_hours", e.gpu_hours, f"{e.gpu_hours or 0:.3g}"),
        row("Cost", "cost", e.cost, f"{e.cost or 0:,.2f} ({e.gpu_hour_cost} per GPU-hour)"),
        row(
            "Time to first step",
            "time_to_first_step_seconds",
            e.time_to_first_step_seconds,
            f"{e.time_to_first_step_seconds or 0:.0f}s after {since}",
        ),
    ]
