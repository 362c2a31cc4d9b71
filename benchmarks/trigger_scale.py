"""One triggerer process following N concurrent TrainJobs: watch (ours) vs poll-every-N-seconds.

    python benchmarks/trigger_scale.py [--jobs 100 500 1000] [--window 60] [--poll 10]
    python benchmarks/trigger_scale.py --smoke   # 3 jobs, 2 s window: does it still run?

Needs the test API server (tests/k8s/build-crdserver.sh, etcd). For each N it creates
N running TrainJobs on the REAL server (the upstream v2.3.0 CRDs), then runs, each in a
fresh child process (the "triggerer"), first our wait (one ``TrainingJobTrigger`` per job:
``follow_job`` over the shared async client), then the baseline (one GET per job
every ``--poll`` seconds). After a warm-up it counts the API requests the server
receives during ``--window`` seconds, then completes every job and times how long
the waiters take to see it. Requests are counted at the loopback proxy in front of
the server (tests/k8s/fake_core.py). CPU seconds and peak RSS are the child's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.k8s import harness

WARMUP_SECONDS = 10  # at least, after the triggerer's first request; then until QUIET_SECONDS without one
QUIET_SECONDS = 3
#: ``--smoke``: tiny sizes, for the test that keeps the benchmark running (its numbers mean nothing).
SMOKE = {"jobs": [3], "window": 2.0, "poll": 1.0, "warmup": 1.0, "quiet": 1}


def child(
    mode: str, conn_env: str, namespace: str, names: list[str], poll: float, conn, go_complete, t0
) -> None:
    """The triggerer: one TrainingJobTrigger per job (or the poll baseline); reports CPU, RSS, latency."""
    import os

    os.environ["AIRFLOW_CONN_BENCH_K8S"] = conn_env
    from airflow_provider_sft.core.backends.kubernetes.kinds import TRAINJOB
    from airflow_provider_sft.core.backends.kubernetes.status import classify_job_status
    from airflow_provider_sft.hooks.sft import SFTTrainingHook
    from airflow_provider_sft.triggers.training_job import TrainingJobTrigger

    done_at: dict[str, float] = {}

    async def watch_one(name: str) -> None:
        job = {
            "backend": "kubernetes",
            "name": name,
            "output_dir": f"/workspace/runs/{name}",
            "namespace": namespace,
        }
        trigger = TrainingJobTrigger(job=job, kubernetes_conn_id="bench_k8s")
        event = await trigger.run().__anext__()
        assert event.payload["status"] == "success", event.payload
        done_at[name] = time.monotonic()

    async def poll_one(name: str) -> None:
        async with SFTTrainingHook(kubernetes_conn_id="bench_k8s").connect() as jobs:
            while not classify_job_status(await jobs.get_job(TRAINJOB, namespace, name)).terminal:
                await asyncio.sleep(poll)
        done_at[name] = time.monotonic()

    async def main() -> None:
        waiter = watch_one if mode == "watch" else poll_one
        tasks = [asyncio.create_task(waiter(name)) for name in names]
        await asyncio.to_thread(go_complete.wait)  # the parent completes the jobs
        await asyncio.gather(*tasks)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(
            {
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "latency_s": max(done_at.values()) - t0.value,
            }
        )

    asyncio.run(main())


def wait_for_first_request(cluster, before: int, limit_seconds: float = 120) -> None:
    """Until the triggerer (a fresh interpreter importing Airflow) sends its first request."""
    deadline = time.monotonic() + limit_seconds
    while len(cluster.requests) == before and time.monotonic() < deadline:
        time.sleep(0.2)


def settle(cluster, warmup: float, quiet_seconds: int, limit_seconds: float = 180) -> None:
    """Wait out the start-up burst (first GET + watch of every job) before counting."""
    started = time.monotonic()
    last, quiet = len(cluster.requests), 0
    while time.monotonic() - started < limit_seconds:
        time.sleep(1)
        now = len(cluster.requests)
        quiet = quiet + 1 if now == last else 0
        last = now
        if quiet >= quiet_seconds and time.monotonic() - started >= warmup:
            return


def measure(
    cluster,
    mode: str,
    namespace: str,
    names: list[str],
    window: float,
    poll: float,
    warmup: float = WARMUP_SECONDS,
    quiet: int = QUIET_SECONDS,
) -> dict:
    context = mp.get_context("spawn")  # a fresh interpreter, like a triggerer process
    parent, child_end = context.Pipe()
    go_complete = context.Event()
    t0 = context.Value("d", 0.0)
    process = context.Process(
        target=child,
        args=(mode, harness.connection_uri(cluster.url), namespace, names, poll, child_end, go_complete, t0),
    )
    # reset status to running for every job, then start the triggerer
    for name in names:
        cluster.drive(namespace, name, "running")
    started_at = len(cluster.requests)
    process.start()
    wait_for_first_request(cluster, started_at)
    if mode == "watch":
        settle(cluster, warmup, quiet)
    else:  # a poll loop never goes quiet: skip one full poll round of start-up
        time.sleep(warmup + poll)
    before = len(cluster.requests)
    time.sleep(window)
    steady = len(cluster.requests) - before
    t0.value = time.monotonic()  # the first completion; latency = until the last waiter saw its own
    for name in names:
        cluster.drive(namespace, name, "complete", reason="JobsCompleted")
    go_complete.set()
    result = parent.recv()
    process.join(60)
    return {**result, "requests_per_job_minute": steady / len(names) / (window / 60)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=10.0)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: check it still runs")
    args = parser.parse_args()
    warmup, quiet = WARMUP_SECONDS, QUIET_SECONDS
    if args.smoke:
        args.jobs, args.window, args.poll, warmup, quiet = (
            SMOKE[k] for k in ("jobs", "window", "poll", "warmup", "quiet")
        )

    from kubernetes import client

    from airflow_provider_sft.core.backends.kubernetes import KubernetesConfig, SpecGeneration
    from airflow_provider_sft.core.backends.kubernetes.manifest import build_trainjob, training_work
    from airflow_provider_sft.core.params import SFTParams
    from airflow_provider_sft.core.run import TrainingRun
    from tests.k8s.fake_core import FakeCluster

    if not harness.available():
        print(harness.UNAVAILABLE)
        return 1
    server = harness.ApiServer().start()
    cluster = FakeCluster(server).start()
    rows = []
    try:
        harness.install_trainer(server, "v2.3.0")
        objects = client.CustomObjectsApi(server.api_client())
        for n in args.jobs:
            namespace = f"bench-{n}"
            names = [f"job-{i:04d}" for i in range(n)]
            # The PVC need not exist: no pod runs here, only the TrainJob objects are read.
            config = KubernetesConfig.build(namespace=namespace, pvc_name="bench-workspace")
            for name in names:
                run = TrainingRun(name, SFTParams(), "/workspace/d.jsonl", f"/workspace/runs/{name}")
                body = build_trainjob(
                    training_work(run, config, labels={}), config, generation=SpecGeneration.V2_2
                )
                objects.create_namespaced_custom_object(
                    "trainer.kubeflow.org", "v1alpha1", namespace, "trainjobs", body
                )
            for mode in ("watch", "poll"):
                result = measure(cluster, mode, namespace, names, args.window, args.poll, warmup, quiet)
                rows.append({"jobs": n, "mode": mode, **result})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        cluster.stop()
        server.stop()

    print(
        f"\nOne triggerer process, {args.window:.0f} s steady-state window, baseline polls every {args.poll:.0f} s:"
    )
    print("| jobs | mode | requests / job-minute | CPU s | peak RSS MB | completion seen after s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['jobs']} | {'watch (ours)' if row['mode'] == 'watch' else f'poll {args.poll:.0f}s'} | "
            f"{row['requests_per_job_minute']:.2f} | {row['cpu_seconds']:.1f} | {row['peak_rss_mb']:.0f} | {row['latency_s']:.2f} |"
        )
    for n in args.jobs:
        watch, poll = (next(r for r in rows if r["jobs"] == n and r["mode"] == m) for m in ("watch", "poll"))
        cpu = poll["cpu_seconds"] / watch["cpu_seconds"]
        if watch["requests_per_job_minute"] == 0:
            print(
                f"N={n}: poll {poll['requests_per_job_minute']:.1f} requests/job-minute, watch none in the window; CPU poll/watch = {cpu:.2f}"
            )
        else:
            ratio = poll["requests_per_job_minute"] / watch["requests_per_job_minute"]
            print(f"N={n}: poll sends {ratio:.1f}x the requests of watch; CPU poll/watch = {cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
