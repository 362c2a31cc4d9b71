"""Efficiency figures: the FLOPs formula against a hand calculation, the peak table, MFU, GPU-hours,
cost, the time to the first step, and n/a (with its reason) where a figure has no meaning."""

from __future__ import annotations

import json
import math

import pytest

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.results.efficiency import (
    FROM_JOB_CREATED,
    FROM_RUN_STARTED,
    Efficiency,
    checked_gpu_hour_cost,
    compute_efficiency,
    efficiency_parts,
    parameter_count,
    peak_bf16_flops,
    training_flops_per_token,
)
from airflow_provider_sft.core.results.metrics import MetricsLog, StepRecord, read_metrics_log, summarize
from airflow_provider_sft.core.training.progress import summary_line

# The tiny model's config numbers (core/training/tiny_model.py's defaults), checked below
# against the config.json it really writes.
VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE = 512, 256, 4, 4, 2, 64, 512

# N by hand: tied embeddings once; per layer q, k, v, o, the gated MLP and two RMSNorms; the final norm.
EMBEDDINGS = 512 * 256  # 131_072
Q_AND_O = 2 * (256 * (4 * 64))  # 131_072
K_AND_V = 2 * (256 * (2 * 64))  # 65_536
MLP = 3 * (256 * 512)  # 393_216
NORMS = 2 * 256  # 512
PER_LAYER = Q_AND_O + K_AND_V + MLP + NORMS  # 590_336
TINY_N = EMBEDDINGS + 4 * PER_LAYER + 256  # 2_492_672


def tiny_config() -> dict:
    return {
        "model_type": "llama",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "intermediate_size": INTERMEDIATE,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
    }


