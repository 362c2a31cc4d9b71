"""Dataset resolution vs the original approach, side by side: MB/s and peak RSS.

    python benchmarks/dataset_resolve.py [--size-mb 1024] [--cases local-jsonl local-parquet s3-jsonl s3-parquet]
    python benchmarks/dataset_resolve.py --smoke   # 1 MB, every case: does it still run?

A chat dataset of ``--size-mb`` of JSONL (and the same records as Parquet) is generated once
into ``--data-dir``. Each case resolves it into a fresh workspace's ``train.jsonl`` twice, each
in a fresh child process so peak RSS (``ru_maxrss`` from ``wait4``) is that run's alone:

- ours: ``resolve_dataset`` (validates every record, streams, atomic rename);
- baseline, the original component's approach: ``datasets.load_dataset("json"|"parquet",
  data_files=...)`` then ``.to_json(lines=True)``; for S3 the object is first downloaded with
  boto3's ``download_file`` (the original then loaded the local copy).

S3 cases read from moto's S3-compatible server on loopback (its own process; the data is
uploaded once per run). Throughput is input MB (the JSONL size, for both formats) per second
of wall time of the child, imports included.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ["local-jsonl", "local-parquet", "s3-jsonl", "s3-parquet"]
#: ``--smoke``: tiny sizes, for the test that keeps the benchmark running (its numbers mean nothing).
SMOKE_SIZE_MB = 1
sys.path.insert(0, str(REPO))

WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "answer",
    "questions",
    "about",
    "data",
    "pipelines",
    "kubernetes",
    "airflow",
    "training",
    "loss",
    "gradient",
    "batch",
    "token",
    "tokenizer",
    "dataset",
    "record",
    "chat",
    "assistant",
    "user",
    "system",
    "prompt",
    "reply",
    "clear",
    "short",
    "helpful",
    "polite",
    "number",
    "city",
    "river",
    "mountain",
    "history",
    "science",
    "music",
    "art",
    "code",
    "python",
]

OURS = """
import sys, time
from airflow_provider_sft.core.dataset import DatasetOptions, S3Options, resolve_dataset
source, workspace, endpoint = sys.argv[1], sys.argv[2], sys.argv[3]
options = DatasetOptions(s3=S3Options(endpoint_url=endpoint, region_name="us-east-1",
                                      access_key_id="testing", secret_access_key="testing"))
stats = resolve_dataset(source, workspace, options)
print(stats.records)
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""

