"""SFTParams: the seed's defaults, and a clear error for every kind of bad input."""

from __future__ import annotations

import pytest

from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import (
    FSDPShardingStrategy,
    LRScheduler,
    SFTParams,
    parse_key_value_list,
)

SEED_DEFAULTS = {
    "base_model": "Qwen/Qwen2.5-1.5B-Instruct",
    "effective_batch_size": 128,
    "max_tokens_per_gpu": 10000,
    "max_seq_len": 8192,
    "learning_rate": 5e-6,
    "num_epochs": 1,
    "data_output_dir": None,
    "envs": {},
    "resource_cpu_per_worker": "4",
    "resource_gpu_per_worker": 1,
    "resource_memory_per_worker": "64Gi",
    "resource_num_procs_per_worker": "auto",
    "resource_num_workers": 1,
    "metadata_labels": {},
    "metadata_annotations": {},
    # The seed's Optional[...] = None parameters resolve to instructlab-training's defaults.
    "lr_warmup_steps": 0,
    "checkpoint_at_epoch": True,
    "seed": 42,
    "use_liger": False,
    "lr_scheduler": LRScheduler.COSINE,
    "save_samples": 0,
    "accelerate_full_state_at_epoch": True,
    "fsdp_sharding_strategy": FSDPShardingStrategy.HYBRID_SHARD,
    # Beyond the seed (Airflow only): instructlab-training's defaults, no validation.
    "validation_split": 0.0,
    "validation_frequency": None,
}


@pytest.mark.parametrize(("name", "expected"), SEED_DEFAULTS.items(), ids=list(SEED_DEFAULTS))
def test_seed_default(name, expected):
    assert getattr(SFTParams(), name) == expected


def test_every_parameter_has_a_checked_default():
    assert set(SEED_DEFAULTS) == set(SFTParams.model_fields)


def test_none_means_seed_default_for_every_parameter():
    params = SFTParams.parse(dict.fromkeys(SFTParams.model_fields))
    assert params == SFTParams()


def test_component_names_are_accepted_with_their_prefix():
    params = SFTParams.from_component_kwargs(
        training_learning_rate=1e-4, training_resource_cpu_per_worker="500m", training_envs="A=1,B=x=y"
    )
    assert params.learning_rate == 1e-4
    assert params.resource_cpu_per_worker == "500m"
    assert params.cpu_cores == 0.5
    assert params.envs == {"A": "1", "B": "x=y"}


def test_string_values_from_templates_are_coerced():
    params = SFTParams.parse(
        {
            "effective_batch_size": "64",
            "learning_rate": "1e-5",
            "use_liger": "false",
            "resource_num_procs_per_worker": "2",
            "resource_gpu_per_worker": "2",
        }
    )
    assert (params.effective_batch_size, params.learning_rate, params.use_liger) == (64, 1e-5, False)
    assert params.resource_num_procs_per_worker == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", {}, id="empty"),
        pytest.param("A=1", {"A": "1"}, id="one"),
        pytest.param(" A = 1 , B=2 ,", {"A": "1", "B": "2"}, id="spaces-and-trailing-comma"),
        pytest.param("URL=http://x/?a=b", {"URL": "http://x/?a=b"}, id="equals-in-value"),
        pytest.param("EMPTY=", {"EMPTY": ""}, id="empty-value"),
    ],
)
def test_parse_key_value_list(text, expected):
    assert parse_key_value_list(text) == expected


