"""What the task log shows of a training pod's log (the pod keeps it all)."""

from __future__ import annotations

from airflow_provider_sft.core.backends.kubernetes.logs import FAILURE_CONTEXT_LINES, PodLog

POD = "job-node-0-0-abcde"


def test_the_pods_provider_lines_are_shown_and_the_rest_is_kept_for_the_backend():
    shown: list[str] = []
    pod_log = PodLog.of(shown.append, "ns")
    assert PodLog.of(pod_log, "ns") is pod_log
    pod_log("TrainJob job: running")  # the backend's own line
    pod_log.found(POD)
    pod_log.found(POD)  # named once
    for line in (
        "[sft] run job: device cuda",
        "INFO instructlab.training.data_process: quantile 90th: 70",
        "Epoch 0:  5%|▌ | 5/100\r[sft] step 5/100 epoch 1/1 loss 1.2000",
        'SFT_RESULT {"records": 3}',
        "ERROR: instructlab-training exited with status 1",
    ):
        pod_log.pod_line(line)
    assert shown == [
        "TrainJob job: running",
        f"[sft] full output: kubectl logs -n ns {POD} (while the job exists)",
        "[sft] run job: device cuda",
        "[sft] step 5/100 epoch 1/1 loss 1.2000",
        "ERROR: instructlab-training exited with status 1",
    ]
    assert pod_log.result_line == 'SFT_RESULT {"records": 3}'  # read, never shown
    assert pod_log.last_error == "instructlab-training exited with status 1"
    assert pod_log.lines == 5


def test_after_a_failure_the_last_lines_not_shown_are():
    shown: list[str] = []
    pod_log = PodLog(shown.append, "ns")
    hidden = [f"torch line {i}" for i in range(30)]
    for line in ["[sft] step 1/2", *hidden[:25], "[sft] step 2/2", *hidden[25:]]:
        pod_log.pod_line(line)
    shown.clear()
    pod_log.show_failure_context()
    assert FAILURE_CONTEXT_LINES == 20  # of the last 20 lines (h11..h24, step 2/2, h25..h29), 19 were hidden
    assert shown == ["[sft] the pod log's last 19 line(s) not shown above:", *hidden[11:]]


def test_no_failure_context_when_everything_was_shown():
    shown: list[str] = []
    pod_log = PodLog(shown.append, "ns")
    pod_log.pod_line("ERROR: CUDA out of memory")
    pod_log.show_failure_context()
    assert shown == ["ERROR: CUDA out of memory"]
