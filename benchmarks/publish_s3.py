"""Publishing a model to S3 vs ``aws s3 cp --recursive`` semantics, side by side: MB/s.

    python benchmarks/publish_s3.py [--shards-mb 128 64] [--repeats 3]
    python benchmarks/publish_s3.py --smoke   # a 12 MB model, once: does it still run?

A model of a realistic shape is generated once and exported the way the export step exports
one (``export_model``: hard links and a sha256 manifest): safetensors shards of ``--shards-mb``
(random bytes in real safetensors files; the first goes up in parts), a 4 MB tokenizer.json,
config, generation config, tokenizer config, chat template, model card. Then, alternating, each
repeat uploads it to a fresh prefix of moto's S3 server (loopback, its own process):

- ours: ``publish_s3`` (every file through one managed transfer, parallel across files and
  parts, each object's SHA256 checksum sent, then read back and compared with the manifest's,
  composite for multipart; ``latest.json`` last);
- ours without the checks: the same managed transfer and request checksums, nothing read
  back (the difference to ours is what verifying costs);
- baseline: what ``aws s3 cp --recursive`` is taken to do here, boto3's ``upload_file`` of each
  file in turn (default ``TransferConfig``: multipart above 8 MB, 10 threads per file), no
  checksum checked afterwards;
- re-run: ``publish_s3`` of the same model to the same prefix again (every object checked, 0
  bytes sent).

MB/s is the model's size over the wall time of the upload (the client made, the first request
included). The objects are deleted after each run (moto keeps them in memory).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMOKE_SHARDS_MB = [6, 2]  # the first still goes up in parts (5 MiB parts in smoke mode)
TOKENIZER_MB = 4


def make_model(root: Path, shards_mb: list[int]) -> Path:
    """An exported model: a checkpoint of the given shards, exported by ``export_model``."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from airflow_provider_sft.core import constants as c
    from airflow_provider_sft.core.results.export import export_model

    run_dir = root / c.RUNS_DIR / "bench-run"
    checkpoint = run_dir / c.HF_FORMAT_DIR / "samples_1000"
    checkpoint.mkdir(parents=True)
    rng = np.random.default_rng(0)
    count = len(shards_mb)
    weight_map = {}
    for index, size in enumerate(shards_mb, 1):
        name = f"model-{index:05d}-of-{count:05d}.safetensors"
        save_file(
            {f"layer{index}.w": rng.integers(0, 255, size << 20, dtype=np.uint8)}, str(checkpoint / name)
        )
        weight_map[f"layer{index}.w"] = name
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    (checkpoint / "generation_config.json").write_text(json.dumps({"max_new_tokens": 256}))
    (checkpoint / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096}))
    (checkpoint / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    vocab = {f"tok{i}": i for i in range((TOKENIZER_MB << 20) // 16)}
    (checkpoint / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    card = {"README.md": b"---\nlibrary_name: transformers\n---\n# bench\n"}
    return Path(export_model(run_dir, run_dir / c.FINAL_MODEL_DIR, extra_files=card).model_path)


def model_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.rglob("*") if p.is_file())


def ours(model: Path, bucket: str, prefix: str, options) -> tuple[float, int]:
    from airflow_provider_sft.core.publish import parse_destination
    from airflow_provider_sft.core.publish.s3 import publish_s3

    started = time.perf_counter()
    done = publish_s3(
        model,
        parse_destination(f"s3://{bucket}/{prefix}"),
        run_name="bench",
        options=options,
        log=lambda _: None,
    )
    return time.perf_counter() - started, done.uploaded_bytes


def transfer_only(model: Path, bucket: str, prefix: str, options) -> tuple[float, int]:
    """Ours without the checks: the same managed transfer and SHA256 request checksums, no
    read-back, no manifest, no pointer (what the checks cost is the difference to ours)."""
    from boto3.s3.transfer import create_transfer_manager

    from airflow_provider_sft.core.publish.s3 import transfer_config

    started = time.perf_counter()
    files = sorted(p for p in model.rglob("*") if p.is_file())
    with create_transfer_manager(options.client(), transfer_config()) as manager:
        uploads = [
            manager.upload(
                str(p),
                bucket,
                f"{prefix}{p.relative_to(model).as_posix()}",
                extra_args={"ChecksumAlgorithm": "SHA256"},
            )
            for p in files
        ]
        for upload in uploads:
            upload.result()
    return time.perf_counter() - started, sum(p.stat().st_size for p in files)


def baseline(model: Path, bucket: str, prefix: str, options) -> tuple[float, int]:
    started = time.perf_counter()
    client = options.client()
    sent = 0
    for path in sorted(p for p in model.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}{path.relative_to(model).as_posix()}")
        sent += path.stat().st_size
    return time.perf_counter() - started, sent


def empty(client, bucket: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if objects:
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards-mb", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a 12 MB model, once: check it still runs")
    args = parser.parse_args()
    from airflow_provider_sft.core.dataset.options import S3Options
    from airflow_provider_sft.core.publish import s3 as publish_module
    from tests.servers import MotoServer

    if args.smoke:
        args.shards_mb, args.repeats = SMOKE_SHARDS_MB, 1
        publish_module.MULTIPART_THRESHOLD = publish_module.MULTIPART_CHUNKSIZE = 5 << 20
    server = MotoServer()
    try:
        with tempfile.TemporaryDirectory(prefix="sft-publish-bench-") as root:
            model = make_model(Path(root), args.shards_mb)
            size = model_bytes(model)
            files = sum(1 for p in model.rglob("*") if p.is_file())
            options = S3Options(
                endpoint_url=server.url, region_name="us-east-1", access_key_id="k", secret_access_key="s"
            )
            client = server.client()
            client.create_bucket(Bucket="bench")
            times: dict[str, list[float]] = {"ours": [], "transfer": [], "baseline": [], "re-run": []}
            for repeat in range(args.repeats):
                order = [("ours", ours), ("transfer", transfer_only), ("baseline", baseline)]
                for name, upload in order[repeat % 3 :] + order[: repeat % 3]:  # each goes first in turn
                    seconds, sent = upload(model, "bench", f"{name}-{repeat}/", options)
                    assert sent == size, (name, sent, size)
                    times[name].append(seconds)
                    if name == "ours":  # the same model again: every object checked, nothing sent
                        seconds, sent = ours(model, "bench", f"{name}-{repeat}/", options)
                        assert sent == 0, sent
                        times["re-run"].append(seconds)
                    empty(client, "bench")
    finally:
        server.stop()

    mb = size / 1e6
    print(
        f"model: {files} files, {mb:.1f} MB (shards {args.shards_mb} MiB); {args.repeats} repeat(s); "
        f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print("| upload | median s | MB/s | runs (s) |")
    print("| --- | --- | --- | --- |")
    for name, label in (
        ("ours", "ours (publish_s3)"),
        ("transfer", "ours without the checks"),
        ("baseline", "upload_file each in turn"),
        ("re-run", "ours, re-run"),
    ):
        median = statistics.median(times[name])
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {label} | {median:.2f} | {mb / median:.1f} | {runs} |")
    ratio = statistics.median(times["baseline"]) / statistics.median(times["ours"])
    print(f"speedup ours/baseline = {ratio:.2f}")


if __name__ == "__main__":
    main()