BAD_INPUTS = [
    pytest.param({"effective_batch_size": 0}, "effective_batch_size", "must be > 0, got 0", id="batch-zero"),
    pytest.param({"effective_batch_size": -8}, "effective_batch_size", "must be > 0", id="batch-negative"),
    pytest.param({"effective_batch_size": True}, "effective_batch_size", "must be a number", id="batch-bool"),
    pytest.param(
        {"max_tokens_per_gpu": "lots"}, "max_tokens_per_gpu", "must be an integer", id="tokens-text"
    ),
    pytest.param({"max_seq_len": 2.5}, "max_seq_len", "must be an integer", id="seq-len-fraction"),
    pytest.param({"learning_rate": 0}, "learning_rate", "finite number > 0", id="lr-zero"),
    pytest.param({"learning_rate": float("nan")}, "learning_rate", "finite number > 0", id="lr-nan"),
    pytest.param({"learning_rate": "fast"}, "learning_rate", "must be a number", id="lr-text"),
    pytest.param({"lr_warmup_steps": -1}, "lr_warmup_steps", "must be >= 0", id="warmup-negative"),
    pytest.param({"num_epochs": 0}, "num_epochs", "must be > 0", id="epochs-zero"),
    pytest.param(
        {"resource_cpu_per_worker": "abc"}, "resource_cpu_per_worker", "Kubernetes quantity", id="cpu-abc"
    ),
    pytest.param({"resource_cpu_per_worker": "0"}, "resource_cpu_per_worker", "must be > 0", id="cpu-zero"),
    pytest.param(
        {"resource_cpu_per_worker": "-1"}, "resource_cpu_per_worker", "must be > 0", id="cpu-negative"
    ),
    pytest.param(
        {"resource_memory_per_worker": "64GB"}, "resource_memory_per_worker", "quantity", id="mem-unit"
    ),
    pytest.param(
        {"resource_gpu_per_worker": -1}, "resource_gpu_per_worker", "must be >= 0", id="gpu-negative"
    ),
    pytest.param(
        {"resource_num_procs_per_worker": "many"},
        "resource_num_procs_per_worker",
        "'auto' or an integer",
        id="procs-text",
    ),
    pytest.param(
        {"resource_num_procs_per_worker": 0},
        "resource_num_procs_per_worker",
        "'auto' or an integer",
        id="procs-zero",
    ),
    pytest.param({"resource_num_workers": 0}, "resource_num_workers", "must be > 0", id="workers-zero"),
    pytest.param({"envs": "K"}, "envs", "not KEY=VALUE", id="envs-no-equals"),
    pytest.param({"envs": "=V"}, "envs", "empty key", id="envs-empty-key"),
    pytest.param({"envs": "A=1,A=2"}, "envs", "'A' appears more than once", id="envs-duplicate"),
    pytest.param({"envs": "BAD NAME=1"}, "envs", "must match", id="envs-bad-name"),
    pytest.param({"metadata_labels": "team"}, "metadata_labels", "not KEY=VALUE", id="labels-no-equals"),
    pytest.param(
        {"metadata_labels": "team=ml platform"},
        "metadata_labels",
        "value 'ml platform'",
        id="labels-bad-value",
    ),
    pytest.param({"metadata_labels": "-team=ml"}, "metadata_labels", "name part", id="labels-bad-key"),
    pytest.param(
        {"metadata_labels": "Example.COM/team=ml"}, "metadata_labels", "DNS subdomain", id="labels-bad-prefix"
    ),
    pytest.param(
        {"metadata_labels": f"team={'x' * 64}"}, "metadata_labels", "at most 63", id="labels-long-value"
    ),
    pytest.param(
        {"metadata_annotations": "a/b/c=1"}, "metadata_annotations", "DNS subdomain", id="annotations-bad-key"
    ),
    pytest.param(
        {"metadata_annotations": "note"}, "metadata_annotations", "not KEY=VALUE", id="annotations-no-equals"
    ),
    pytest.param({"seed": -1}, "seed", "must be >= 0", id="seed-negative"),
    pytest.param({"seed": 2**40}, "seed", "< 2**32", id="seed-huge"),
    pytest.param({"use_liger": "maybe"}, "use_liger", "true or false", id="liger-maybe"),
    pytest.param(
        {"lr_scheduler": "cosyne"}, "lr_scheduler", "must be one of 'linear', 'cosine'", id="scheduler-typo"
    ),
    pytest.param(
        {"fsdp_sharding_strategy": "SHARD_EVERYTHING"},
        "fsdp_sharding_strategy",
        "'FULL_SHARD'",
        id="fsdp-unknown",
    ),
    pytest.param({"save_samples": -5}, "save_samples", "must be >= 0", id="save-negative"),
    pytest.param({"base_model": " "}, "base_model", "HuggingFace model id", id="model-blank"),
    pytest.param({"data_output_dir": ""}, "data_output_dir", "empty string", id="data-dir-empty"),
    pytest.param({"lerning_rate": 1e-5}, "lerning_rate", "did you mean learning_rate", id="unknown-name"),
]