def test_the_tiny_models_parameters_and_flops_per_token_match_a_hand_calculation(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert {key: config[key] for key in tiny_config()} == tiny_config()  # the numbers the hand sums use
    assert TINY_N == 2_492_672
    assert parameter_count(config) == TINY_N
    # ... and the real model agrees: the count is what torch holds, not a formula checked by itself.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sum(p.numel() for p in model.parameters()) == TINY_N
    # PaLM appendix B: 6N + 12 * layers * hidden * seq_len, at seq_len 512:
    by_hand = 6 * 2_492_672 + 12 * 4 * 256 * 512  # 14_956_032 + 6_291_456
    assert by_hand == 21_247_488
    assert training_flops_per_token(config, 512) == by_hand


def test_untied_embeddings_biases_and_qwen2_are_counted_as_torch_counts_them():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    small = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2}
    heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
    for config in (
        LlamaConfig(**small, **heads, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
        Qwen2Config(**small, **heads, tie_word_embeddings=False),
    ):
        model = (LlamaForCausalLM if config.model_type == "llama" else Qwen2ForCausalLM)(config)
        assert parameter_count(config.to_dict()) == sum(p.numel() for p in model.parameters())


def test_a_mixture_of_experts_or_an_incomplete_config_is_not_counted():
    with pytest.raises(ValueError, match="mixture-of-experts"):
        parameter_count({**tiny_config(), "num_local_experts": 8})
    with pytest.raises(ValueError, match="'hidden_size'"):
        parameter_count({key: value for key, value in tiny_config().items() if key != "hidden_size"})


@pytest.mark.parametrize(
    ("device_name", "tflops", "row"),
    [
        ("NVIDIA H100 80GB HBM3", 989.5, "H100 SXM"),
        ("NVIDIA H100 PCIe", 756.5, "H100 PCIe"),
        ("NVIDIA H100 NVL", 835.5, "H100 NVL"),
        ("NVIDIA H200", 989.5, "H200 SXM"),
        ("NVIDIA H200 NVL", 835.5, "H200 NVL"),
        ("NVIDIA GH200 480GB", 989.5, "GH200"),
        ("NVIDIA A100-SXM4-80GB", 312.0, "A100"),
        ("NVIDIA A100-SXM4-40GB", 312.0, "A100"),
        ("NVIDIA A100-PCIE-40GB", 312.0, "A100"),
        ("NVIDIA A100 80GB PCIe", 312.0, "A100"),
        ("NVIDIA B200", 2250.0, "B200"),
        ("NVIDIA L40S", 362.05, "L40S"),
        ("NVIDIA L40", 181.05, "L40"),
        ("NVIDIA L4", 121.0, "L4"),
        ("NVIDIA A10", 125.0, "A10"),
        ("AMD Instinct MI300X", 1307.4, "MI300X"),
    ],
)
def test_the_peak_is_found_by_the_name_torch_reports(device_name, tflops, row):
    assert peak_bf16_flops(device_name) == (tflops * 1e12, row)


@pytest.mark.parametrize(
    ("device_name", "why"),
    [
        ("NVIDIA A10G", "NVIDIA A10G is not in the table"),  # AWS's part: no NVIDIA datasheet
        ("NVIDIA GeForce RTX 4090", "is not in the table of peak BF16 throughputs (B200, GH200"),
        ("Tesla V100-SXM2-16GB", "has no BF16 tensor cores"),
        (None, "did not record its GPU's name"),
    ],
)
def test_an_unknown_gpu_has_no_peak_and_says_why(device_name, why):
    peak, reason = peak_bf16_flops(device_name)
    assert peak is None and why in reason


def step(n: int, *, second: int, tokens: int, samples_seen: int) -> StepRecord:
    return StepRecord(
        step=n,
        epoch=0,
        loss=1.0,
        lr=1e-5,
        samples_seen=samples_seen,
        tokens=tokens,
        throughput=None,
        timestamp=f"2026-12-06T01:00:{second:02d}.000000",
    )


def h100_run() -> MetricsLog:
    """Five steps 10 s apart, 160_000 tokens and 320 samples each (samples of 500 tokens on average)."""
    return MetricsLog(
        [step(n, second=10 * n, tokens=160_000, samples_seen=320 * n) for n in range(1, 6)], 0, []
    )


H100_FACTS = {
    "device": "cuda",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "num_nodes": 2,
    "gpus_per_node": 8,
    "started": "2026-12-06T00:59:30+00:00",
    "timestamp_utc_offset_seconds": 0,
}


def test_mfu_gpu_hours_and_cost_of_a_two_node_h100_run_match_a_hand_calculation():
    efficiency = compute_efficiency(
        h100_run(),
        H100_FACTS,
        model_config=tiny_config(),
        job_created="2026-12-06T00:59:00Z",
        gpu_hour_cost=3.0,
    )
    # Timed: steps 2..5 (step 1 ended at the first timestamp), 40 s.
    assert efficiency.training_seconds == 40.0
    assert efficiency.tokens_per_second == 4 * 160_000 / 40  # 16_000
    assert efficiency.num_gpus == 2 * 8
    assert efficiency.tokens_per_second_per_gpu == 16_000 / 16  # 1_000
    # The attention term's length: 800_000 tokens over 1_600 samples = 500.
    flops_per_token = 6 * 2_492_672 + 12 * 4 * 256 * 500  # 21_100_032
    assert efficiency.flops_per_token == flops_per_token
    assert efficiency.peak_flops_per_gpu == 989.5e12
    assert efficiency.mfu == pytest.approx(1_000 * 21_100_032 / 989.5e12, rel=1e-12)
    assert efficiency.gpu_hours == pytest.approx(16 * 40 / 3600)
    assert efficiency.cost == pytest.approx(16 * 40 / 3600 * 3.0)
    assert efficiency.time_to_first_step_seconds == 70.0  # 00:59:00Z -> 01:00:10
    assert efficiency.time_to_first_step_from == FROM_JOB_CREATED
    assert efficiency.not_available == {}


def test_without_the_jobs_creation_the_first_step_counts_from_the_runs_start_in_the_writers_zone():
    # instructlab writes the pod's local time: a pod two hours east of UTC wrote 03:00:10 at 01:00:10Z.
    run = MetricsLog(
        [
            StepRecord(n, 0, 1.0, 1e-5, 320 * n, 160_000, None, f"2026-12-06T03:00:{10 * n:02d}")
            for n in range(1, 6)
        ],
        0,
        [],
    )
    facts = {**H100_FACTS, "timestamp_utc_offset_seconds": 7200}
    efficiency = compute_efficiency(run, facts, model_config=tiny_config())
    assert efficiency.time_to_first_step_seconds == 40.0  # 00:59:30Z -> 01:00:10Z
    assert efficiency.time_to_first_step_from == FROM_RUN_STARTED
    assert efficiency.cost is None and efficiency.not_available["cost"] == "no gpu_hour_cost was given"


def test_a_resumed_run_does_not_count_the_wait_between_its_stretches():
    records = [step(n, second=10 * n, tokens=160_000, samples_seen=320 * n) for n in range(1, 4)]
    later = [
        StepRecord(n, 0, 1.0, 1e-5, 320 * n, 160_000, None, f"2026-12-06T02:00:{10 * n:02d}") for n in (4, 5)
    ]
    resumed = MetricsLog(records + later, 0, [{"step": 3, "samples_seen": 960}])
    efficiency = compute_efficiency(resumed, H100_FACTS, model_config=tiny_config())
    assert efficiency.training_seconds == 20.0 + 10.0  # not the hour between
    assert efficiency.tokens_per_second == (2 * 160_000 + 1 * 160_000) / 30.0


def test_a_cpu_run_reports_tokens_per_second_and_n_a_with_the_reason_elsewhere():
    facts = {"device": "cpu", "gpu_name": None, "num_nodes": 1, "gpus_per_node": 0}
    efficiency = compute_efficiency(h100_run(), facts, model_config=tiny_config(), gpu_hour_cost=2.0)
    assert efficiency.tokens_per_second == 16_000
    for figure in ("tokens_per_second_per_gpu", "mfu", "gpu_hours", "cost"):
        assert getattr(efficiency, figure) is None
        assert efficiency.not_available[figure] == "a CPU run: there is no GPU"
    data = efficiency.to_dict()
    assert json.loads(json.dumps(data))["mfu"] is None  # null in metrics.json
    assert Efficiency.from_dict(data) == efficiency
    parts = efficiency_parts(efficiency)
    assert parts[:5] == [
        "16000 tokens/s",
        "n/a tokens/s per GPU",
        "MFU n/a",
        "GPU-hours n/a",
        "cost n/a",
    ]


def test_an_unknown_gpu_makes_mfu_n_a_and_keeps_the_other_figures():
    facts = {**H100_FACTS, "gpu_name": "NVIDIA GeForce RTX 4090"}
    efficiency = compute_efficiency(h100_run(), facts, model_config=tiny_config())
    assert efficiency.mfu is None
    assert efficiency.not_available["mfu"].startswith("NVIDIA GeForce RTX 4090 is not in the table")
    assert efficiency.tokens_per_second_per_gpu == 1_000 and efficiency.gpu_hours is not None


def test_the_summary_line_ends_with_the_efficiency_figures():
    efficiency = compute_efficiency(
        h100_run(),
        H100_FACTS,
        model_config=tiny_config(),
        job_created="2026-12-06T00:59:00Z",
        gpu_hour_cost=3,
    )
    line = summary_line(summarize(h100_run().records), efficiency)
    assert line.endswith(
        "; 16000 tokens/s, 1000 tokens/s per GPU, MFU 0.00213%, GPU-hours 0.178, cost 0.53, "
        "first step 70s after job created"
    )


def test_the_run_facts_line_is_read_back_from_the_metrics_file_and_skipped_as_a_step(tmp_path):
    from datetime import datetime, timezone

    from airflow_provider_sft.core.results.efficiency import facts_record

    path = tmp_path / "metrics.jsonl"
    started = datetime(2026, 12, 6, 1, 0, tzinfo=timezone.utc)
    lines = [
        {"hparams": True, "model_name_or_path": "m"},
        facts_record(device="cuda", gpu_name="NVIDIA H200", num_nodes=1, gpus_per_node=4, started=started),
        {"step": 1, "epoch": 0, "avg_loss": 2.0, "num_tokens_rank0": 10, "timestamp": "2026-12-06T01:00:01"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = read_metrics_log(path)  # one read: the steps and the facts line
    facts = metrics.facts
    assert facts["gpu_name"] == "NVIDIA H200" and facts["gpus_per_node"] == 4
    assert facts["started"] == "2026-12-06T01:00:00+00:00"
    assert [record.step for record in metrics.records] == [1]


@pytest.mark.parametrize("value", [-1, "-0.5", "cheap", math.nan, math.inf, True, [1]])
def test_a_negative_or_non_number_gpu_hour_cost_is_refused_naming_the_field(value):
    with pytest.raises(InvalidParameterError, match="gpu_hour_cost") as error:
        checked_gpu_hour_cost(value)
    assert "must be a number >= 0" in error.value.errors["gpu_hour_cost"]


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), (0, 0.0), ("2.5", 2.5), (4, 4.0)])
def test_a_gpu_hour_cost_is_a_number_or_empty(value, expected):
    assert checked_gpu_hour_cost(value) == expected
