"""Dataset sources over the network, against real servers on loopback (see tests/servers.py).

S3: moto's S3-compatible server in its own process, reached by boto3 at a custom endpoint.
HTTP: the standard library's file server. HuggingFace: the real ``huggingface_hub`` client
pointed at a loopback stand-in of the Hub's REST API (it stands in for huggingface.co,
which these machines cannot reach).
"""

from __future__ import annotations

import http.server
import json

import pytest

from airflow_provider_sft.core.dataset import DatasetOptions, S3Options, resolve_dataset
from airflow_provider_sft.core.errors import DatasetError
from tests.dataset_files import (
    GOOD,
    ROWS,
    assert_nothing_written,
    chat,
    gzip_bytes,
    jsonl_bytes,
    parquet_bytes,
    read_output,
    zstd_bytes,
)
from tests.servers import HubStandIn, MotoServer, commit_of, serve_directory

SECRET = "s3cr3t-NotARealSecretKey/abc"
HF_TOKEN = "hf_StandInTokenNotReal1234"


# --- S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    server = MotoServer()
    client = server.client()
    client.create_bucket(Bucket="data")
    client.put_object(Bucket="data", Key="single/chat.jsonl", Body=jsonl_bytes(ROWS))
    client.put_object(Bucket="data", Key="shards/part-000.jsonl.gz", Body=gzip_bytes(jsonl_bytes(ROWS[:2])))
    client.put_object(Bucket="data", Key="shards/part-001.parquet", Body=parquet_bytes(ROWS[2:4]))
    client.put_object(
        Bucket="data", Key="shards/sub/part-002.jsonl.zst", Body=zstd_bytes(jsonl_bytes(ROWS[4:]))
    )
    client.put_object(Bucket="data", Key="shards/_SUCCESS", Body=b"")
    client.put_object(Bucket="data", Key="shards/README.md", Body=b"# not data")
    client.put_object(Bucket="data", Key="bad/chat.jsonl", Body=jsonl_bytes([GOOD, GOOD, {"messages": "x"}]))
    client.put_object(Bucket="data", Key="escape/../../x.jsonl", Body=jsonl_bytes([GOOD]))
    yield server
    server.stop()


def s3_options(server, **overrides):
    values = {"endpoint_url": server.url, "region_name": "us-east-1", "access_key_id": "testing"}
    return DatasetOptions(s3=S3Options(**{**values, "secret_access_key": "testing", **overrides}))


def test_s3_single_object(s3, tmp_path):
    stats = resolve_dataset("s3://data/single/chat.jsonl", tmp_path, s3_options(s3))
    assert read_output(tmp_path) == ROWS
    assert (stats.source, stats.files, stats.records) == ("s3://data/single/chat.jsonl", 1, 5)


@pytest.mark.parametrize("location", ["s3://data/shards/", "s3://data/shards"])
def test_s3_prefix_of_mixed_shards_in_key_order(s3, tmp_path, location):
    stats = resolve_dataset(location, tmp_path, s3_options(s3))
    assert read_output(tmp_path) == ROWS
    assert stats.files == 3


def test_s3_unchanged_objects_are_reused_by_etag(s3, tmp_path):
    first = resolve_dataset("s3://data/shards/", tmp_path, s3_options(s3))
    assert resolve_dataset("s3://data/shards/", tmp_path, s3_options(s3)).reused
    s3.client().put_object(Bucket="data", Key="shards/part-001.parquet", Body=parquet_bytes(ROWS[2:3]))
    again = resolve_dataset("s3://data/shards/", tmp_path, s3_options(s3))
    assert not again.reused and again.records == first.records - 1
    s3.client().put_object(Bucket="data", Key="shards/part-001.parquet", Body=parquet_bytes(ROWS[2:4]))


