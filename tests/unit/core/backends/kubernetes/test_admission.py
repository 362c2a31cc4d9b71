"""The preflight refuses what the upstream Trainer admission webhook refuses.

Cases adapted from kubeflow/trainer's webhook tests (pkg/webhooks/trainjob_webhook_test.go,
pkg/runtime/framework/plugins/{jobset,torch,mpi,xgboost,volcano}/*_test.go) at v2.1.0,
v2.2.1 and v2.3.0, applied to manifests this provider builds, with the upstream
torch-distributed runtime (tests/k8s/upstream) as the referenced runtime.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from airflow_provider_sft.core.backends.kubernetes.admission import check, domain_prefixed_path_errors
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig, SpecGeneration
from airflow_provider_sft.core.backends.kubernetes.manifest import build_trainjob, training_work
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.params import SFTParams
from airflow_provider_sft.core.run import TrainingRun
from tests.conftest import REPO_ROOT

UPSTREAM = REPO_ROOT / "tests" / "k8s" / "upstream"
V21, V22 = SpecGeneration.V2_1, SpecGeneration.V2_2


def runtime(release="v2.3.0", **changes):
    body = yaml.safe_load((UPSTREAM / f"runtime-torch-distributed-{release}.yaml").read_text())
    for path, value in changes.items():
        target = body
        *parents, leaf = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[leaf] = value
    return body


def manifest(generation, envs="", **config):
    run = TrainingRun("r", SFTParams.parse({"envs": envs}), "/workspace/d.jsonl", "/workspace/runs/r")
    config = KubernetesConfig.build(pvc_name="ws", **config)
    return build_trainjob(training_work(run, config, labels={}), config, generation=generation)


def errors(trainjob, rt, generation, **kwargs):
    with pytest.raises(InvalidParameterError) as info:
        check(trainjob, rt, generation, **kwargs)
    return info.value.errors


@pytest.mark.parametrize(("generation", "release"), [(V21, "v2.1.0"), (V22, "v2.3.0")])
def test_what_we_build_is_admitted(generation, release):
    check(manifest(generation, envs="NCCL_DEBUG=INFO"), runtime(release), generation)


@pytest.mark.parametrize(
    ("manager", "accepted"),
    [
        ("kueue.x-k8s.io/manager", True),  # upstream 24b
        ("acme.io/manager-one", True),
        ("localhost/x", True),
        ("airflow-provider-sft/sft-train-operator", True),  # ours
        ("kueue.k8s.io/", False),  # upstream 24: no path
        ("manager-1", False),  # no domain prefix
        ("airflow-provider-sft", False),  # the value this provider used to send
        ("Acme.io/foo", False),  # upstream 24c: the host must be lowercase
        ("acme.io/with space", False),
    ],
)
def test_manager_is_a_domain_prefixed_path(manager, accepted):
    assert (domain_prefixed_path_errors(manager) == []) is accepted
    trainjob = manifest(V22)
    trainjob["spec"]["runtimePatches"][0]["manager"] = manager
    if accepted:
        check(trainjob, runtime(), V22)
    else:
        assert "spec.runtimePatches.manager" in errors(trainjob, runtime(), V22)


@pytest.mark.parametrize(
    ("generation", "path"), [(V21, "spec.podTemplateOverrides"), (V22, "spec.runtimePatches")]
)
def test_a_patched_job_missing_from_the_runtime_is_refused(generation, path):
    """Upstream 25 and 28 (v2.3.0 admits it, and the JobSet fails later: refused at every version)."""
    rt = runtime(**{"spec.template.spec.replicatedJobs.0.name": "trainer"})
    found = errors(manifest(generation), rt, generation)
    assert "doesn't exist in the runtime job template" in found[path]
    assert "(trainer)" in found[path]


def test_env_in_a_patch_on_the_node_container_is_refused():
    """Upstream 26 / 26b: trainer env belongs in spec.trainer.env."""
    for generation, path in ((V22, "spec.runtimePatches"), (V21, "spec.podTemplateOverrides")):
        trainjob = manifest(generation)
        if generation is V22:
            pod = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
                "replicatedJobs"
            ][0]
            container = pod["template"]["spec"]["template"]["spec"]["containers"][0]
        else:
            container = trainjob["spec"]["podTemplateOverrides"][0]["spec"]["containers"][0]
        container["env"] = [{"name": "ENV_NAME", "value": "OVERRIDE"}]
        assert errors(trainjob, runtime(), generation)[path] == (
            "must not have envs for the dataset-initializer, model-initializer, node containers"
        )


def test_a_container_missing_from_the_runtime_is_refused():
    """Stricter than upstream 27: the webhook merges it in as a container without an image."""
    trainjob = manifest(V22)
    rj = trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    rj["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = "invalid"
    assert (
        "'invalid' is not in ClusterTrainingRuntime"
        in errors(trainjob, runtime(), V22)["spec.runtimePatches"]
    )


@pytest.mark.parametrize("generation", [V21, V22])
def test_torch_reserved_env_names_are_refused(generation):
    """Upstream 7 / 8b: the torch plugin sets PET_* itself."""
    found = errors(
        manifest(generation, envs="test=value,PET_NPROC_PER_NODE=1,PET_NODE_RANK=1"), runtime(), generation
    )
    assert found["spec.trainer.env"].startswith(
        "must not have reserved envs, invalid envs configured: [PET_NODE_RANK PET_NPROC_PER_NODE]"
    )


def test_reserved_names_follow_the_runtimes_ml_policy():
    """Upstream 19 (MPI, v2.3.0) and 20 (XGBoost, v2.2.1+); PET_* is fine for a non-torch runtime."""
    mpi = runtime(**{"spec.mlPolicy": {"numNodes": 1, "mpi": {}}})
    assert (
        "[OMPI_MCA_plm_rsh_args]"
        in errors(manifest(V22, envs="OMPI_MCA_plm_rsh_args=x"), mpi, V22)["spec.trainer.env"]
    )
    check(manifest(V22, envs="PET_NODE_RANK=1"), mpi, V22)
    xgb = runtime(**{"spec.mlPolicy": {"numNodes": 1, "xgboost": {}}})
    assert (
        "[DMLC_TASK_ID]" in errors(manifest(V22, envs="FOO=1,DMLC_TASK_ID=3"), xgb, V22)["spec.trainer.env"]
    )


QUEUE = "scheduling.volcano.sh/queue-name"


def volcano_runtime(release, queue=None):
    """A Volcano runtime; ``queue``: its template's queue-name annotation."""
    rt = runtime(release, **{"spec.podGroupPolicy": {"volcano": {}}})
    if queue is not None:
        rt["spec"]["template"]["metadata"] = {"annotations": {QUEUE: queue}}
    return rt


