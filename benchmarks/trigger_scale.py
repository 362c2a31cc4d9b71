"""One triggerer process following N concurrent TrainJobs: the shared watch vs a watch per job vs polling.

    python benchmarks/trigger_scale.py [--jobs 1000 10000] [--modes shared per-job] [--window 330]
    python benchmarks/trigger_scale.py --jobs 10000 --modes shared --restart   # an API-server restart
    python benchmarks/trigger_scale.py --jobs 1000 --modes shared --tracemalloc  # where the memory goes
    python benchmarks/trigger_scale.py --smoke   # 3 jobs, 2 s window: does it still run?

Needs the test API server (tests/k8s/build-crdserver.sh, etcd). For each N it creates N running
TrainJobs on the REAL server (the upstream v2.3.0 CRDs), labelled as the provider labels its jobs and
reporting progress in ``status.trainerStatus`` (Trainer v2.3's TrainJobStatus: the waiters then read
no pod log). Then for each mode, in a fresh child process (the "triggerer"), one
``TrainingJobTrigger`` per job:

* ``shared``: the triggerer's shared watch (informer.py), one per namespace;
* ``per-job``: each trigger its own watch (``use_shared_watch = False``, the wait before issue 26);
* ``poll``: the baseline, one GET per job every ``--poll`` seconds.

After the start-up burst it counts, at the loopback proxy in front of the server
(tests/k8s/fake_core.py), the requests and the connections open to the server during ``--window``
seconds. Then every job is completed at once: the stand-in writes the N statuses as fast as the
server takes them (``WRITES_IN_FLIGHT`` at a time, straight to the server), and the time is taken
from the moment the LAST write was acknowledged until the last waiter saw its job complete (how
long the writes themselves took is reported beside it). With ``--restart`` the API server is
stopped and started again (etcd kept) before the completion: the list requests and reads of single
jobs after the restart are counted, and the completion time is taken from the moment the server is
ready again (the waiters must have re-connected to see it). CPU seconds and peak RSS are the child's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.k8s import harness

WARMUP_SECONDS = 10  # at least, after the triggerer's first request; then until QUIET_SECONDS without one
QUIET_SECONDS = 3
WRITES_IN_FLIGHT = 64  # the stand-in's concurrent status writes (creates too)
RESTART_DOWN_SECONDS = 3  # the API server is down this long
#: ``--smoke``: tiny sizes, for the test that keeps the benchmark running (its numbers mean nothing).
SMOKE = {"jobs": [3], "window": 2.0, "poll": 1.0, "warmup": 1.0, "quiet": 1}
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"


def child(
    mode: str, conn_env: str, namespace: str, names: list[str], poll: float, conn, go, profile: bool
) -> None:
    """The triggerer: one TrainingJobTrigger per job (or the poll baseline); reports CPU, RSS and when
    each waiter saw its job end."""
    import os

    os.environ["AIRFLOW_CONN_BENCH_K8S"] = conn_env
    if profile:
        import tracemalloc

        tracemalloc.start(25)
    from airflow_provider_sft.core.backends.kubernetes.kinds import TRAINJOB
    from airflow_provider_sft.core.backends.kubernetes.status import classify_job_status
    from airflow_provider_sft.hooks.sft import SFTTrainingHook
    from airflow_provider_sft.triggers.training_job import TrainingJobTrigger

    TrainingJobTrigger.use_shared_watch = mode == "shared"
    done_at: dict[str, float] = {}

    async def trigger_one(name: str) -> None:
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
        waiter = poll_one if mode == "poll" else trigger_one
        tasks = [asyncio.create_task(waiter(name)) for name in names]
        if profile:
            await asyncio.to_thread(go.wait)  # the parent says: the start-up burst is over
            go.clear()
            snapshot = tracemalloc.take_snapshot()
            top = snapshot.statistics("traceback")[:12]
            lines = [
                f"{s.size / 2**20:.1f} MiB in {s.count} blocks\n  "
                + "\n  ".join(
                    line
                    for line in s.traceback.format()
                    if "airflow_provider_sft" in line or "benchmarks" in line
                )
                for s in top
            ]
            conn.send({"tracemalloc": lines, "traced_mib": tracemalloc.get_traced_memory()[0] / 2**20})
        await asyncio.gather(*tasks)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        conn.send(
            {
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "last_seen": max(done_at.values()),
            }
        )

    asyncio.run(main())


def trainjob_body(namespace: str, name: str) -> dict:
    from airflow_provider_sft.core import constants as c
    from airflow_provider_sft.core.backends.kubernetes import KubernetesConfig, SpecGeneration
    from airflow_provider_sft.core.backends.kubernetes.manifest import build_trainjob, training_work
    from airflow_provider_sft.core.params import SFTParams
    from airflow_provider_sft.core.run import TrainingRun

    # The PVC need not exist: no pod runs here, only the TrainJob objects are read.
    config = KubernetesConfig.build(namespace=namespace, pvc_name="bench-workspace")
    run = TrainingRun(name, SFTParams(), "/workspace/d.jsonl", f"/workspace/runs/{name}")
    labels = {c.LABEL_MANAGED_BY: c.MANAGED_BY_VALUE, c.LABEL_COMPONENT: "sft-training"}  # as the backend's
    return build_trainjob(training_work(run, config, labels=labels), config, generation=SpecGeneration.V2_2)


def status(phase: str) -> dict:
    """The status the Trainer sets: running (its pods ready, progress reported) or complete."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    running = phase == "running"
    conditions = (
        []
        if running
        else [
            {
                "type": "Complete",
                "status": "True",
                "reason": "JobsCompleted",
                "message": "",
                "lastTransitionTime": now,
            }
        ]
    )
    return {
        "status": {
            "conditions": conditions,
            "jobsStatus": [
                {
                    "name": "node",
                    "ready": int(running),
                    "succeeded": int(not running),
                    "failed": 0,
                    "active": int(running),
                    "suspended": 0,
                }
            ],
            "trainerStatus": {"progressPercentage": 10 if running else 100, "lastUpdatedTime": now},
        }
    }


