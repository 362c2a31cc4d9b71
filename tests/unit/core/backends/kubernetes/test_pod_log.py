"""What the task log shows of a training pod's log (the pod keeps it all)."""

from __future__ import annotations

from airflow_provider_sft.core.backends.kubernetes.logs import FAILURE_CONTEXT_LINES, PodLog, split_timestamp

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


def stamped(second: int, nanos: int, text: str) -> str:
    return f"2026-12-05T09:00:{second:02d}.{nanos:09d}Z {text}"


def test_a_resumed_read_skips_what_the_task_log_has_and_keeps_the_rest():
    """A read resumed at ``sinceTime`` (whole seconds) repeats that second: those lines are shown once."""
    shown: list[str] = []
    pod_log = PodLog(shown.append, "ns")
    log = [
        stamped(1, 5, "[sft] a"),
        stamped(2, 7, "[sft] b"),
        stamped(2, 7, "[sft] b again, same instant"),
        stamped(2, 900, "[sft] c"),
        stamped(3, 0, "[sft] d"),
    ]
    first = pod_log.read()
    for line in log[:3]:  # the stream is cut after the first line at 09:00:02.000000007
        first(line)
    assert pod_log.since_time == "2026-12-05T09:00:02Z"
    resumed = pod_log.read()
    for line in log[1:]:  # what the server answers for sinceTime=...:02Z
        resumed(line)
    again = pod_log.read()  # a final backfill that finds nothing new
    for line in log[2:]:
        again(line)
    assert shown == ["[sft] a", "[sft] b", "[sft] b again, same instant", "[sft] c", "[sft] d"]


def test_a_resumed_read_after_a_cut_inside_one_instant_shows_the_rest_of_it():
    shown: list[str] = []
    pod_log = PodLog(shown.append, "ns")
    lines = [stamped(4, 1, f"[sft] line {i}") for i in range(3)]  # one instant, three lines
    pod_log.read()(lines[0])
    resumed = pod_log.read()
    for line in lines:
        resumed(line)
    assert shown == ["[sft] line 0", "[sft] line 1", "[sft] line 2"]


def test_timestamps_are_read_as_the_kubelet_writes_them():
    assert split_timestamp("2026-12-05T09:00:02.000000007Z [sft] x") == (1796461202000000007, "[sft] x")
    assert split_timestamp("2026-12-05T09:00:02Z y") == (1796461202000000000, "y")
    assert split_timestamp("no stamp here") == (None, "no stamp here")