def test_s3_credentials_from_the_environment(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    options = DatasetOptions(s3=S3Options(endpoint_url=s3.url, region_name="us-east-1"))
    assert resolve_dataset("s3://data/single/chat.jsonl", tmp_path, options).records == 5


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (
            "s3://missing-bucket/chat.jsonl",
            "s3://missing-bucket/chat.jsonl: S3 refused the request: NoSuchBucket",
        ),
        (
            "s3://data/single/nope.jsonl",
            "s3://data/single/nope.jsonl: no such object, and no data files under",
        ),
        ("s3://data/empty-prefix/", "no data files under the prefix empty-prefix/"),
        ("s3://data/bad/chat.jsonl", "s3://data/bad/chat.jsonl:3: field 'messages' must be a non-empty list"),
        ("s3://data/escape/", "key would resolve outside the prefix; refused"),
        ("s3:///chat.jsonl", "an S3 URL needs a bucket"),
    ],
)
def test_s3_errors_name_the_object(s3, tmp_path, location, message):
    with pytest.raises(DatasetError) as info:
        resolve_dataset(location, tmp_path, s3_options(s3))
    assert message in str(info.value)
    assert_nothing_written(tmp_path)


def test_s3_unreachable_endpoint(tmp_path):
    from tests.servers import free_port

    options = DatasetOptions(
        s3=S3Options(endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="a", secret_access_key="b")
    )
    with pytest.raises(DatasetError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1"):
        resolve_dataset("s3://data/chat.jsonl", tmp_path, options)


@pytest.fixture(scope="module")
def s3_with_auth():
    """A second server that checks IAM credentials after its set-up requests."""
    server = MotoServer(enforce_auth_after=5)
    iam = server.client("iam")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(policy))
    client = server.client()
    client.create_bucket(Bucket="private")
    client.put_object(Bucket="private", Key="data/chat.jsonl", Body=jsonl_bytes(ROWS))
    yield server, key["AccessKeyId"], key["SecretAccessKey"]
    server.stop()


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("unknown-key", "InvalidAccessKeyId: the access key id is not known to the server"),
        ("wrong-secret", "SignatureDoesNotMatch: the secret access key is wrong"),
    ],
)
def test_s3_wrong_credentials_are_named_and_never_echoed(s3_with_auth, tmp_path, which, message):
    server, key_id, secret = s3_with_auth
    wrong = {"unknown-key": ("AKIAUNKNOWNUNKNOWN00", SECRET), "wrong-secret": (key_id, SECRET)}[which]
    options = DatasetOptions(
        s3=S3Options(
            endpoint_url=server.url,
            region_name="us-east-1",
            access_key_id=wrong[0],
            secret_access_key=wrong[1],
        )
    )
    with pytest.raises(DatasetError) as info:
        resolve_dataset("s3://private/data/", tmp_path, options)
    assert message in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in repr(options)
    assert_nothing_written(tmp_path)
    right = DatasetOptions(
        s3=S3Options(
            endpoint_url=server.url, region_name="us-east-1", access_key_id=key_id, secret_access_key=secret
        )
    )
    assert resolve_dataset("s3://private/data/", tmp_path, right).records == 5


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    (root / "chat.jsonl").write_bytes(jsonl_bytes(ROWS))
    (root / "chat.parquet").write_bytes(parquet_bytes(ROWS))
    (root / "chat.json.gz").write_bytes(gzip_bytes(json.dumps(ROWS).encode()))
    (root / "download").write_bytes(zstd_bytes(jsonl_bytes(ROWS)))  # no suffix: sniffed
    (root / "bad.jsonl").write_bytes(jsonl_bytes([GOOD, '{"messages": [']))
    with serve_directory(root) as url:
        yield url


@pytest.mark.parametrize("name", ["chat.jsonl", "chat.parquet", "chat.json.gz", "download"])
def test_http_sources(http_root, tmp_path, name):
    stats = resolve_dataset(f"{http_root}/{name}", tmp_path)
    assert read_output(tmp_path) == ROWS and stats.source == f"{http_root}/{name}"
    assert resolve_dataset(f"{http_root}/{name}", tmp_path).reused  # Last-Modified unchanged


def test_http_signed_query_and_user_info_never_appear(http_root, tmp_path):
    url = http_root.replace("http://", "http://user:pa55word@") + "/missing.jsonl?X-Amz-Signature=abcdef"
    with pytest.raises(DatasetError) as info:
        resolve_dataset(url, tmp_path)
    assert "HTTP 404" in str(info.value) and "/missing.jsonl" in str(info.value)
    assert "pa55word" not in str(info.value) and "abcdef" not in str(info.value)
    assert_nothing_written(tmp_path)


def test_http_bad_record_names_the_url_and_line(http_root, tmp_path):
    with pytest.raises(DatasetError, match=r"/bad.jsonl:2: invalid JSON"):
        resolve_dataset(f"{http_root}/bad.jsonl", tmp_path)
    assert_nothing_written(tmp_path)