def test_an_empty_volcano_queue_name_is_refused():
    """Upstream 30 (v2.1.0: spec.annotations)."""
    trainjob = manifest(V21)
    trainjob["spec"]["annotations"] = {QUEUE: ""}
    assert errors(trainjob, volcano_runtime("v2.1.0"), V21) == {
        f"spec.annotations[{QUEUE}]": "Volcano queue name must not be empty (set empty by the TrainJob's "
        "spec.annotations; remove it from metadata_annotations)"
    }


@pytest.mark.parametrize(("generation", "release"), [(V21, "v2.1.0"), (V22, "v2.3.0")])
def test_the_volcano_queue_is_read_from_the_runtime_template_as_the_webhook_reads_it(generation, release):
    """The plugin reads the runtime info's annotations: the runtime template's
    ``metadata.annotations``, overridden by spec.annotations (v2.1.0) or the patches' template
    metadata (v2.2.1+), never the TrainJob's own metadata (pkg/runtime/core/trainingruntime.go)."""
    key = f"spec.annotations[{QUEUE}]"
    empty_in_runtime = errors(manifest(generation), volcano_runtime(release, queue=""), generation)
    assert "set empty by the runtime's spec.template.metadata.annotations" in empty_in_runtime[key]
    # job_annotations go on the TrainJob's metadata, which the webhook never reads for the queue.
    check(manifest(generation, job_annotations={QUEUE: ""}), volcano_runtime(release, queue="q"), generation)
    # The TrainJob's own setting overrides the runtime's, both ways.
    trainjob = manifest(generation)
    if generation is V21:
        trainjob["spec"]["annotations"] = {QUEUE: "team-a"}
    else:
        trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["metadata"] = {
            "annotations": {QUEUE: "team-a"}
        }
    check(trainjob, volcano_runtime(release, queue=""), generation)
    if generation is V22:
        trainjob["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["metadata"] = {
            "annotations": {QUEUE: ""}
        }
        assert (
            "the TrainJob's spec.runtimePatches" in errors(trainjob, volcano_runtime(release, "q"), V22)[key]
        )


def jobset_longest_pod_name(jobset, replicated_job, replicas, completions):
    """kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go: GenPodName(...) + "-abcde"."""
    return f"{jobset}-{replicated_job}-{replicas - 1}-{completions - 1}-abcde"


def named_manifest(generation, name, nodes):
    params = SFTParams.parse({"resource_num_workers": nodes})
    run = TrainingRun(name, params, "/workspace/d.jsonl", f"/workspace/runs/{name}")
    config = KubernetesConfig.build(pvc_name="ws")
    return build_trainjob(training_work(run, config, labels={}), config, generation=generation)