async def write_all(server, namespace: str, names: list[str], action: str, retry_seconds: float = 0) -> float:
    """Create (``action="create"``) or set the status of every job, ``WRITES_IN_FLIGHT`` at a time,
    straight to the API server; returns when the last one was acknowledged (time.monotonic).
    ``retry_seconds``: keep retrying a write that fails (the server still registering its CRDs)."""
    from kubernetes_asyncio import client

    config = client.Configuration()
    config.host, config.ssl_ca_cert = server.url, server.ca_cert
    config.connection_pool_maxsize = WRITES_IN_FLIGHT
    gate = asyncio.Semaphore(WRITES_IN_FLIGHT)
    async with client.ApiClient(config) as api:
        objects = client.CustomObjectsApi(api)

        async def one(name: str) -> None:
            deadline = time.monotonic() + retry_seconds
            async with gate:
                while True:
                    try:
                        if action == "create":
                            await objects.create_namespaced_custom_object(
                                GROUP, VERSION, namespace, PLURAL, trainjob_body(namespace, name)
                            )
                        else:
                            await objects.patch_namespaced_custom_object_status(
                                GROUP,
                                VERSION,
                                namespace,
                                PLURAL,
                                name,
                                status(action),
                                _content_type="application/merge-patch+json",
                            )
                        return
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(one(name) for name in names))
    return time.monotonic()


def wait_for_first_request(cluster, before: int, limit_seconds: float = 300) -> None:
    """Until the triggerer (a fresh interpreter importing Airflow) sends its first request."""
    deadline = time.monotonic() + limit_seconds
    while len(cluster.requests) == before and time.monotonic() < deadline:
        time.sleep(0.2)


def settle(cluster, warmup: float, quiet_seconds: int, limit_seconds: float = 600) -> None:
    """Wait out the start-up burst (a read of every job, the watches) before counting."""
    started = time.monotonic()
    last, quiet = len(cluster.requests), 0
    while time.monotonic() - started < limit_seconds:
        time.sleep(1)
        now = len(cluster.requests)
        quiet = quiet + 1 if now == last else 0
        last = now
        if quiet >= quiet_seconds and time.monotonic() - started >= warmup:
            return


def calls(cluster, namespace: str, since: int) -> dict[str, int]:
    """The TrainJob requests of ``namespace`` since index ``since``, by kind."""
    counted = {"list": 0, "watch": 0, "get": 0}
    for method, path, query in cluster.queries[since:]:
        if method != "GET" or f"/namespaces/{namespace}/{PLURAL}" not in path:
            continue
        if not path.endswith(f"/{PLURAL}"):
            counted["get"] += 1
        elif (parse_qs(query).get("watch") or [""])[0].lower() == "true":
            counted["watch"] += 1
        else:
            counted["list"] += 1
    return counted


