"""The model card: its Hub metadata header (read back by ``huggingface_hub.ModelCard``) and what
its body says, for a complete run, an older run without run_config.json or metrics, and a run
with validation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import airflow_provider_sft
from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.results.metrics import read_metrics_log, summarize_log
from airflow_provider_sft.core.results.model_card import model_card
from airflow_provider_sft.core.run import TrainingRun
from tests.unit.core.results.test_metrics import HPARAMS, step, write_lines
from tests.unit.core.results.test_validation_results import run_with_validation

PROGRAM_SHA = "a" * 64
DATASET_SHA = "b" * 64
FACTS = {
    "hparams": True,
    "sft_run_facts": True,
    "device": "cuda",
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "num_nodes": 2,
    "gpus_per_node": 8,
    "started": "2026-12-01T10:00:00+00:00",
    "provider_version": "0.0.9",  # what trained it: not the version exporting it
    "program_sha256": PROGRAM_SHA,
    "dataset": {"source": "hf://acme/chat", "path": "/ws/runs/r/dataset/train.jsonl", "sha256": DATASET_SHA},
}
DATA_REPORT = {
    "input_samples": 235,
    "kept_samples": 230,
    "dropped_too_short": 4,
    "dropped_too_long": 1,
    "total_tokens": 51234,
    "label_tokens": 20001,
    "max_sample_tokens": 900,
    "max_seq_len": 512,
    "min_seq_len": 20,
    "suggested_max_seq_len": 640,
    "effective_batch_size": 16,
    "num_epochs": 2,
    "steps_per_epoch": 15,
    "total_steps": 30,
    "histogram": {"edges": [0, 256, 512, 768], "counts": [200, 30, 5]},
    "processed_path": "/ws/runs/r/data/data.jsonl",
    "percentiles": {"p50": 180, "p95": 470},
    "dropped_samples": 5,
}
EFFICIENCY = {
    "device": "cuda",
    "gpu_hours": 3.25,
    "training_seconds": 731.5,
    "tokens_per_second": 70.04,
    "mfu": 0.41,
    "cost": None,
    "not_available": {"cost": "no gpu_hour_cost given"},
}
PARAMS = {
    "base_model": "Qwen/Qwen2.5-1.5B-Instruct",
    "num_epochs": 2,
    "effective_batch_size": 16,
    "learning_rate": 3e-5,
    "max_seq_len": 512,
    "envs": {"WANDB_API_KEY": "secret-value"},
}


def write_run(run_dir: Path, params: dict | None = PARAMS) -> Path:
    """A run directory as the local backend leaves it: run_config.json (TrainingRun's own
    writer) and a metrics JSONL."""
    run_dir.mkdir(parents=True)
    if params is not None:
        TrainingRun(
            name=run_dir.name,
            params=SFTParams.parse(params),
            dataset_path=str(run_dir / c.DATASET_DIR / "train.jsonl"),
            output_dir=str(run_dir),
        ).write_config()
    return run_dir


def card_of(run_dir: Path, metrics_lines: list | None, **kwargs) -> str:
    summary = {}
    facts = kwargs.pop("facts", None)
    if metrics_lines is not None:
        metrics = read_metrics_log(write_lines(run_dir / c.METRICS_FILE, metrics_lines))
        summary = summarize_log(metrics).to_dict()
        facts = metrics.facts if facts is None else facts
    return model_card(
        run_dir,
        summary=summary,
        data_report=kwargs.get("data_report"),
        efficiency=kwargs.get("efficiency"),
        facts=facts,
    )


def test_a_full_card_has_the_hub_header_and_every_fact_of_the_run(tmp_path):
    run = write_run(tmp_path / "runs" / "full-run")
    lines = [HPARAMS, FACTS, *(step(n, 3.0 - 0.1 * n) for n in range(1, 11))]
    text = card_of(run, lines, data_report=DATA_REPORT, efficiency=EFFICIENCY)
    card = ModelCard(text)  # the Hub client's own parser of the header

    assert card.data.library_name == "transformers"
    assert card.data.base_model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert card.data.datasets == ["acme/chat"]
    assert {"sft", "airflow-provider-sft"} <= set(card.data.tags)
    assert card.data.eval_results is None  # no validation: no model-index
    body = card.text
    for name in SFTParams.parse(PARAMS).to_json_dict():  # every parameter, defaults included
        assert f"| `{name}` |" in body, name
    assert "secret-value" not in text  # training_envs values are masked in run_config.json
    assert f"| Dataset sha256 | {DATASET_SHA} |" in body
    assert "| Dataset source | hf://acme/chat |" in body
    assert f"| Training program sha256 | {PROGRAM_SHA} |" in body
    assert "| Trained by airflow-provider-sft | 0.0.9 |" in body
    assert f"| Exported by airflow-provider-sft | {airflow_provider_sft.__version__} |" in body
    assert "| Device | cuda: NVIDIA H100 80GB HBM3, 2 node(s) x 8 GPU(s) |" in body
    assert "| Final loss | 2 |" in body and "| Steps | 10 |" in body and "| Tokens | 1000 |" in body
    smoothed = summarize_log(read_metrics_log(run / c.METRICS_FILE)).final_loss_smoothed
    assert f"| Final loss, smoothed (EMA) | {smoothed:.4g} |" in body
    assert "| GPU-hours | 3.25 |" in body and "| MFU | 0.41 |" in body
    assert "| Cost | n/a (no gpu_hour_cost given) |" in body
    assert "| Validation loss | none measured (no validation_split) |" in body
    assert "| Kept samples | 230 |" in body and "| Suggested max_seq_len | 640 |" in body
    assert "| 256-511 | 30 |" in body  # the histogram


def test_a_validation_loss_becomes_a_model_index_result_the_hub_reads(tmp_path):
    run = write_run(tmp_path / "runs" / "with-validation")
    lines = [json.loads(line) for line in run_with_validation(tmp_path / "m.jsonl").read_text().splitlines()]
    card = ModelCard(card_of(run, [FACTS, *lines], data_report=DATA_REPORT, efficiency=EFFICIENCY))
    loss, perplexity = card.data.eval_results
    assert (loss.metric_type, loss.metric_value, loss.dataset_type) == ("loss", 1.7, "acme/chat")
    assert (loss.task_type, loss.dataset_split) == ("text-generation", "validation")
    assert perplexity.metric_value == pytest.approx(math.exp(1.7), rel=1e-4)
    assert card.data.model_name == "with-validation"
    assert "| Validation loss | 1.7 at step 12 (best 1.5 at step 8) |" in card.text


def test_an_older_run_without_run_config_or_facts_says_what_is_unknown(tmp_path):
    run = write_run(tmp_path / "runs" / "old-run", params=None)
    card = ModelCard(card_of(run, [HPARAMS, step(1, 2.5), step(2, 2.25)]))
    assert card.data.base_model is None and card.data.datasets is None
    assert card.data.library_name == "transformers"
    body = card.text
    assert "| Base model | unknown (the run has no run_config.json) |" in body
    assert "Unknown: the run has no run_config.json" in body
    assert "| Dataset sha256 | unknown (not recorded by this run) |" in body
    assert "| Training program sha256 | unknown (not recorded) |" in body
    assert "| Trained by airflow-provider-sft | unknown (not recorded) |" in body
    assert "Unknown: the run has no data report" in body
    assert "| Final loss | 2.25 |" in body and "| GPU-hours | n/a |" in body


def test_a_run_without_metrics_gets_a_card_that_says_so(tmp_path):
    run = write_run(tmp_path / "runs" / "no-metrics")
    card = ModelCard(card_of(run, None))
    assert card.data.base_model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert "Unknown: the run recorded no training metrics (no loss, tokens or GPU-hours)." in card.text
    assert "| `learning_rate` | 0.00003 |" in card.text


def test_a_local_base_model_is_named_in_the_body_but_not_as_a_hub_id(tmp_path):
    base = tmp_path / "models" / "llama"
    base.mkdir(parents=True)
    run = write_run(tmp_path / "runs" / "local-base", params={**PARAMS, "base_model": str(base)})
    facts = {**FACTS, "dataset": {"source": "s3://bucket/train.jsonl", "sha256": DATASET_SHA}}
    card = ModelCard(card_of(run, [HPARAMS, step(1, 2.0)], facts=facts))
    assert card.data.base_model is None and card.data.datasets is None
    assert (
        f"Fine-tuned from `{base}`" in card.text
        and "| Dataset source | s3://bucket/train.jsonl |" in card.text
    )


def test_the_card_holds_no_training_data(tmp_path):
    run = write_run(tmp_path / "runs" / "private-data")
    dataset = run / c.DATASET_DIR / "train.jsonl"
    dataset.parent.mkdir()
    dataset.write_text(
        json.dumps({"messages": [{"role": "user", "content": "the-patient-record-42"}]}) + "\n"
    )
    text = card_of(run, [HPARAMS, FACTS, step(1, 2.0)], data_report=DATA_REPORT, efficiency=EFFICIENCY)
    assert "the-patient-record-42" not in text


def test_a_hub_dataset_with_a_revision_and_a_split_is_named_by_its_id(tmp_path):
    run = write_run(tmp_path / "runs" / "pinned-run")
    facts = {**FACTS, "dataset": {**FACTS["dataset"], "source": "hf://acme/chat@v2:train"}}
    text = card_of(run, [HPARAMS, facts, step(1, 2.0)])
    assert ModelCard(text).data.datasets == ["acme/chat"]  # what the Hub links; the body keeps the pin
    assert "hf://acme/chat@v2:train" in text
