"""One DAG run, one run directory, with a name a person can tell apart from the next run's."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from airflow.sdk import DAG

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.run import dag_run_name, readable_run_id
from airflow_provider_sft.operators import ResolveDatasetOperator, SFTTrainOperator
from airflow_provider_sft.operators.workspace import dag_run_dir_name

DNS_1123 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DECEMBER = [f"manual__2026-12-{day:02d}T09:06:04.123456+00:00" for day in (1, 5, 31)]


def context(task_id: str, run_id: str = DECEMBER[0], map_index: int = -1) -> dict:
    return {
        "ti": SimpleNamespace(dag_id="sft_pipeline", task_id=task_id, map_index=map_index),
        "run_id": run_id,
    }


def test_december_runs_have_distinct_readable_names():
    names = [dag_run_name("sft_pipeline", run_id) for run_id in DECEMBER]
    readable = [name.rsplit("-", 1)[0] for name in names]
    assert readable[0].startswith("manual-20261201-090604")  # kind, date and time, not "manual-2026-12-0"
    assert len(set(readable)) == 3
    assert all(DNS_1123.match(name) and len(name) <= 40 for name in names)
    # Airflow 3's run id of a run without a logical date ends in a random suffix: still distinct.
    assert dag_run_name("d", DECEMBER[0] + "_AbCdEfGh") != dag_run_name("d", DECEMBER[0] + "_XyZaBcDe")
    assert readable_run_id("scheduled__2026-12-05T00:00:00+00:00") == "scheduled-20261205-000000"
    assert readable_run_id("my own id") == "my own id"  # a REST caller's id stays as it is


def test_a_step_job_never_takes_the_training_job_name_and_a_mapped_run_is_its_own():
    run = dag_run_name("sft_pipeline", DECEMBER[0])
    assert dag_run_name("sft_pipeline", DECEMBER[0], step="resolve_dataset") != run
    assert dag_run_name("sft_pipeline", DECEMBER[0], 0) != dag_run_name("sft_pipeline", DECEMBER[0], 1) != run
    assert "-m1-" in dag_run_name("sft_pipeline", DECEMBER[0], 1)


def test_the_example_dag_keeps_dataset_and_training_in_one_run_directory(tmp_path):
    from airflow_provider_sft.example_dags.sft_pipeline import dag

    resolve, train = dag.get_task("resolve_dataset"), dag.get_task("train")
    directory = dag_run_dir_name(resolve, context("resolve_dataset"))
    assert dag_run_dir_name(train, context("train")) == directory
    train.workspace, train.backend, train.dataset_path = str(tmp_path), "local", "d.jsonl"
    for name in SFTTrainOperator.template_fields:  # the unrendered templates as values
        if isinstance(getattr(train, name), str) and "{{" in getattr(train, name):
            setattr(train, name, None)
    run = train.build_run(context("train"))
    assert Path(run.output_dir) == tmp_path / c.RUNS_DIR / directory
    # the prepare task writes where the training process reads the processed data
    prepare = dag.get_task("prepare_data")
    prepare.workspace, prepare.backend, prepare.data_output_dir = str(tmp_path), "local", None
    prepare.base_model, prepare.max_seq_len, prepare.effective_batch_size, prepare.num_epochs = "m", 512, 8, 1
    assert prepare.step_settings(context("prepare_data"))["processed_dir"] == run.processed_data_dir


def test_two_trainings_in_one_dag_get_a_directory_each():
    with DAG("two_trainings", schedule=None):
        first = SFTTrainOperator(task_id="train_small", dataset_path="d", workspace="/w")
        second = SFTTrainOperator(task_id="train_large", dataset_path="d", workspace="/w")
        dataset = ResolveDatasetOperator(task_id="resolve", source="bundled", workspace="/w")
    names = {dag_run_dir_name(op, context(op.task_id)) for op in (first, second)}
    assert len(names) == 2
    assert dag_run_dir_name(dataset, context("resolve")) not in names  # one resolve: the DAG run's own
