"""The core-API stand-in (tests/k8s/fake_core.py, tests/k8s/core_rules.py) refuses what kube-apiserver refuses, as it does.

For each core call the provider makes (create or replace a Secret or ConfigMap, list a job's
pods, read or follow a pod's log), a wrong request gets the status and the message the real
server gives. Each case names the upstream function its message comes from: Kubernetes v1.36
(k8s.io/kubernetes; k8s.io/apimachinery v0.36.4, the release the test crdserver is built from).
The provider's own calls are made through its client (``KubeClient``), the rest as raw HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import requests

from airflow_provider_sft.core.backends.kubernetes.logs import split_timestamp
from airflow_provider_sft.core.backends.kubernetes.retry import KubeApiError

SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def call(cluster, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{cluster.url}{path}", timeout=30, **kwargs)


def refusal(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == response.status_code
    return response.status_code, body["reason"], body["message"]


def secret(name: str, data: dict[str, bytes], type_: str = "Opaque", labels=None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "type": type_,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def provider(cluster, work):
    """Run ``work(kube)`` with the provider's own client on the stand-in."""

    async def main():
        async with cluster.connect() as kube:
            return await work(kube)

    return asyncio.run(main())


# --- object names and labels: ValidateObjectMeta (apimachinery pkg/api/validation/objectmeta.go) ---------


def test_an_object_name_that_is_not_a_dns_subdomain_is_422(fake_cluster, namespace):
    # NameIsDNSSubdomain -> validation.IsDNS1123Subdomain (apimachinery pkg/util/validation/validation.go),
    # the message built by errors.NewInvalid (apimachinery pkg/api/errors/errors.go)
    answer = call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets", json=secret("Run_1", {}))
    assert refusal(answer) == (
        422,
        "Invalid",
        f'Secret "Run_1" is invalid: metadata.name: Invalid value: "Run_1": {SUBDOMAIN}',
    )
    assert answer.json()["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": f'Invalid value: "Run_1": {SUBDOMAIN}',
            "field": "metadata.name",
        }
    ]
    long = "a" * 254  # IsDNS1123Subdomain: MaxLenError(253), in characters
    answer = call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/configmaps", json=secret(long, {}))
    assert refusal(answer)[2] == (
        f'ConfigMap "{long}" is invalid: metadata.name: Invalid value: "{long}": must be no more than 253 characters'
    )


def test_a_label_value_the_api_refuses_is_422_through_the_providers_client(fake_cluster, namespace):
    # v1validation.ValidateLabels (apimachinery pkg/apis/meta/v1/validation/validation.go):
    # content.IsLabelValue (apimachinery pkg/api/validate/content/kube.go), errors joined as an aggregate
    run_id = "manual__2026-11-25T20:00:00+00:00"
    body = {
        **secret("ok", {"A": b"1"}),
        "metadata": {"name": "ok", "namespace": namespace, "labels": {"run": run_id}},
    }
    with pytest.raises(KubeApiError) as info:
        provider(fake_cluster, lambda kube: kube.put_owned(body))
    assert info.value.status == 422
    assert (
        info.value.server_message
        == f'Secret "ok" is invalid: metadata.labels: Invalid value: "{run_id}": {LABEL_VALUE}'
    )
    too_long = "x" * 64
    body["metadata"]["labels"] = {"run": too_long}
    with pytest.raises(KubeApiError) as info:
        provider(fake_cluster, lambda kube: kube.put_owned(body))
    assert info.value.server_message == (
        f'Secret "ok" is invalid: metadata.labels: Invalid value: "{too_long}": must be no more than 63 bytes'
    )
    assert fake_cluster.secrets_in(namespace) == []  # nothing stored


# --- size: ValidateSecret / ValidateConfigMap (kubernetes pkg/apis/core/validation/validation.go) ---------


