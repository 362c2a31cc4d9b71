"""Publishing an exported model to S3, against moto's real S3 server (tests/servers.py).

The model is a real export: the tiny Llama the suite builds, exported by the ``export`` step
(its card and sha256 manifest included) and published by that same step. What was sent is
counted on the wire (a botocore ``before-send`` handler on the publisher's own client), and a
failure is a real one: a request the client cannot send, every attempt.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.dataset.options import S3Options
from airflow_provider_sft.core.errors import InvalidParameterError, PublishError
from airflow_provider_sft.core.pod import steps
from airflow_provider_sft.core.publish import PublishOptions, parse_destination
from airflow_provider_sft.core.publish import s3 as publish_s3_module
from airflow_provider_sft.core.publish.s3 import publish_s3
from tests.servers import MotoServer

SECRET = "pUbl1sh-Secret-NotReal/xyz"
RUN = "manual-20261206-091500-sft-abc123"


@pytest.fixture
def bucket(s3, request) -> str:
    name = f"models-{abs(hash(request.node.name)) % 10**8}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def options(s3) -> S3Options:
    return S3Options(
        endpoint_url=s3.url, region_name="us-east-1", access_key_id="publisher", secret_access_key=SECRET
    )


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    """5 MiB parts (S3's smallest): the tiny model's 10 MB safetensors goes up in 2 parts."""
    monkeypatch.setattr(publish_s3_module, "MULTIPART_THRESHOLD", 5 << 20)
    monkeypatch.setattr(publish_s3_module, "MULTIPART_CHUNKSIZE", 5 << 20)


class Wire:
    """Every request the publisher's S3 client sends: (operation, key, body bytes); optionally
    one request that can never be sent (every attempt fails as if the connection dropped)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        self.fail_part: tuple[str, int] | None = None  # (key suffix, part number)

    def __call__(self, request, event_name: str, **_: object):
        from botocore.exceptions import EndpointConnectionError

        operation = event_name.rsplit(".", 1)[-1]
        url = urlsplit(request.url)
        key = unquote(url.path).split("/", 2)[-1]
        length = request.headers.get("X-Amz-Decoded-Content-Length") or request.headers.get("Content-Length")
        if (
            self.fail_part
            and operation == "UploadPart"
            and key.endswith(self.fail_part[0])
            and parse_qs(url.query).get("partNumber") == [str(self.fail_part[1])]
        ):
            raise EndpointConnectionError(endpoint_url=request.url)
        self.requests.append((operation, key, int(length or 0)))

    def body_bytes(self, *, excluding: str = "") -> int:
        return sum(
            n
            for op, key, n in self.requests
            if op in ("PutObject", "UploadPart") and not key.endswith(excluding)
        )

    def operations(self) -> list[str]:
        return [op for op, _, _ in self.requests]


@pytest.fixture
def wire(monkeypatch) -> Wire:
    counter = Wire()
    original = S3Options.client

    def client(self):
        made = original(self)
        made.meta.events.register("before-send.s3", counter)
        return made

    monkeypatch.setattr(S3Options, "client", client)
    return counter


def finished_run(workspace: Path, tiny_model: Path, name: str = RUN) -> Path:
    """A run whose training ended: its last checkpoint (the tiny model) and its metrics log."""
    run_dir = workspace / c.RUNS_DIR / name
    shutil.copytree(tiny_model, run_dir / c.HF_FORMAT_DIR / "samples_64")
    with (run_dir / c.METRICS_FILE).open("w") as metrics:
        for step in range(1, 9):
            record = {
                "step": step,
                "epoch": 0,
                "avg_loss": 3.0 / step,
                "lr": 1e-4,
                "num_loss_counted_tokens": 900,
            }
            metrics.write(json.dumps(record) + "\n")
    return run_dir


def export_config(run_dir: Path, publish_to: str | None, options: S3Options | None) -> dict:
    settings = PublishOptions.build(s3=options).settings() if options else None
    return {
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / c.FINAL_MODEL_DIR),
        "metrics_path": str(run_dir / c.METRICS_SUMMARY_FILE),
        "latest_path": str(run_dir.parent.parent / c.LATEST_FILE),
        "prune": False,
        "publish_to": publish_to,
        "publish_settings": settings,
    }


