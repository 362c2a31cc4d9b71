"""PrepareDataOperator's parameters: checked before any work, and the gate's share everywhere it is read."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.training.data_report import checked_max_dropped_fraction
from airflow_provider_sft.operators import PrepareDataOperator, ValidateRunOperator

CONTEXT = {"ti": SimpleNamespace(dag_id="d", task_id="prepare_data", map_index=-1), "run_id": "manual__x"}


@pytest.mark.parametrize("value", [-0.1, 1.5, "lots", float("nan"), True, [0.1]])
def test_a_share_outside_0_to_1_is_refused_naming_the_field(value):
    with pytest.raises(InvalidParameterError, match="max_dropped_fraction: must be a number from 0 to 1"):
        checked_max_dropped_fraction(value)


@pytest.mark.parametrize(
    ("value", "share"), [(None, c.DEFAULT_MAX_DROPPED_FRACTION), ("", 0.02), ("0.1", 0.1), (1, 1.0)]
)
def test_a_share_from_a_form_or_conf_is_read(value, share):
    assert checked_max_dropped_fraction(value) == share


def test_a_bad_share_fails_the_prepare_task_before_any_work(tmp_path):
    op = PrepareDataOperator(
        task_id="prepare_data",
        dataset_path=str(tmp_path / "missing.jsonl"),
        workspace=str(tmp_path),
        max_dropped_fraction=3,
    )
    with pytest.raises(InvalidParameterError, match="max_dropped_fraction") as caught:
        op.execute(CONTEXT)
    assert type(caught.value).__name__ == "FinalInvalidParameterError"  # not retried
    assert list(tmp_path.iterdir()) == []  # touched nothing


def test_a_bad_training_parameter_fails_the_prepare_task_naming_it(tmp_path):
    op = PrepareDataOperator(
        task_id="prepare_data", dataset_path="d.jsonl", workspace=str(tmp_path), max_seq_len=0
    )
    with pytest.raises(InvalidParameterError, match="max_seq_len"):
        op.execute(CONTEXT)
    assert list(tmp_path.iterdir()) == []


def test_validate_names_a_bad_share_with_the_other_problems(tmp_path):
    op = ValidateRunOperator(
        task_id="validate",
        training={"num_epochs": 0},
        workspace=str(tmp_path),
        max_dropped_fraction="2",
        resume="sometimes",
    )
    problems = op.problems({}, [])
    assert set(problems) >= {"num_epochs", "max_dropped_fraction", "resume"}


def test_a_bad_job_size_is_refused_naming_the_field(tmp_path):
    op = PrepareDataOperator(
        task_id="prepare_data", dataset_path="d.jsonl", workspace=str(tmp_path), cpu="four", memory="-1Gi"
    )
    with pytest.raises(InvalidParameterError) as caught:
        op.execute(CONTEXT)
    assert set(caught.value.errors) == {"cpu", "memory"} and list(tmp_path.iterdir()) == []
