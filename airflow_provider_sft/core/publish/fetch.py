"""Fetch a published model back: what a consumer of the model's asset does on a machine that does
not mount the workspace (another worker, another cluster).

The inverse of :func:`~airflow_provider_sft.core.publish.publish`: the files an S3 run prefix's
``sft_manifest.json`` lists (``s3://bucket/prefix/runs/<run>/``), or a Hub revision
(``hf://org/name@<commit>``), into a local directory, then every file checked against that
manifest (names, sizes, sha256), so a model damaged or changed on the way is refused rather than
evaluated or served.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.dataset.options import RemoteAccess
from airflow_provider_sft.core.errors import InvalidParameterError, PublishError
from airflow_provider_sft.core.publish import Logger
from airflow_provider_sft.core.publish.manifest import damaged_files


def fetch_model(uri: str, into: Path, *, access: RemoteAccess, log: Logger) -> Path:
    """The published model at ``uri`` downloaded into ``into`` (made if missing), verified."""
    into.mkdir(parents=True, exist_ok=True)
    if uri.startswith("s3://"):
        files = _fetch_s3(uri, into, access)
    elif uri.startswith("hf://"):
        files = _fetch_hub(uri, into, access)
    else:
        raise InvalidParameterError({"model": f"{uri!r}: fetch an s3:// run prefix or an hf:// model"})
    damaged = damaged_files(into, outcome=f"the model fetched from {uri} is refused")  # names, sizes, sha256
    if damaged:
        raise PublishError(f"{uri}: {', '.join(damaged)} do not match {c.MODEL_MANIFEST_FILE}: refused")
    log(f"fetched {uri} ({files} files, every one matching {c.MODEL_MANIFEST_FILE}) into {into}")
    return into


def _fetch_s3(uri: str, into: Path, access: RemoteAccess) -> int:
    parts = urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.lstrip("/")
    if not bucket or not prefix.endswith("/"):
        raise InvalidParameterError(
            {"model": f"{uri!r}: an S3 model is its run prefix, s3://bucket/.../runs/<run>/"}
        )
    client = access.s3.client()
    try:
        # The manifest first, then exactly the files it lists: anything else under the prefix
        # (an earlier attempt's leftovers) is not the model.
        client.download_file(bucket, prefix + c.MODEL_MANIFEST_FILE, str(into / c.MODEL_MANIFEST_FILE))
        listed = sorted(jsonio.loads((into / c.MODEL_MANIFEST_FILE).read_bytes())["files"])
        for name in listed:
            relative = PurePosixPath(name)
            if not relative.parts or ".." in relative.parts or relative.is_absolute():
                raise PublishError(f"{uri}: its manifest lists {name!r}, outside the model; refused")
            target = into.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, prefix + name, str(target))
    except PublishError:
        raise
    except (ValueError, KeyError, TypeError):
        raise PublishError(
            f"{uri}: its {c.MODEL_MANIFEST_FILE} is unreadable: not a published model"
        ) from None
    except Exception as error:
        if type(error).__module__.startswith(("botocore", "boto3", "s3transfer")):
            raise PublishError(access.s3.describe_error(error, uri)) from None
        raise
    return len(listed) + 1


def _fetch_hub(uri: str, into: Path, access: RemoteAccess) -> int:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    repo_id, _, revision = uri.removeprefix("hf://").partition("@")
    token = access.hf_token.get_secret_value() if access.hf_token else None
    try:
        snapshot_download(
            repo_id, revision=revision or None, local_dir=into, token=token, endpoint=access.hf_endpoint
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        raise PublishError(
            f"{uri}: the Hub answered HTTP {status} (a private repo needs the token of "
            "hf_conn_id or HF_TOKEN)"
        ) from None
    return sum(1 for path in into.rglob("*") if path.is_file() and ".cache" not in path.parts)