def manifest_files(model_dir: Path) -> dict[str, dict]:
    files = json.loads((model_dir / c.MODEL_MANIFEST_FILE).read_text())["files"]
    data = (model_dir / c.MODEL_MANIFEST_FILE).read_bytes()
    return files | {c.MODEL_MANIFEST_FILE: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(obj["Key"] for obj in listed)


def test_the_export_step_publishes_the_model_and_every_object_reads_back_with_its_sha256(
    s3, bucket, options, wire, tiny_model, tmp_path
):
    run_dir = finished_run(tmp_path / "ws", tiny_model)
    lines: list[str] = []
    env = PublishOptions.build(s3=options).secret_env()
    result = steps.export(
        export_config(run_dir, f"s3://{bucket}/team/chat", options), log=lines.append, env=env
    )

    model_dir = Path(result["model_path"])
    files = manifest_files(model_dir)
    assert c.MODEL_MANIFEST_FILE in files and "README.md" in files and "model.safetensors" in files
    prefix = f"team/chat/runs/{RUN}/"
    client = s3.client()
    assert keys(client, bucket) == sorted([*(prefix + name for name in files), "team/chat/latest.json"])
    for name, entry in files.items():
        body = client.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"], name
        head = client.head_object(Bucket=bucket, Key=prefix + name, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] and head["Metadata"]["sha256"] == entry["sha256"]
    big = client.head_object(Bucket=bucket, Key=prefix + "model.safetensors")
    assert big["ETag"].endswith('-2"')  # it went up in two parts: the composite checksum was verified
    assert wire.operations().count("UploadPart") == 2

    pointer = json.loads(client.get_object(Bucket=bucket, Key="team/chat/latest.json")["Body"].read())
    assert pointer["run"] == RUN and pointer["model"] == f"s3://{bucket}/{prefix}"
    assert pointer["files"] == files
    total = sum(entry["bytes"] for entry in files.values())
    assert result["publication"] == {
        "uri": f"s3://{bucket}/{prefix}",
        "pointer": f"s3://{bucket}/team/chat/latest.json",
        "files": len(files),
        "uploaded_bytes": total,
        "skipped_files": 0,
    }
    assert wire.body_bytes(excluding="latest.json") == total  # each file sent once
    assert wire.operations()[-1] == "PutObject" and wire.requests[-1][1].endswith("latest.json")  # last
    (line,) = [line for line in lines if line.startswith("published")]
    assert f"published {len(files)} files to s3://{bucket}/{prefix} in " in line
    assert f"{total} bytes sent, 0 bytes skipped" in line
    local_latest = json.loads((tmp_path / "ws" / c.LATEST_FILE).read_text())
    assert local_latest["published"] == f"s3://{bucket}/{prefix}"
    assert SECRET not in json.dumps(result) + "\n".join(lines)


def exported_model(tmp_path: Path, tiny_model: Path) -> Path:
    run_dir = finished_run(tmp_path / "ws", tiny_model)
    return Path(steps.export(export_config(run_dir, None, None), log=lambda _: None)["model_path"])


def test_a_rerun_sends_no_byte_of_the_model(s3, bucket, options, wire, tiny_model, tmp_path):
    model = exported_model(tmp_path, tiny_model)
    destination = parse_destination(f"s3://{bucket}/m/")
    first = publish_s3(model, destination, run_name=RUN, options=options, log=lambda _: None)
    assert first.uploaded_bytes > 0 and first.skipped_files == 0
    wire.requests.clear()
    lines: list[str] = []
    again = publish_s3(model, destination, run_name=RUN, options=options, log=lines.append)
    assert again.uploaded_bytes == 0 and again.skipped_files == again.files == first.files
    assert wire.body_bytes(excluding="latest.json") == 0  # on the wire, not only in the result
    assert "UploadPart" not in wire.operations() and "CreateMultipartUpload" not in wire.operations()
    assert [key for op, key, _ in wire.requests if op == "PutObject"] == ["m/latest.json"]
    assert (
        f"0 bytes sent, {first.uploaded_bytes} bytes skipped ({first.files} files already there" in lines[0]
    )


def test_a_changed_object_is_uploaded_again(s3, bucket, options, wire, tiny_model, tmp_path):
    model = exported_model(tmp_path, tiny_model)
    destination = parse_destination(f"s3://{bucket}/")
    publish_s3(model, destination, run_name=RUN, options=options, log=lambda _: None)
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"runs/{RUN}/config.json", Body=b"{}")  # someone overwrote it
    wire.requests.clear()
    again = publish_s3(model, destination, run_name=RUN, options=options, log=lambda _: None)
    size = (model / "config.json").stat().st_size
    assert again.uploaded_bytes == size and again.skipped_files == again.files - 1
    assert (
        client.get_object(Bucket=bucket, Key=f"runs/{RUN}/config.json")["Body"].read()
        == (model / "config.json").read_bytes()
    )


