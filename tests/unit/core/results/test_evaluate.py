"""The evaluation a new model gets: a reply to a held-out prompt, a held-out perplexity."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.results.evaluate import (
    DEFAULT_PROMPT,
    LoadedModel,
    bundled_held_out_path,
    evaluate_model,
    model_location,
    read_conversations,
)
from airflow_provider_sft.core.sample_data import bundled_dataset_path


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _turns(path):
    return {
        (m["role"], m["content"])
        for line in path.read_text().splitlines()
        if line.strip()
        for m in json.loads(line)["messages"]
        if m["role"] != "system"
    }


def test_the_bundled_held_out_file_shares_no_question_or_reply_with_the_training_data():
    held_out, training = _turns(bundled_held_out_path()), _turns(bundled_dataset_path())
    assert len(held_out) >= 20 and not held_out & training
    # the default prompt is in neither: its reply is logged, the held-out records never are
    assert not any(DEFAULT_PROMPT in content for _, content in training | held_out)


def test_the_perplexity_is_the_replies_alone_as_an_independent_count_gives_it(tiny_model, tmp_path):
    conversations = read_conversations(bundled_held_out_path())[:3]
    model = LoadedModel(str(tiny_model))
    total, tokens = model.negative_log_likelihood(conversations)
    # Independently: log-softmax of every position, summed over the reply's tokens only.
    expected_total, expected_tokens = 0.0, 0
    for messages in conversations:
        tokenizer = model.tokenizer
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        assert full.startswith(prompt)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        for position in range(start, len(ids)):
            expected_total -= log_probs[position - 1, ids[position]].item()
        expected_tokens += len(ids) - start
    assert tokens == expected_tokens
    assert total == pytest.approx(expected_total, rel=1e-4)


def test_evaluate_replies_and_reports_a_finite_perplexity(tiny_model, tmp_path):
    validation = tmp_path / "val.jsonl"
    lines = bundled_held_out_path().read_text().splitlines()[:4]
    validation.write_text("\n".join(lines) + "\n")
    result = evaluate_model(str(tiny_model), validation_file=validation, max_new_tokens=8)
    assert result.conversations == 4 and result.scored_tokens > 4
    assert math.isfinite(result.perplexity) and result.perplexity > 1
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))
    assert isinstance(result.reply, str) and result.prompt == DEFAULT_PROMPT
    assert evaluate_model(str(tiny_model), validation_file=validation, max_new_tokens=8).reply == result.reply
    assert set(result.to_dict()) == {
        "model",
        "prompt",
        "reply",
        "perplexity",
        "mean_nll",
        "scored_tokens",
        "conversations",
        "validation_file",
    }  # counts and the perplexity: no validation record leaves the module


def test_a_bad_validation_record_is_one_error_naming_the_field_and_line_not_its_text(tmp_path):
    validation = tmp_path / "val.jsonl"
    good = bundled_held_out_path().read_text().splitlines()[0]
    secret = "the-patient-record-text"
    validation.write_text(
        good + "\n" + json.dumps({"messages": [{"role": "user", "content": secret}]}) + "\n"
    )
    with pytest.raises(InvalidParameterError) as raised:
        read_conversations(validation)
    assert list(raised.value.errors) == ["validation_file"]
    assert "line 2" in str(raised.value) and secret not in str(raised.value)
    with pytest.raises(InvalidParameterError, match="validation_file"):
        read_conversations(tmp_path / "missing.jsonl")


def test_the_model_of_an_event_is_its_directory_here_else_what_was_published(tiny_model):
    assert model_location({"model_path": str(tiny_model), "model_uri": "hf://a/b@c"}) == (
        str(tiny_model),
        None,
    )
    assert model_location({"model_path": "/not/here", "model_uri": "hf://acme/tiny@0a1b2c"}) == (
        None,
        "hf://acme/tiny@0a1b2c",
    )
    assert model_location({"model_path": "/not/here", "model_uri": "s3://b/p/runs/r/"}) == (
        None,
        "s3://b/p/runs/r/",
    )
    pods_path = {"model_path": str(tiny_model), "exported_uri": "pvc://ws/runs/r/final_model"}
    assert model_location({**pods_path, "model_uri": "s3://b/p/runs/r/"}) == (None, "s3://b/p/runs/r/")
    with pytest.raises(InvalidParameterError) as raised:
        model_location({"model_path": "/not/here", "model_uri": "/elsewhere/final_model"})
    assert list(raised.value.errors) == ["model"]


def test_the_evaluate_task_logs_the_reply_never_a_validation_record(tiny_model, tmp_path, capsys, caplog):
    from airflow_provider_sft.operators.evaluate import EvaluateModelOperator

    op = EvaluateModelOperator(task_id="evaluate", model=str(tiny_model), max_new_tokens=8)
    with caplog.at_level(logging.DEBUG):
        result = op.execute({"triggering_asset_events": {}})
    shown = capsys.readouterr().out + "\n".join(r.getMessage() for r in caplog.records)
    assert f"Perplexity on chat_sft_heldout.jsonl: {result['perplexity']:.4f}" in shown
    assert repr(result["reply"]) in shown
    for role, content in _turns(bundled_held_out_path()):
        assert content not in shown, (role, content)


def test_the_evaluate_task_without_a_model_or_an_event_names_the_field():
    from airflow_provider_sft.compat import AirflowFailException
    from airflow_provider_sft.operators.evaluate import EvaluateModelOperator

    op = EvaluateModelOperator(task_id="evaluate")
    with pytest.raises(AirflowFailException, match="model"):
        op.execute({"triggering_asset_events": {}})  # a manual run of a DAG without the alias as an inlet