def test_a_secret_or_configmap_over_one_mebibyte_is_422(fake_cluster, namespace):
    # ValidateSecret: field.TooLong(data, core.MaxSecretSize); field.TooLong (apimachinery
    # pkg/util/validation/field/errors.go) says "may not be more than 1048576 bytes"
    big = secret("big", {"a": b"x" * (2**20), "b": b"y"})
    answer = call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets", json=big)
    assert refusal(answer) == (
        422,
        "Invalid",
        'Secret "big" is invalid: data: Too long: may not be more than 1048576 bytes',
    )
    at_limit = secret("fits", {"a": b"x" * (2**20)})
    assert (
        call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets", json=at_limit).status_code
        == 201
    )
    # ValidateConfigMap: field.TooLong(field.NewPath(""), ...): the empty path prints as "[]" (field/path.go)
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prog"},
        "data": {"p": "x" * (2**20 + 1)},
    }
    answer = call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/configmaps", json=configmap)
    assert refusal(answer) == (
        422,
        "Invalid",
        'ConfigMap "prog" is invalid: []: Too long: may not be more than 1048576 bytes',
    )
    # a replace (PUT, what put_owned does after a 409) is validated the same way (ValidateConfigMapUpdate)
    configmap["data"] = {"p": "small"}
    assert (
        call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/configmaps", json=configmap).status_code
        == 201
    )
    configmap["data"] = {"p": "x" * (2**20 + 1)}
    answer = call(fake_cluster, "PUT", f"/api/v1/namespaces/{namespace}/configmaps/prog", json=configmap)
    assert refusal(answer)[0] == 422
    assert fake_cluster.configmaps[(namespace, "prog")]["data"] == {"p": "small"}


# --- kubernetes.io/dockerconfigjson: ValidateSecret's SecretTypeDockerConfigJSON case ---------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, 'Secret "pull" is invalid: data[.dockerconfigjson]: Required value'),
        (
            {".dockerconfigjson": b"not-json"},  # Go's encoding/json reads "n" as the start of null
            'Secret "pull" is invalid: data[.dockerconfigjson]: Invalid value: "<secret contents redacted>": '
            "invalid character 'o' in literal null (expecting 'u')",
        ),
        (
            {".dockerconfigjson": b"[]"},
            'Secret "pull" is invalid: data[.dockerconfigjson]: Invalid value: "<secret contents redacted>": '
            "json: cannot unmarshal array into Go value of type map[string]interface {}",
        ),
        (
            {".dockerconfigjson": b""},
            'Secret "pull" is invalid: data[.dockerconfigjson]: Invalid value: "<secret contents redacted>": '
            "unexpected end of JSON input",
        ),
    ],
    ids=["no-key", "not-json", "not-an-object", "empty"],
)
def test_a_dockerconfigjson_secret_without_a_json_object_is_422(fake_cluster, namespace, data, expected):
    # json.Unmarshal(data[.dockerconfigjson], &map[string]interface{}{}); the value is never echoed
    body = secret("pull", data, "kubernetes.io/dockerconfigjson")
    answer = call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets", json=body)
    assert refusal(answer) == (422, "Invalid", expected)


def test_a_dockerconfigjson_secret_with_any_json_object_is_stored(fake_cluster, namespace):
    # The server checks only that the content is a JSON object: "{}" passes (it holds no credentials:
    # the provider refuses it itself, see airflow_provider_sft/core/backends/kubernetes/pull_secret.py)
    body = secret("pull", {".dockerconfigjson": b"{}"}, "kubernetes.io/dockerconfigjson")
    assert call(fake_cluster, "POST", f"/api/v1/namespaces/{namespace}/secrets", json=body).status_code == 201


# --- pod logs: LogREST.Get (kubernetes pkg/registry/core/pod/rest/log.go) ---------------------------------