def test_a_failure_midway_keeps_the_previous_pointer_and_says_what_was_uploaded(
    s3, bucket, options, wire, tiny_model, tmp_path
):
    model = exported_model(tmp_path, tiny_model)
    destination = parse_destination(f"s3://{bucket}/chat/")
    publish_s3(model, destination, run_name="run-a", options=options, log=lambda _: None)
    client = s3.client()
    before = client.get_object(Bucket=bucket, Key="chat/latest.json")["Body"].read()

    wire.fail_part = ("run-b/model.safetensors", 2)  # the second part of the big file never gets through
    with pytest.raises(PublishError) as failed:
        publish_s3(model, destination, run_name="run-b", options=options, log=lambda _: None)
    message = str(failed.value)
    assert message.startswith("publishing to S3 failed: ")
    assert f"s3://{bucket}/chat/runs/run-b/model.safetensors: cannot reach the S3 endpoint" in message
    assert f"s3://{bucket}/chat/latest.json was not moved" in message
    assert "\n" not in message and SECRET not in message
    uploaded = int(re.search(r"\. (\d+) of 8 files uploaded and verified", message).group(1))
    assert f"{uploaded} of 8 files uploaded and verified under s3://{bucket}/chat/runs/run-b/" in message
    partial = keys(client, bucket, "chat/runs/run-b/")
    assert "chat/runs/run-b/model.safetensors" not in partial and len(partial) >= uploaded
    assert "chat/runs/run-b/sft_manifest.json" in partial or uploaded < 8
    assert client.get_object(Bucket=bucket, Key="chat/latest.json")["Body"].read() == before  # byte-identical
    assert json.loads(before)["model"].endswith("/runs/run-a/")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the failed one was aborted

    wire.fail_part = None  # the re-run sends only what is missing, then moves the pointer
    wire.requests.clear()
    done = publish_s3(model, destination, run_name="run-b", options=options, log=lambda _: None)
    there = sum((model / key.rsplit("/", 1)[-1]).stat().st_size for key in partial)
    total = sum(entry["bytes"] for entry in manifest_files(model).values())
    assert done.uploaded_bytes == total - there == wire.body_bytes(excluding="latest.json")
    after = json.loads(client.get_object(Bucket=bucket, Key="chat/latest.json")["Body"].read())
    assert after["model"] == f"s3://{bucket}/chat/runs/run-b/"


def test_a_first_publish_that_fails_leaves_no_pointer(s3, bucket, options, wire, tiny_model, tmp_path):
    model = exported_model(tmp_path, tiny_model)
    wire.fail_part = ("model.safetensors", 1)
    with pytest.raises(PublishError, match=r"latest\.json was not moved"):
        publish_s3(model, parse_destination(f"s3://{bucket}/"), run_name=RUN, options=options, log=print)
    assert "latest.json" not in keys(s3.client(), bucket)


@pytest.mark.parametrize(
    "value",
    [
        "s3://",
        "s3:///prefix/",
        "s3://bucket/a/../b/",
        "s3://bucket/x?versionId=1",
        "gs://bucket/x",
        "/data/models",
        "s3://Bad_Bucket/x/",
        "s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@bucket/x/",
        "hf://org/na%me",
        "hf://-org/..name",
        "hf://org/name@a@b",
        "hf://org/name@",
        "hf://user:hf_tokenSecret@org/name",
    ],
)
def test_a_bad_destination_is_refused_before_the_export_writes_anything(value, tiny_model, tmp_path):
    run_dir = finished_run(tmp_path / "ws", tiny_model)
    with pytest.raises(InvalidParameterError, match=r"publish_to: ") as raised:
        steps.export(export_config(run_dir, value, S3Options()), log=print)
    assert "Secret" not in str(raised.value) and "secret" not in str(raised.value)  # never echoed
    assert not (run_dir / c.FINAL_MODEL_DIR).exists() and not (tmp_path / "ws" / c.LATEST_FILE).exists()


def test_a_missing_bucket_is_one_line_and_nothing_is_sent(s3, options, wire, tiny_model, tmp_path):
    model = exported_model(tmp_path, tiny_model)
    with pytest.raises(PublishError) as failed:
        publish_s3(
            model, parse_destination("s3://no-such-bucket/m/"), run_name=RUN, options=options, log=print
        )
    assert "s3://no-such-bucket/: S3 refused the request: NoSuchBucket: the bucket does not exist" in str(
        failed.value
    )
    assert "0 of 8 files uploaded" in str(failed.value) and SECRET not in str(failed.value)
    assert wire.operations() == ["HeadBucket"]


def test_missing_credentials_are_refused_before_anything_is_sent(
    s3, bucket, wire, tiny_model, tmp_path, monkeypatch
):
    model = exported_model(tmp_path, tiny_model)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    no_keys = S3Options(endpoint_url=s3.url, region_name="us-east-1")
    with pytest.raises(PublishError, match=rf"s3://{bucket}/: no S3 credentials \(set aws_conn_id"):
        publish_s3(model, parse_destination(f"s3://{bucket}/"), run_name=RUN, options=no_keys, log=print)
    assert keys(s3.client(), bucket) == [] and wire.body_bytes() == 0


