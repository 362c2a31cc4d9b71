"""Publish an exported model to ``s3://bucket/prefix/`` (AWS, MinIO, Ceph): see :func:`publish_s3`.

Layout under the prefix::

    <prefix>runs/<run>/...          every file of the model, its sft_manifest.json included
    <prefix>latest.json             {"run", "model", "files": {name: {sha256, bytes}}, "published_at"}

A run's objects never overwrite another run's, and ``latest.json`` is written last, only after
every object has been verified: a reader that follows it never finds a half-uploaded model.

Verification uses S3's own checksums. Each object is uploaded with ``ChecksumAlgorithm=SHA256``
(S3 checks every request body against it and keeps the object's checksum), then read back with
``head_object(ChecksumMode="ENABLED")`` and compared with the sha256 the export's manifest
recorded: the whole file's sha256 for a single PUT, the composite (sha256 of the parts'
sha256s, ``-<parts>``) for a multipart upload, whose file is read once more for it. An object
that does not match is deleted. The file's sha256 also goes into the object's metadata
(``x-amz-meta-sha256``): a re-run skips an object of this size, this metadata and the S3
checksum this file gives (the whole sha256 of a single PUT; a composite recomputed from the
file, one read of a multipart file and no upload), so publishing the same model twice sends 0
bytes. The metadata alone is never trusted: an attempt killed between an upload and its check
leaves an object nobody verified.

The S3 endpoint must support checksums (AWS; MinIO and Ceph RGW releases of recent years):
one that returns none fails the publish, saying so, rather than publishing unverified.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.dataset.options import S3Options
from airflow_provider_sft.core.errors import PublishError
from airflow_provider_sft.core.publish import Destination, Logger, Publication
from airflow_provider_sft.core.publish.manifest import ModelFile, model_files

#: A file this large or larger goes up in parts, each this large (S3: 5 MiB to 5 GiB, at most
#: 10,000 parts; s3transfer raises the part size for a file that would need more). 16 MiB parts
#: keep a 15 GB shard under 1,000 requests, a retried part small, and a 200 MB file in 13 parts
#: that go up side by side.
MULTIPART_THRESHOLD = 16 << 20
MULTIPART_CHUNKSIZE = 16 << 20
#: Parts and files in flight at once, across the whole model (the AWS CLI's default is 10).
MAX_CONCURRENCY = 10
#: Uploads checked at once: each waits for its upload, then reads a multipart file's parts
#: again for the composite checksum (hashlib releases the GIL: the reads overlap the uploads).
VERIFY_THREADS = 4
#: The object metadata key holding the file's sha256 (hex): ``x-amz-meta-sha256``.
SHA256_METADATA = "sha256"
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def transfer_config() -> Any:
    """boto3's managed transfer: parallel across files and parts, multipart above the threshold."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=MAX_CONCURRENCY,
        use_threads=True,
    )


def expected_checksum(file: ModelFile, config: Any) -> str:
    """The ``ChecksumSHA256`` S3 keeps for ``file`` uploaded with ``config``.

    A single PUT: the file's sha256 from the manifest (base64), so S3's checksum, computed from
    the bytes it received, is compared with the export's record directly. A multipart upload:
    the sha256 of its parts' sha256s and ``-<parts>`` (S3's composite checksum), computed here
    from the file with the upload's part size, in the same read as the whole file's sha256,
    which must still be the manifest's (a file changed since the export is refused)."""
    if file.size < config.multipart_threshold:
        return base64.b64encode(bytes.fromhex(file.sha256)).decode()
    part_size = _part_size(file, config)
    whole, composite = hashlib.sha256(), hashlib.sha256()
    with file.path.open("rb") as stream:
        while part := stream.read(part_size):
            whole.update(part)
            composite.update(hashlib.sha256(part).digest())
    if whole.hexdigest() != file.sha256:
        raise PublishError(f"{file.path}: its sha256 is no longer the manifest's (changed since the export)")
    return f"{base64.b64encode(composite.digest()).decode()}-{math.ceil(file.size / part_size)}"