@pytest.mark.parametrize(("values", "name", "message"), BAD_INPUTS)
def test_bad_input_names_the_parameter(values, name, message):
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse(values)
    assert name in info.value.errors
    assert message in info.value.errors[name]
    assert f"{name}: " in str(info.value)


def test_component_errors_use_the_component_names():
    with pytest.raises(
        InvalidParameterError, match="training_resource_cpu_per_worker: must be a Kubernetes quantity"
    ):
        SFTParams.from_component_kwargs(training_resource_cpu_per_worker="abc")


def test_every_problem_is_reported_at_once():
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse({"num_epochs": 0, "envs": "K", "lr_scheduler": "x"})
    assert set(info.value.errors) == {"num_epochs", "envs", "lr_scheduler"}


def test_environment_values_never_appear_in_errors():
    secret = "hf_SuperSecretToken123"
    for text in (f"={secret}", f"HF_TOKEN={secret},HF_TOKEN={secret}", f"BAD NAME={secret}"):
        with pytest.raises(InvalidParameterError) as info:
            SFTParams.parse({"envs": text})
        assert secret not in str(info.value)


def test_params_are_frozen():
    params = SFTParams()
    with pytest.raises(ValueError):
        params.learning_rate = 1.0  # type: ignore[misc]


def test_a_run_that_would_write_no_checkpoint_is_rejected():
    with pytest.raises(InvalidParameterError, match="would write no model checkpoint"):
        SFTParams.parse({"checkpoint_at_epoch": False, "save_samples": 0})
    assert SFTParams.parse({"checkpoint_at_epoch": False, "save_samples": 64}).save_samples == 64


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        (
            {"resource_gpu_per_worker": 2, "resource_num_procs_per_worker": 4},
            "resource_num_procs_per_worker",
            "each worker has 2 GPU(s)",
        ),
        (
            {"resource_gpu_per_worker": 0, "resource_num_procs_per_worker": 2},
            "resource_num_procs_per_worker",
            "one process per worker",
        ),
        (
            {"resource_gpu_per_worker": 4, "resource_num_workers": 4, "effective_batch_size": 8},
            "effective_batch_size",
            "smaller than the world size 16",
        ),
        (
            {"resource_gpu_per_worker": 0, "resource_num_workers": 3, "effective_batch_size": 2},
            "effective_batch_size",
            "world size 3",
        ),
    ],
)
def test_topologies_that_cannot_train_are_refused(values, field, reason):
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse(values)
    assert list(info.value.errors) == [field] and reason in info.value.errors[field]


def test_a_topology_that_can_train_is_accepted():
    params = SFTParams.parse(
        {"resource_gpu_per_worker": 0, "resource_num_workers": 2, "effective_batch_size": 2}
    )
    assert params.world_size == 2


def test_the_checkpoint_rule_names_both_fields():
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse({"checkpoint_at_epoch": False, "save_samples": 0})
    assert set(info.value.errors) == {"checkpoint_at_epoch", "save_samples"}


def test_max_tokens_below_max_seq_len_is_refused():
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse({"max_seq_len": 4096, "max_tokens_per_gpu": 1000})
    assert (
        list(info.value.errors) == ["max_tokens_per_gpu"]
        and "multipack" in info.value.errors["max_tokens_per_gpu"]
    )