def test_wrong_credentials_are_one_line_without_the_secret(tiny_model, tmp_path):
    server = MotoServer(enforce_auth_after=1)  # the bucket is made unauthenticated, then keys count
    try:
        server.client().create_bucket(Bucket="guarded")
        model = exported_model(tmp_path, tiny_model)
        wrong = S3Options(
            endpoint_url=server.url, region_name="us-east-1", access_key_id="nobody", secret_access_key=SECRET
        )
        with pytest.raises(PublishError) as failed:
            publish_s3(model, parse_destination("s3://guarded/"), run_name=RUN, options=wrong, log=print)
    finally:
        server.stop()
    message = str(failed.value)
    assert "s3://guarded/: S3 refused the request: 403: access denied" in message, message
    assert SECRET not in message and "0 of 8 files uploaded" in message


def test_a_model_without_a_manifest_is_refused(options, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(
        PublishError, match=r"not an exported model .*sft_manifest\.json.*nothing was uploaded"
    ):
        publish_s3(
            tmp_path / "model", parse_destination("s3://bkt/"), run_name=RUN, options=options, log=print
        )


def test_a_file_changed_since_the_export_is_refused_and_no_pointer_moves(
    s3, bucket, options, tiny_model, tmp_path
):
    model = exported_model(tmp_path, tiny_model)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of the big (multipart) file flipped after the export
    weights.unlink()  # a hard link to the checkpoint: write a new file, not through the link
    weights.write_bytes(bytes(data))
    with pytest.raises(PublishError) as failed:
        publish_s3(model, parse_destination(f"s3://{bucket}/"), run_name=RUN, options=options, log=print)
    assert f"{weights}: its sha256 is no longer the manifest's (changed since the export)" in str(
        failed.value
    )
    assert "latest.json" not in keys(s3.client(), bucket)


def test_an_unreachable_endpoint_is_one_line_and_nothing_is_written(tiny_model, tmp_path):
    from tests.servers import free_port

    model = exported_model(tmp_path, tiny_model)
    nowhere = S3Options(
        endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a", secret_access_key=SECRET
    )
    with pytest.raises(PublishError) as failed:
        publish_s3(model, parse_destination("s3://models/x/"), run_name=RUN, options=nowhere, log=print)
    message = str(failed.value)
    assert message.startswith(
        "publishing to S3 failed: s3://models/: cannot reach the S3 endpoint http://127.0.0.1:"
    )
    assert "0 of 8 files uploaded" in message and "s3://models/x/latest.json was not moved" in message
    assert SECRET not in message


def test_a_retried_export_task_completes_the_publish_sending_only_what_is_missing(
    s3, bucket, options, wire, tiny_model, tmp_path
):
    """What Airflow's retry of the export task does after a failed publish: the step runs again
    (export, then publish); the objects the failed attempt verified are not sent twice."""
    run_dir = finished_run(tmp_path / "ws", tiny_model)
    config = export_config(run_dir, f"s3://{bucket}/team/", options)
    env = PublishOptions.build(s3=options).secret_env()
    wire.fail_part = ("model.safetensors", 2)
    with pytest.raises(PublishError, match=r"team/latest\.json was not moved"):
        steps.export(config, log=lambda _: None, env=env)
    assert not (tmp_path / "ws" / c.LATEST_FILE).exists()  # the local pointer waits for the publish too
    client = s3.client()
    partial = {  # what the failed attempt left, by the sha256 it was uploaded with
        key.rsplit("/", 1)[-1]: client.head_object(Bucket=bucket, Key=key)["Metadata"]["sha256"]
        for key in keys(client, bucket, f"team/runs/{RUN}/")
    }
    assert "model.safetensors" not in partial

    wire.fail_part = None
    wire.requests.clear()
    result = steps.export(config, log=lambda _: None, env=env)
    model = Path(result["model_path"])
    files = manifest_files(model)
    same = [
        name for name, sha256 in partial.items() if files[name]["sha256"] == sha256
    ]  # the card may differ
    assert same  # the small files went up while the big one's part kept failing
    publication = result["publication"]
    assert publication["uploaded_bytes"] == sum(e["bytes"] for n, e in files.items() if n not in same)
    assert publication["uploaded_bytes"] == wire.body_bytes(excluding="latest.json")
    assert publication["skipped_files"] == len(same)
    pointer = json.loads(s3.client().get_object(Bucket=bucket, Key="team/latest.json")["Body"].read())
    assert pointer["files"] == files