def _part_size(file: ModelFile, config: Any) -> int:
    """The part size s3transfer uploads ``file`` with (it raises the configured one for a file
    that would need over 10,000 parts)."""
    from s3transfer.utils import ChunksizeAdjuster

    return int(ChunksizeAdjuster().adjust_chunksize(config.multipart_chunksize, file.size))


def checksum_matches(stored: str | None, expected: str) -> bool:
    """S3's answer against :func:`expected_checksum` (AWS appends ``-<parts>`` to a composite
    checksum; some S3-compatible servers leave it off)."""
    if not stored:
        return False
    value, _, parts = stored.partition("-")
    want, _, want_parts = expected.partition("-")
    return value == want and (not parts or parts == want_parts)


def publish_s3(
    model_path: Path, destination: Destination, *, run_name: str, options: S3Options, log: Logger
) -> Publication:
    """Every file of the model under ``<prefix>runs/<run_name>/``, each verified by its S3
    checksum (files already there with the same sha256 skipped), then ``<prefix>latest.json``.

    Any failure raises one :class:`PublishError` that says which files were uploaded and that
    ``latest.json`` was not moved; a secret never appears in it.
    """
    from boto3.s3.transfer import create_transfer_manager  # a missing boto3: the pod's one line
    from botocore.exceptions import BotoCoreError, ClientError

    started = time.monotonic()
    if not _RUN_NAME.fullmatch(run_name):
        raise PublishError(f"run name {run_name!r} cannot name an S3 prefix; nothing was uploaded")
    files = model_files(Path(model_path))
    bucket = destination.bucket
    run_prefix = f"{destination.prefix}{c.RUNS_DIR}/{run_name}/"
    model_uri = f"s3://{bucket}/{run_prefix}"
    pointer_key = f"{destination.prefix}{c.LATEST_FILE}"
    pointer_uri = f"s3://{bucket}/{pointer_key}"
    config = transfer_config()
    verified: list[str] = []  # at the destination, checksum matched (uploaded now or before)
    current = f"s3://{bucket}/"  # what the request in flight is about, for the error
    todo: list[ModelFile] = []
    skipped: list[ModelFile] = []
    checks: list[tuple[ModelFile, Future[None]]] = []
    try:
        client = options.client()
        _require_bucket(client, bucket)
        for file in files:
            key = run_prefix + file.name
            current = f"s3://{bucket}/{key}"
            if _already_there(client, bucket, key, file, config):
                skipped.append(file)
                verified.append(file.name)
            else:
                todo.append(file)
        current = model_uri
        # The transfer manager is left first: a failure cancels the uploads still running, and
        # the checks waiting on them end with them.
        with (
            ThreadPoolExecutor(VERIFY_THREADS) as checkers,
            create_transfer_manager(client, config) as manager,
        ):
            for file in todo:
                key = run_prefix + file.name
                upload = manager.upload(
                    str(file.path),
                    bucket,
                    key,
                    extra_args={"ChecksumAlgorithm": "SHA256", "Metadata": {SHA256_METADATA: file.sha256}},
                )
                checks.append((file, checkers.submit(_verify, client, bucket, key, file, upload, config)))
            for file, check in checks:  # in order: the first failure is the one reported
                current = f"s3://{bucket}/{run_prefix}{file.name}"
                check.result()
        verified += [file.name for file, _ in checks]
        pointer = {
            "run": run_name,
            "model": model_uri,
            "files": {file.name: {"sha256": file.sha256, "bytes": file.size} for file in files},
            "published_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        current = pointer_uri
        client.put_object(
            Bucket=bucket,
            Key=pointer_key,
            Body=jsonio.dumps(pointer, indent=True),
            ContentType="application/json",
            ChecksumAlgorithm="SHA256",
        )
    except (BotoCoreError, ClientError, PublishError, OSError) as error:
        cause = str(error) if isinstance(error, PublishError) else _describe(options, error, current)
        verified += [file.name for file, check in checks if _succeeded(check) and file.name not in verified]
        raise PublishError(_failed(cause, model_uri, pointer_uri, verified, len(files))) from None
    sent = sum(file.size for file in todo)
    skipped_bytes = sum(file.size for file in skipped)
    log(
        f"published {len(files)} files to {model_uri} in {time.monotonic() - started:.1f} s: "
        f"{sent} bytes sent, {skipped_bytes} bytes skipped ({len(skipped)} files already there, "
        f"same sha256); {pointer_uri} names it"
    )
    return Publication(
        uri=model_uri, pointer=pointer_uri, files=len(files), uploaded_bytes=sent, skipped_files=len(skipped)
    )


def _describe(options: S3Options, error: Exception, uri: str) -> str:
    if isinstance(error, OSError) and not _is_botocore(error):
        return f"{uri}: {type(error).__name__}: {error.strerror or error}"
    return options.describe_error(error, uri)


def _is_botocore(error: Exception) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(error, BotoCoreError | ClientError)


def _failed(cause: str, model_uri: str, pointer_uri: str, verified: list[str], total: int) -> str:
    """The one line of a failed publish: the cause, what is at the destination, the pointer kept."""
    shown = ", ".join(verified[:5]) + (f" and {len(verified) - 5} more" if len(verified) > 5 else "")
    there = f"{len(verified)} of {total} files uploaded and verified under {model_uri}" + (
        f" ({shown})" if verified else ""
    )
    return (
        f"publishing to S3 failed: {cause}. {there}; {pointer_uri} was not moved (it still names "
        "the previous model, if any). A re-run uploads only what is missing"
    )


def _require_bucket(client: Any, bucket: str) -> None:
    """One request before any upload: no credentials, a wrong key, a missing bucket or an
    unreachable endpoint fail here, with nothing sent."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:  # HEAD has no body: S3 answers a bare status code
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            error.response["Error"]["Code"] = "NoSuchBucket"
        raise


def _succeeded(check: Future[None]) -> bool:
    return check.done() and not check.cancelled() and check.exception() is None


def _verify(client: Any, bucket: str, key: str, file: ModelFile, upload: Any, config: Any) -> None:
    """Wait for ``file``'s upload, then compare the checksum S3 keeps with the file's. An object
    that does not match is deleted: a re-run, which trusts an object's sha256 metadata, must
    not skip it."""
    upload.result()
    try:
        expected = expected_checksum(file, config)
        stored = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED").get("ChecksumSHA256")
        if not checksum_matches(stored, expected):
            raise PublishError(
                f"s3://{bucket}/{key}: S3 holds checksum {stored or 'none'}, the manifest's sha256 gives "
                f"{expected}" + ("" if stored else " (does the endpoint support S3 checksums?)")
            )
    except PublishError as mismatch:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception as error:  # the mismatch is the news; say the object stayed
            raise PublishError(f"{mismatch}; deleting it failed too ({type(error).__name__})") from None
        raise


def _already_there(client: Any, bucket: str, key: str, file: ModelFile, config: Any) -> bool:
    """The object exists with this file's size and sha256 metadata, and the S3 checksum this
    file gives: the whole sha256 for a single-PUT object, read from the manifest; for a
    multipart one the composite of its parts, which takes one read of the file. Never the
    metadata alone: an attempt killed between an upload and its check leaves an object with
    the right metadata that nobody verified, and a re-run must not trust it."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    if (
        head.get("ContentLength") != file.size
        or (head.get("Metadata") or {}).get(SHA256_METADATA) != file.sha256
    ):
        return False
    return checksum_matches(head.get("ChecksumSHA256"), expected_checksum(file, config))