def log_path(namespace: str, pod: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{pod}/log"


def test_a_log_of_a_container_the_pod_does_not_have_is_400_through_the_providers_client(
    fake_cluster, namespace
):
    # LogLocation -> validateContainer (kubernetes pkg/registry/core/pod/strategy.go): errors.NewBadRequest
    pod = f"{namespace}-job-master-0"  # a PyTorchJob's master: its one container is "pytorch"
    fake_cluster.pods[(namespace, pod)] = {"job": "job", "log": "[sft] hello\n", "phase": "Running"}
    with pytest.raises(KubeApiError) as info:
        provider(fake_cluster, lambda kube: kube.read_log(namespace, pod, "node", tail_lines=10))
    assert info.value.status == 400
    assert info.value.server_message == f"container node is not valid for pod {pod}"
    lines = provider(fake_cluster, lambda kube: kube.read_log(namespace, pod, "pytorch", tail_lines=10))
    assert [split_timestamp(line)[1] for line in lines] == ["[sft] hello"]


def test_a_log_without_a_container_of_a_pod_with_several_is_400(fake_cluster, namespace):
    # validateContainer: "a container name must be specified for pod %s, choose one of: %s" ([]string)
    fake_cluster.pods[(namespace, "p")] = {
        "job": "j",
        "log": "",
        "phase": "Running",
        "containers": ["a", "b"],
    }
    answer = call(fake_cluster, "GET", log_path(namespace, "p"))
    assert refusal(answer) == (
        400,
        "BadRequest",
        "a container name must be specified for pod p, choose one of: [a b]",
    )
    fake_cluster.pods[(namespace, "q")] = {
        "job": "j",
        "log": "only\n",
        "phase": "Running",
        "containers": ["one"],
    }
    assert call(fake_cluster, "GET", log_path(namespace, "q")).text == "only\n"  # one container: that one


def test_a_log_of_a_pod_that_does_not_exist_is_404_and_of_a_waiting_container_400(fake_cluster, namespace):
    # getPod -> errors.NewNotFound (apimachinery pkg/api/errors/errors.go)
    answer = call(fake_cluster, "GET", log_path(namespace, "gone"), params={"container": "node"})
    assert refusal(answer) == (404, "NotFound", 'pods "gone" not found')
    # the kubelet (pkg/kubelet/kubelet_pods.go validateContainerLogStatus), passed on by the API server
    pod = fake_cluster.add_pod(namespace, "job", waiting="ContainerCreating")
    answer = call(fake_cluster, "GET", log_path(namespace, pod), params={"container": "node"})
    assert refusal(answer) == (
        400,
        "BadRequest",
        f'container "node" in pod "{pod}" is waiting to start: ContainerCreating',
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (
            {"tailLines": -1},
            'PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0',
        ),
        (
            {"sinceSeconds": 0},
            'PodLogOptions "p" is invalid: sinceSeconds: Invalid value: 0: must be greater than 0',
        ),
        (
            {"limitBytes": 0},
            'PodLogOptions "p" is invalid: limitBytes: Invalid value: 0: must be greater than 0',
        ),
        (
            {"sinceSeconds": 5, "sinceTime": "2026-12-05T09:00:00Z"},
            'PodLogOptions "p" is invalid: []: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified',
        ),
    ],
    ids=["negative-tail", "zero-since-seconds", "zero-limit-bytes", "both-since"],
)
def test_bad_log_options_are_422_before_the_pod_is_looked_up(fake_cluster, namespace, params, expected):
    # ValidatePodLogOptions (kubernetes pkg/apis/core/validation/validation.go), checked by LogREST.Get
    # before LogLocation: the pod "p" does not exist, and the answer is still the 422
    answer = call(fake_cluster, "GET", log_path(namespace, "p"), params={"container": "node", **params})
    assert refusal(answer) == (422, "Invalid", expected)


def test_log_options_select_lines_as_the_kubelet_does(fake_cluster, namespace):
    # kubelet pkg/kubelet/kuberuntime/logs/logs.go ReadLogs: tail first (tailLines=0: none), then the
    # lines from `since` on; timestamps RFC3339NanoFixed; the API server passes sinceTime on as RFC 3339
    # (LogLocation: opts.SinceTime.Format(time.RFC3339)), to the second
    pod = fake_cluster.add_pod(namespace, "job", phase="Running", log="one\ntwo\nthree\n")
    params = {"container": "node", "timestamps": "true"}
    lines = call(fake_cluster, "GET", log_path(namespace, pod), params=params).text.splitlines()
    stamps = [split_timestamp(line) for line in lines]
    assert [text for _, text in stamps] == ["one", "two", "three"]
    assert all(len(line.split(" ")[0]) == len("2026-12-05T09:00:00.123456789Z") for line in lines)
    tail = call(fake_cluster, "GET", log_path(namespace, pod), params={**params, "tailLines": 2}).text
    assert [split_timestamp(line)[1] for line in tail.splitlines()] == ["two", "three"]
    assert call(fake_cluster, "GET", log_path(namespace, pod), params={**params, "tailLines": 0}).text == ""
    second = lines[0].split(".")[0] + ".999999999Z"  # within the second of the lines: all of them
    since = call(fake_cluster, "GET", log_path(namespace, pod), params={**params, "sinceTime": second}).text
    assert since.splitlines() == lines
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamps[0][0] // 10**9 + 1))
    assert (
        call(fake_cluster, "GET", log_path(namespace, pod), params={**params, "sinceTime": later}).text == ""
    )
    plain = call(fake_cluster, "GET", log_path(namespace, pod), params={"container": "node"}).text
    assert plain == "one\ntwo\nthree\n"  # no timestamps unless asked