def test_integers_are_bounded_to_int32():
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse({"effective_batch_size": 10**30})
    assert list(info.value.errors) == ["effective_batch_size"]


@pytest.mark.parametrize("envs", ["A=1\nB=2", "A=1\x00", {"A": "x\ny"}, {"A\n": "1"}])
def test_control_characters_in_envs_are_refused(envs):
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse({"envs": envs})
    assert list(info.value.errors) == ["envs"] and "control character" in info.value.errors["envs"]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"resource_memory_per_worker": "64 Gi"}, "resource_memory_per_worker"),  # the API server refuses it
        ({"base_model": "hf://Qwen/Qwen2.5-1.5B-Instruct"}, "base_model"),
    ],
)
def test_values_a_cluster_or_the_trainer_would_refuse_later_are_refused_now(values, field):
    with pytest.raises(InvalidParameterError) as info:
        SFTParams.parse(values)
    assert list(info.value.errors) == [field]


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("full_shard", id="lower"),
        pytest.param(" FULL_SHARD ", id="spaces"),
        pytest.param("Full-Shard", id="hyphen"),
        pytest.param("full shard", id="inner-space"),
    ],
)
def test_sharding_strategy_is_read_as_the_seed_read_it(spelling):
    """The seed upper-cased and stripped it: pipelines written for it pass lower case."""
    assert SFTParams.parse({"fsdp_sharding_strategy": spelling}).fsdp_sharding_strategy is (
        FSDPShardingStrategy.FULL_SHARD
    )
    assert (
        SFTParams.from_component_kwargs(
            training_fsdp_sharding_strategy=spelling.lower()
        ).fsdp_sharding_strategy
        is FSDPShardingStrategy.FULL_SHARD
    )


def test_an_oci_base_model_is_refused_when_the_parameters_are_read():
    """One rule for every backend: the local one used to accept it and fail later."""
    with pytest.raises(InvalidParameterError, match="base_model: oci:// base models are not supported yet"):
        SFTParams.parse({"base_model": "oci://quay.io/models/granite:1"})


@pytest.mark.parametrize(
    ("values", "field", "reason"),
    [
        pytest.param({"validation_split": 1}, "validation_split", "must be a fraction in [0, 1)", id="one"),
        pytest.param({"validation_split": -0.1}, "validation_split", "got -0.1", id="negative"),
        pytest.param({"validation_split": "nan"}, "validation_split", "got nan", id="nan"),
        pytest.param({"validation_split": True}, "validation_split", "must be a number", id="bool"),
        pytest.param(
            {"validation_split": 0.1},
            "validation_frequency",
            "is required with validation_split=0.1",
            id="no-freq",
        ),
        pytest.param(
            {"validation_split": 0.1, "validation_frequency": ""},
            "validation_frequency",
            "is required with validation_split=0.1",
            id="blank-freq",
        ),
        pytest.param(
            {"validation_split": 0.1, "validation_frequency": 0},
            "validation_frequency",
            "must be > 0",
            id="zero",
        ),
        pytest.param(
            {"validation_frequency": "often"}, "validation_frequency", "must be an integer", id="text"
        ),
    ],
)
def test_bad_validation_settings_are_one_error_naming_the_field(values, field, reason):
    with pytest.raises(InvalidParameterError) as refused:
        SFTParams.parse(values)
    assert list(refused.value.errors) == [field]
    assert reason in refused.value.errors[field]


def test_validation_settings_from_templates_are_coerced_and_a_frequency_alone_is_harmless():
    params = SFTParams.parse({"validation_split": "0.25", "validation_frequency": "3"})
    assert (params.validation_split, params.validation_frequency) == (0.25, 3)
    assert SFTParams.parse({"validation_frequency": 5}).validation_split == 0.0  # nothing held out