def open_connections(port: int) -> int:
    """Established TCP connections to the proxy's port on loopback (the triggerer's, and the writer's
    none: it writes straight to the server), read from /proc/net/tcp."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED, server side
                count += 1
    return count


def measure(
    cluster, server, mode: str, namespace: str, names: list[str], args, warmup: float, quiet: int
) -> dict:
    context = mp.get_context("spawn")  # a fresh interpreter, like a triggerer process
    parent, child_end = context.Pipe()
    go = context.Event()
    process = context.Process(
        target=child,
        args=(
            mode,
            harness.connection_uri(cluster.url),
            namespace,
            names,
            args.poll,
            child_end,
            go,
            args.tracemalloc,
        ),
    )
    asyncio.run(write_all(server, namespace, names, "running"))
    started_at = len(cluster.requests)
    process.start()
    wait_for_first_request(cluster, started_at)
    if mode == "poll":  # a poll loop never goes quiet: skip one full poll round of start-up
        time.sleep(warmup + args.poll)
    else:
        settle(cluster, warmup, quiet)
    result: dict = {"startup_requests": len(cluster.requests) - started_at}
    if args.tracemalloc:
        go.set()
        result.update(parent.recv())
    before = len(cluster.requests)
    time.sleep(args.window)
    steady = len(cluster.requests) - before
    result["connections"] = open_connections(cluster.port)  # idle pooled ones closed long since
    result["requests_per_job_minute"] = steady / len(names) / (args.window / 60)
    if args.restart:
        before = len(cluster.queries)
        down = time.monotonic()
        server.stop_apiserver()
        time.sleep(RESTART_DOWN_SECONDS)
        server.start_apiserver()
        ready = time.monotonic()
        last_ack = asyncio.run(write_all(server, namespace, names, "complete", retry_seconds=120))
        outcome = parent.recv()
        result.update(outcome)
        result.update(
            {
                "restart_down_s": ready - down,
                "after_restart": calls(cluster, namespace, before),
                "all_seen_after_ready_s": outcome["last_seen"] - ready,
                "writes_s": last_ack - ready,
            }
        )
    else:
        first = time.monotonic()
        last_ack = asyncio.run(write_all(server, namespace, names, "complete"))
        result.update(parent.recv())
        result.update({"writes_s": last_ack - first, "latency_s": result["last_seen"] - last_ack})
    process.join(120)
    result.pop("last_seen", None)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--modes", nargs="+", default=["shared", "per-job"], choices=["shared", "per-job", "poll"]
    )
    parser.add_argument(
        "--per-job-max", type=int, default=1000, help="no per-job or poll run above this many jobs"
    )
    parser.add_argument("--window", type=float, default=330.0)
    parser.add_argument("--poll", type=float, default=10.0)
    parser.add_argument(
        "--restart", action="store_true", help="restart the API server before completing the jobs"
    )
    parser.add_argument(
        "--tracemalloc", action="store_true", help="the child's top allocation sites after start-up"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: check it still runs")
    args = parser.parse_args()
    warmup, quiet = WARMUP_SECONDS, QUIET_SECONDS
    if args.smoke:
        args.jobs, args.window, args.poll, warmup, quiet = (
            SMOKE[k] for k in ("jobs", "window", "poll", "warmup", "quiet")
        )

    from tests.k8s.fake_core import FakeCluster

    if not harness.available():
        print(harness.UNAVAILABLE)
        return 1
    server = harness.ApiServer().start()
    cluster = FakeCluster(server).start()
    rows = []
    try:
        harness.install_trainer(server, "v2.3.0")
        for n in args.jobs:
            namespace = f"bench-{n}"
            names = [f"job-{i:05d}" for i in range(n)]
            started = time.monotonic()
            asyncio.run(write_all(server, namespace, names, "create"))
            print(f"created {n} TrainJobs in {time.monotonic() - started:.1f} s", flush=True)
            for mode in args.modes:
                if mode != "shared" and n > args.per_job_max:
                    continue
                result = measure(cluster, server, mode, namespace, names, args, warmup, quiet)
                rows.append({"jobs": n, "mode": mode, **result})
                for line in rows[-1].pop("tracemalloc", []):
                    print(line)
                print(json.dumps(rows[-1]), flush=True)
    finally:
        cluster.stop()
        server.stop()

    print(
        f"\nOne triggerer process, {args.window:.0f} s steady-state window{', API-server restart' if args.restart else ''}:"
    )
    if args.restart:
        print(
            "| jobs | mode | lists after restart | single-job reads after restart | watches after restart | all seen complete after ready s | of which writes s | peak RSS MB |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            after = row["after_restart"]
            print(
                f"| {row['jobs']} | {row['mode']} | {after['list']} | {after['get']} | {after['watch']} | {row['all_seen_after_ready_s']:.1f} | {row['writes_s']:.1f} | {row['peak_rss_mb']:.0f} |"
            )
        return 0
    print(
        "| jobs | mode | requests / job-minute | connections | CPU s | peak RSS MB | last waiter after last write s | writes s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['jobs']} | {row['mode']} | {row['requests_per_job_minute']:.3f} | {row['connections']} | "
            f"{row['cpu_seconds']:.1f} | {row['peak_rss_mb']:.0f} | {row['latency_s']:.2f} | {row['writes_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
