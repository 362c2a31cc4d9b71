"""Run names and the device plan (what a machine can honour, checked before any work)."""

from __future__ import annotations

import re

import pytest

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import Device, TrainingRun, max_run_name_length, plan_device, run_name

DNS_1123 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_run_name_is_deterministic_dns_safe_and_distinct():
    a = run_name("my_dag", "manual__2026-11-25T20:21:33+00:00", "train", -1)
    assert a == run_name("my_dag", "manual__2026-11-25T20:21:33+00:00", "train", -1)
    assert DNS_1123.match(a) and len(a) <= 40  # room for JobSet pod-name suffixes
    assert a != run_name("my_dag", "manual__2026-11-25T20:21:33+00:00", "train", 0)
    long = run_name("d" * 200, "r" * 200, "t", 3)
    assert len(long) <= 40 and DNS_1123.match(long)
    assert DNS_1123.match(run_name("1dag", "__", "T", None))
    # Sanitising to the same text never makes two runs collide.
    assert run_name("a_b", "r", "t") != run_name("a-b", "r", "t")


def test_training_run_round_trips_through_its_config(tmp_path):
    params = SFTParams.parse({"learning_rate": 1e-4, "envs": "A=1", "lr_scheduler": "linear"})
    run = TrainingRun("n", params, "/data.jsonl", str(tmp_path / "out"), Device.CPU)
    again = TrainingRun.read_config(run.write_config())
    assert again.params.model_dump(exclude={"envs"}) == run.params.model_dump(exclude={"envs"})
    assert (again.name, again.dataset_path, again.output_dir, again.device) == (
        "n",
        "/data.jsonl",
        run.output_dir,
        Device.CPU,
    )
    assert again.params.envs == {"A": "***"}  # env values never reach files
    assert run.processed_data_dir == str(tmp_path / "out" / "data")


def test_env_values_are_masked_wherever_params_are_serialised():
    params = SFTParams.parse({"envs": "HF_TOKEN=hf_secret123,MODE=fast"})
    assert "hf_secret123" not in str(params.to_json_dict())
    assert params.envs["HF_TOKEN"] == "hf_secret123"  # the process environment still gets it


def plan(cuda=0, cpus=2, **values):
    return plan_device(SFTParams.parse(values), requested=Device.AUTO, cuda_devices=cuda, cpu_count=cpus)


def test_cpu_plan_uses_the_cpu_quantity_for_threads():
    assert plan(resource_gpu_per_worker=0, resource_cpu_per_worker="500m").cpu_threads == 1
    assert plan(resource_gpu_per_worker=0, resource_cpu_per_worker="4", cpus=2).cpu_threads == 2
    assert plan(resource_gpu_per_worker=0).device is Device.CPU


def test_cuda_plan():
    result = plan(cuda=8, resource_gpu_per_worker=4)
    assert (result.device, result.processes) == (Device.CUDA, 4)
    assert plan(cuda=8, resource_gpu_per_worker=4, resource_num_procs_per_worker=2).processes == 2


@pytest.mark.parametrize(
    ("values", "cuda", "name", "message"),
    [
        pytest.param(
            {}, 0, "resource_gpu_per_worker", "0 CUDA device(s); set it to 0", id="gpu-on-cpu-machine"
        ),
        pytest.param(
            {"resource_gpu_per_worker": 4}, 2, "resource_gpu_per_worker", "only 2 CUDA", id="too-many-gpus"
        ),
        pytest.param(
            {"resource_gpu_per_worker": 0, "use_liger": True}, 0, "use_liger", "need CUDA", id="liger-on-cpu"
        ),
        pytest.param(
            {"resource_gpu_per_worker": 0, "resource_num_procs_per_worker": 2},
            0,
            "resource_num_procs_per_worker",
            "one process",
            id="procs-on-cpu",
        ),
    ],
)
def test_plan_rejects_what_the_machine_cannot_honour(values, cuda, name, message):
    with pytest.raises(InvalidParameterError) as info:
        plan(cuda=cuda, **values)
    assert message in info.value.errors[name]


def test_pod_metadata_on_a_local_run_is_reported_not_dropped_silently():
    notes = plan(resource_gpu_per_worker=0, metadata_labels="team=ml").notes
    assert any("metadata_labels" in note for note in notes)


def jobset_longest_pod_name(jobset: str, replicated_job: str, replicas: int, completions: int) -> str:
    """kubernetes-sigs/jobset's webhook: placement.GenPodName(...) + "-abcde" of the last pod."""
    return f"{jobset}-{replicated_job}-{replicas - 1}-{completions - 1}-abcde"


@pytest.mark.parametrize(("nodes", "limit"), [(1, 48), (10, 48), (11, 47), (100, 47), (101, 46)])
def test_a_run_name_is_refused_before_submission_when_its_pod_names_would_not_fit(nodes, limit):
    """JobSet refuses a pod name over 63 characters after the TrainJob was admitted: 48
    characters and 11 nodes made ``<name>-node-0-10-abcde`` of 64."""
    params = SFTParams.parse({"resource_num_workers": nodes})
    fits = "r" * limit
    assert len(jobset_longest_pod_name(fits, "node", 1, nodes)) == 63
    TrainingRun(fits, params, "/d.jsonl", "/out")
    with pytest.raises(InvalidParameterError) as info:
        TrainingRun(fits + "x", params, "/d.jsonl", "/out")
    assert list(info.value.errors) == ["run_name"]
    message = info.value.errors["run_name"]
    assert (
        f"at most {limit} characters" in message
        and jobset_longest_pod_name(fits + "x", "node", 1, nodes) in message
    )
    assert ("resource_num_workers" in message) is (nodes > 1)


def test_pytorchjob_pod_and_service_names_fit_whenever_the_run_name_does():
    """The Training Operator names them ``<name>-master-0`` and ``<name>-worker-<i>``."""
    for nodes in (1, 2, 11, 1000):
        name = "r" * max_run_name_length(nodes)
        assert len(f"{name}-master-0") <= 63 and len(f"{name}-worker-{nodes - 2}") <= 63


def test_a_cpu_run_mentions_fsdp_only_when_a_sharding_was_chosen():
    """The default HYBRID_SHARD is not a choice the person made: no note on every CPU run."""
    assert not any("fsdp" in note for note in plan(resource_gpu_per_worker=0).notes)
    chosen = plan(resource_gpu_per_worker=0, fsdp_sharding_strategy="FULL_SHARD").notes
    assert any("fsdp_sharding_strategy=FULL_SHARD applies to multi-GPU FSDP" in note for note in chosen)