@pytest.mark.parametrize(("generation", "release"), [(V21, "v2.1.0"), (V22, "v2.3.0")])
def test_pod_names_the_jobset_webhook_would_refuse_are_refused_before_the_trainjob_exists(
    generation, release
):
    """A runtime's other replicated jobs (initializers) lengthen JobSet's pod names: a run name
    the node job alone allows is refused here, naming run_name, not by JobSet after admission."""
    rt = runtime(release)
    initializer = copy.deepcopy(rt["spec"]["template"]["spec"]["replicatedJobs"][0])
    initializer["name"] = "dataset-initializer"
    initializer["template"]["metadata"] = {
        "labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "dataset-initializer"}
    }
    initializer["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = "dataset-initializer"
    rt["spec"]["template"]["spec"]["replicatedJobs"].insert(0, initializer)
    fits = "r" * 33  # r...r-dataset-initializer-0-0-abcde: 63
    assert len(jobset_longest_pod_name(fits, "dataset-initializer", 1, 1)) == 63
    check(named_manifest(generation, fits, nodes=11), rt, generation)
    too_long = "r" * 40  # a default run name's length
    found = errors(named_manifest(generation, too_long, nodes=11), rt, generation)
    assert list(found) == ["run_name"]
    assert jobset_longest_pod_name(too_long, "dataset-initializer", 1, 1) in found["run_name"]
    assert "by 7 or more characters" in found["run_name"]
    # The node job's pods count from numNodes: 12 nodes on a 47-character name is one too many.
    check(named_manifest(generation, "r" * 47, nodes=11), runtime(release), generation)
    with pytest.raises(InvalidParameterError):  # refused by the run itself, before any manifest
        named_manifest(generation, "r" * 48, nodes=11)
    trainjob = named_manifest(generation, "r" * 47, nodes=11)
    trainjob["spec"]["trainer"]["numNodes"] = 101
    assert (
        jobset_longest_pod_name("r" * 47, "node", 1, 101)
        in errors(trainjob, runtime(release), generation)["run_name"]
    )


def test_priority_class_must_be_the_runtimes():
    rt = runtime()
    found = errors(manifest(V22), rt, V22, priority_class_name="high")
    assert "no field for a pod priorityClassName" in found["priority_class_name"]
    rt = copy.deepcopy(rt)
    rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "priorityClassName"
    ] = "high"
    check(manifest(V22), rt, V22, priority_class_name="high")


def test_every_problem_is_reported_at_once():
    rt = runtime(**{"spec.template.spec.replicatedJobs.0.name": "trainer"})
    trainjob = manifest(V22, envs="PET_MASTER_PORT=1")
    trainjob["spec"]["runtimePatches"][0]["manager"] = "manager-1"
    assert set(errors(trainjob, rt, V22)) == {
        "spec.runtimePatches.manager",
        "spec.runtimePatches",
        "spec.trainer.env",
    }


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"namespace": "ML_Team"}, "namespace", "DNS-1123 label"),
        ({"runtime_name": "Training_Hub"}, "runtime_name", "Kubernetes object name"),
        ({"runtime_kind": "Runtime"}, "runtime_kind", "ClusterTrainingRuntime"),
        ({"job_labels": "kueue.x-k8s.io/queue-name"}, "job_labels", "no '='"),
        ({"tolerations": '[{"key": "gpu", "operator": "Exist"}]'}, "tolerations", "Exists or Equal"),
        ({"tolerations": "{not json"}, "tolerations", "must be JSON"),
        ({"affinity": {"nodeAfinity": {}}}, "affinity", "unknown field"),
        ({"shm_size": "16 GB"}, "shm_size", "Kubernetes quantity"),
        ({"start_timeout_seconds": 0}, "start_timeout_seconds", "must be > 0"),
        ({"workspace_mount_path": "workspace"}, "workspace_mount_path", "absolute path"),
        ({"node_selector": {"Bad Key": "x"}}, "node_selector", "name part"),
    ],
)
def test_bad_kubernetes_settings_name_the_parameter(values, field, message):
    with pytest.raises(InvalidParameterError) as info:
        KubernetesConfig.build(**values)
    assert list(info.value.errors) == [field]
    assert message in info.value.errors[field]


def test_the_old_start_timeout_setting_is_read_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="start_timeout is deprecated: use start_timeout_seconds"):
        assert KubernetesConfig.build(start_timeout="90").start_timeout_seconds == 90
    with pytest.raises(InvalidParameterError) as info:
        KubernetesConfig.build(start_timeout=60, start_timeout_seconds=90)
    assert list(info.value.errors) == ["start_timeout"]


def test_empty_means_not_set_and_none_only_where_it_is_no_value():
    config = KubernetesConfig.build(pvc_name="", runtime_name=None, tolerations=None, job_labels="")
    assert (config.pvc_name, config.runtime_name, config.tolerations, config.job_labels) == (
        None,
        "torch-distributed",
        [],
        {},
    )
    assert KubernetesConfig.build(image=None).image is None


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("TOKENIZERS_PARALLELISM", "false", False),
        ("MAX_TOKENS", "4096", False),
        ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1", False),
        ("WANDB_MODE", "offline", False),
        ("HF_TOKEN", "hf_abc", True),
        ("WANDB_API_KEY", "abc123", True),
        ("AWS_SECRET_ACCESS_KEY", "xyz", True),
        ("DB_PASSWORD", "pw", True),
        ("GITHUB_TOKEN", "ghp_x", True),
    ],
)
def test_only_credentials_look_like_secrets(name, value, secret):
    from airflow_provider_sft.core.secret_env import looks_secret

    assert looks_secret(name, value) is secret