def test_a_followed_log_ends_with_its_container_unless_the_stream_is_cut(fake_cluster, namespace):
    pod = fake_cluster.add_pod(namespace, "job", phase="Running", log="a\nb\nc\n")
    fake_cluster.cut_log_streams(after_lines=2, how="end")
    try:
        first = call(
            fake_cluster, "GET", log_path(namespace, pod), params={"container": "node", "follow": "true"}
        )
    finally:
        fake_cluster.cut_after = None
    assert first.text == "a\nb\n"  # ended cleanly with the container still running (an idle cut)
    fake_cluster.pods[(namespace, pod)]["phase"] = "Succeeded"
    rest = call(fake_cluster, "GET", log_path(namespace, pod), params={"container": "node", "follow": "true"})
    assert rest.text == "a\nb\nc\n"  # a stream of an ended container ends after its last line


def test_a_reset_stream_drops_the_connection(fake_cluster, namespace):
    pod = fake_cluster.add_pod(namespace, "job", phase="Running", log="a\nb\nc\n")
    fake_cluster.cut_log_streams(after_lines=1, how="reset")
    try:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            call(
                fake_cluster, "GET", log_path(namespace, pod), params={"container": "node", "follow": "true"}
            )
    finally:
        fake_cluster.cut_after = None


def test_a_reset_read_drops_the_connection_midway_and_the_next_read_is_whole(fake_cluster, namespace):
    # an API-server restart cuts a plain read (a tail) as it cuts a followed stream: the body is
    # chunked, so the client sees a truncated body, never a short whole one
    pod = fake_cluster.add_pod(namespace, "job", phase="Running", log="a\nb\nc\n")
    fake_cluster.cut_log_streams(after_lines=1, how="reset")
    try:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            call(fake_cluster, "GET", log_path(namespace, pod), params={"container": "node"})
        again = call(fake_cluster, "GET", log_path(namespace, pod), params={"container": "node"})
    finally:
        fake_cluster.cut_after = None
    assert fake_cluster.pods[(namespace, pod)]["cut"] and again.text == "a\nb\nc\n"  # once per pod


def test_the_providers_log_read_is_retried_when_its_body_is_cut(fake_cluster, namespace):
    # the backfill and the progress poll read a tail: a body cut midway is read again, whole
    pod = fake_cluster.add_pod(namespace, "job", phase="Running", log="a\nb\nc\n")
    fake_cluster.cut_log_streams(after_lines=1, how="reset")
    try:
        lines = provider(fake_cluster, lambda kube: kube.read_log(namespace, pod, "node", tail_lines=10))
    finally:
        fake_cluster.cut_after = None
    assert fake_cluster.pods[(namespace, pod)]["cut"]
    assert [split_timestamp(line)[1] for line in lines] == ["a", "b", "c"]


def test_pods_are_listed_by_label_with_their_containers_status(fake_cluster, namespace):
    # the provider's list_job_pods: labelSelector=<the kind's pod label>=<job>
    fake_cluster.pods[(namespace, "j-master-0")] = {"job": "j", "log": "", "phase": "Succeeded"}
    items = call(
        fake_cluster,
        "GET",
        f"/api/v1/namespaces/{namespace}/pods",
        params={"labelSelector": "training.kubeflow.org/job-name=j"},
    ).json()["items"]
    assert [pod["status"]["containerStatuses"] for pod in items] == [
        [{"name": "pytorch", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
    ]
    assert json.dumps(items)  # plain JSON, as the provider reads it