BASELINE = """
import os, sys
source, workspace, endpoint = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(workspace + "/dataset", exist_ok=True)
if source.startswith("s3://"):
    import boto3
    bucket, key = source[5:].split("/", 1)
    local = os.path.join(workspace, os.path.basename(key))
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").download_file(bucket, key, local)
    source = local
import datasets
datasets.disable_progress_bars()
kind = "parquet" if source.endswith(".parquet") else "json"
data = datasets.load_dataset(kind, data_files=source, split="train", cache_dir=workspace + "/hf-cache")
data.to_json(workspace + "/dataset/train.jsonl", lines=True)
print(len(data))
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def record(rng: random.Random) -> dict:
    def text(n: int) -> str:
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.2:  # quotes and line breaks, as real chat text has
            words[rng.randrange(n)] = '"' + words[0] + '"'
        sentence = " ".join(words).capitalize() + "."
        return sentence.replace(" code ", ":\n\n    code\n") if rng.random() < 0.5 else sentence

    messages = [{"role": "system", "content": text(8)}] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 3)):
        messages += [{"role": "user", "content": text(rng.randint(8, 40))}]
        messages += [{"role": "assistant", "content": text(rng.randint(20, 80))}]
    return {"messages": messages}


def generate(data_dir: Path, size_mb: int) -> tuple[Path, Path]:
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl, parquet = data_dir / f"chat-v2-{size_mb}mb.jsonl", data_dir / f"chat-v2-{size_mb}mb.parquet"
    if jsonl.exists() and parquet.exists():
        return jsonl, parquet
    data_dir.mkdir(parents=True, exist_ok=True)
    rng, target = random.Random(7), size_mb << 20
    started = time.monotonic()
    writer = None
    with jsonl.open("wb") as out:
        written, batch = 0, []
        while written < target:
            row = record(rng)
            line = orjson.dumps(row) + b"\n"
            out.write(line)
            written += len(line)
            batch.append(row)
            if len(batch) == 20_000 or written >= target:
                table = pa.Table.from_pylist(batch)
                writer = writer or pq.ParquetWriter(parquet, table.schema)
                writer.write_table(table)
                batch = []
    writer.close()
    print(
        f"generated {jsonl.stat().st_size / 1e6:.0f} MB JSONL, {parquet.stat().st_size / 1e6:.0f} MB Parquet "
        f"in {time.monotonic() - started:.0f} s",
        flush=True,
    )
    return jsonl, parquet


def run_measured(code: str, source: str, workspace: Path, endpoint: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MB and record count of one fresh child process.

    Peak RSS is the child's own ``VmHWM`` at its end: ``ru_maxrss`` from ``wait4`` would also
    count this parent's memory, which the child inherits for the instant between fork and exec.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen(
            [sys.executable, "-c", code, source, str(workspace), endpoint], env=env, stdout=out, stderr=err
        )
        _, status, _usage = os.wait4(child.pid, 0)
        seconds = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"child failed on {source}:\n{err.read().decode()[-3000:]}")
        records, peak_kb = out.read().decode().split()[-2:]
        return seconds, int(peak_kb) / 1024, records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "sft-dataset-bench")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: check it still runs")
    args = parser.parse_args()
    if args.smoke:
        args.size_mb = SMOKE_SIZE_MB
    jsonl, parquet = generate(args.data_dir, args.size_mb)
    input_mb = jsonl.stat().st_size / 1e6

    server = None
    endpoint = "http://127.0.0.1:9"
    if any(case.startswith("s3") for case in args.cases):
        from tests.servers import MotoServer

        server = MotoServer()
        endpoint = server.url
        client = server.client()
        client.create_bucket(Bucket="bench")
        started = time.monotonic()
        for path in (jsonl, parquet):
            client.upload_file(str(path), "bench", path.name)
        print(f"uploaded to moto server in {time.monotonic() - started:.0f} s", flush=True)
    results = []
    try:
        for case in args.cases:
            where, kind = case.split("-")
            path = jsonl if kind == "jsonl" else parquet
            source = str(path) if where == "local" else f"s3://bench/{path.name}"
            row = {"case": case}
            for name, code in (("ours", OURS), ("baseline", BASELINE)):
                with tempfile.TemporaryDirectory(dir=args.data_dir) as workspace:
                    seconds, rss, records = run_measured(code, source, Path(workspace), endpoint)
                    out_mb = (Path(workspace) / "dataset" / "train.jsonl").stat().st_size / 1e6
                row[name] = {
                    "seconds": round(seconds, 1),
                    "mb_per_s": round(input_mb / seconds, 1),
                    "peak_rss_mb": round(rss),
                    "records": int(records),
                    "output_mb": round(out_mb),
                }
                print(
                    f"{case:14} {name:8} {seconds:7.1f} s {input_mb / seconds:7.1f} MB/s "
                    f"peak RSS {rss:6.0f} MB  records {records}",
                    flush=True,
                )
            row["speedup"] = round(row["ours"]["mb_per_s"] / row["baseline"]["mb_per_s"], 2)
            results.append(row)
    finally:
        if server:
            server.stop()
    print()
    print(
        f"| case | ours MB/s | baseline MB/s | speedup | ours peak RSS MB | baseline peak RSS MB |  ({input_mb:.0f} MB JSONL)"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results:
        print(
            f"| {row['case']} | {row['ours']['mb_per_s']} | {row['baseline']['mb_per_s']} | {row['speedup']}x | "
            f"{row['ours']['peak_rss_mb']} | {row['baseline']['peak_rss_mb']} |"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