def test_http_unreachable_server(tmp_path):
    from tests.servers import free_port

    with pytest.raises(DatasetError, match="cannot reach the server"):
        resolve_dataset(f"http://127.0.0.1:{free_port()}/chat.jsonl", tmp_path)


# --- HuggingFace Hub (stand-in on loopback) -----------------------------------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    main = root / "acme" / "chat" / "main"
    (main / "data").mkdir(parents=True)
    (main / "README.md").write_text("---\nlicense: mit\n---\n")
    (main / "data" / "train-00000-of-00002.parquet").write_bytes(parquet_bytes(ROWS[:3]))
    (main / "data" / "train-00001-of-00002.parquet").write_bytes(parquet_bytes(ROWS[3:]))
    (main / "data" / "test-00000-of-00001.parquet").write_bytes(parquet_bytes([GOOD]))
    v1 = root / "acme" / "chat" / "v1"
    v1.mkdir()
    (v1 / "train.jsonl").write_bytes(jsonl_bytes([GOOD]))
    subsets = root / "acme" / "multi" / "main"
    (subsets / "fr").mkdir(parents=True)
    (subsets / "en").mkdir()
    (subsets / "fr" / "train.jsonl").write_bytes(jsonl_bytes([chat(("Bonjour", "Salut"))]))
    (subsets / "en" / "train.jsonl").write_bytes(jsonl_bytes([chat(("Hello", "Hi"))]))
    private = root / "acme" / "private" / "main"
    private.mkdir(parents=True)
    (private.parent / ".private").touch()
    (private / "alpaca.jsonl").write_bytes(jsonl_bytes([{"instruction": "Say hi", "output": "hi"}]))
    server = HubStandIn(root, HF_TOKEN)
    yield server
    server.stop()


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the test suite runs offline


def hub_options(hub, **values):
    return DatasetOptions(hf_endpoint=hub.url, **values)


@pytest.mark.parametrize("location", ["acme/chat", "hf://acme/chat", "hf://datasets/acme/chat"])
def test_hub_dataset_train_split_from_parquet_shards(hub, online, tmp_path, location):
    stats = resolve_dataset(location, tmp_path, hub_options(hub))
    assert read_output(tmp_path) == ROWS and stats.files == 2
    assert stats.source == "hf://acme/chat"


def test_hub_split_revision_and_subset(hub, online, tmp_path):
    assert read_output_of(resolve_dataset("acme/chat:test", tmp_path / "a", hub_options(hub))) == [GOOD]
    assert read_output_of(resolve_dataset("acme/chat@v1", tmp_path / "b", hub_options(hub))) == [GOOD]
    pinned = resolve_dataset("acme/chat", tmp_path / "c", hub_options(hub, revision=commit_of("v1")))
    assert read_output_of(pinned) == [GOOD]
    fr = resolve_dataset("acme/multi", tmp_path / "d", hub_options(hub, subset="fr"))
    assert read_output_of(fr) == [chat(("Bonjour", "Salut"))]


def read_output_of(stats):
    return [json.loads(line) for line in open(stats.path)]


def test_hub_reuse_asks_only_for_the_commit(hub, online, tmp_path):
    resolve_dataset("acme/chat", tmp_path, hub_options(hub))
    hub.requests_seen.clear()
    assert resolve_dataset("acme/chat", tmp_path, hub_options(hub)).reused
    assert hub.requests_seen == ["/api/datasets/acme/chat"]


def test_hub_private_dataset_needs_the_token(hub, online, tmp_path):
    with pytest.raises(DatasetError, match=r"no such dataset .* or it is private and the token"):
        resolve_dataset("acme/private", tmp_path, hub_options(hub, mapping="instruction"))
    assert_nothing_written(tmp_path)
    options = hub_options(hub, mapping="instruction", hf_token=HF_TOKEN)
    assert read_output_of(resolve_dataset("acme/private", tmp_path, options)) == [chat(("Say hi", "hi"))]
    assert HF_TOKEN not in repr(options)


@pytest.mark.parametrize(
    ("location", "values", "message"),
    [
        ("acme/nothing", {}, "hf://acme/nothing: no such dataset"),
        ("acme/chat@v9", {}, "revision 'v9' does not exist"),
        ("acme/chat:validation", {}, "no data files for split 'validation'"),
        ("acme/multi", {"subset": "de"}, "no data files for subset 'de', split 'train'"),
    ],
)
def test_hub_errors(hub, online, tmp_path, location, values, message):
    with pytest.raises(DatasetError, match=message):
        resolve_dataset(location, tmp_path, hub_options(hub, **values))
    assert_nothing_written(tmp_path)


def test_hub_offline_mode_is_named(hub, tmp_path):
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE is set"):
        resolve_dataset("acme/chat", tmp_path, hub_options(hub))


# --- the Airflow operator with its connections ----------------------------------------------------


def test_operator_reads_s3_through_an_aws_connection(s3, tmp_path, monkeypatch, capsys):
    from airflow_provider_sft.operators.dataset import ResolveDatasetOperator

    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"region_name": "us-east-1", "service_config": {"s3": {"endpoint_url": s3.url}}},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MINIO", json.dumps(connection))
    operator = ResolveDatasetOperator(
        task_id="resolve", source="s3://data/shards/", workspace=str(tmp_path), aws_conn_id="minio"
    )
    result = operator.execute({})
    assert result["records"] == 5 and result["files"] == 3 and result["source"] == "s3://data/shards/"
    log = capsys.readouterr().out  # Airflow's task logging writes to stdout here
    assert "Resolved dataset s3://data/shards/: 5 records (0 skipped) from 3 file(s)" in log


def test_operator_reads_the_hub_through_a_huggingface_connection(hub, online, tmp_path, monkeypatch, capsys):
    from airflow_provider_sft.operators.dataset import ResolveDatasetOperator

    connection = {
        "conn_type": "huggingface",
        "host": hub.url,
        "password": HF_TOKEN,
        "extra": {"revision": "main"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_HUB", json.dumps(connection))
    operator = ResolveDatasetOperator(
        task_id="resolve",
        source="acme/private",
        workspace=str(tmp_path),
        mapping="instruction",
        hf_conn_id="hub",
    )
    result = operator.execute({})
    log = capsys.readouterr().out
    assert result["records"] == 1 and result["source"] == "hf://acme/private@main"
    assert "Resolved dataset hf://acme/private@main: 1 records" in log
    assert HF_TOKEN not in json.dumps(result) and HF_TOKEN not in log


def test_huggingface_connection_test_button_against_the_stand_in(hub, online, monkeypatch):
    from airflow_provider_sft.hooks.huggingface import HuggingFaceHook

    monkeypatch.setenv(
        "AIRFLOW_CONN_HUB", json.dumps({"conn_type": "huggingface", "host": hub.url, "password": HF_TOKEN})
    )
    assert HuggingFaceHook("hub").test_connection() == (True, "Authenticated as tester")
    monkeypatch.setenv(
        "AIRFLOW_CONN_HUB", json.dumps({"conn_type": "huggingface", "host": hub.url, "password": "hf_wrong"})
    )
    ok, message = HuggingFaceHook("hub").test_connection()
    assert not ok and "hf_wrong" not in message


class _Flaky(http.server.SimpleHTTPRequestHandler):
    """Answers 503 to the first ``failures`` GETs of each path (HEAD always works)."""

    failures = 2
    seen: dict = {}

    def log_message(self, *args):
        pass

    def do_GET(self):
        count = self.seen[self.path] = self.seen.get(self.path, 0) + 1
        if count <= self.failures or self.path.startswith("/always"):
            self.send_error(503, "Busy")
            return
        super().do_GET()


def test_http_transient_errors_are_retried(tmp_path, monkeypatch):
    from airflow_provider_sft.core.dataset import sources

    monkeypatch.setattr(sources, "HTTP_BACKOFF_S", 0.01)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "chat.jsonl").write_bytes(jsonl_bytes(ROWS))
    (tmp_path / "www" / "always.jsonl").write_bytes(jsonl_bytes(ROWS))
    with serve_directory(tmp_path / "www", _Flaky) as url:
        assert resolve_dataset(f"{url}/chat.jsonl", tmp_path / "ws").records == 5
        assert _Flaky.seen["/chat.jsonl"] == 3
        with pytest.raises(DatasetError, match="HTTP 503 Busy after 4 attempts"):
            resolve_dataset(f"{url}/always.jsonl", tmp_path / "ws2")
        assert _Flaky.seen["/always.jsonl"] == 4
    assert_nothing_written(tmp_path / "ws2")
