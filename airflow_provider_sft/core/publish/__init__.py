"""Publish an exported model where it leaves the cluster: an S3 prefix or a Hugging Face Hub repo.

The export step first builds ``final_model`` on the workspace (``core/results/export.py``: the
model, its card and its sha256 manifest), then, when the task names a ``publish_to``
destination, uploads that directory here:

- ``s3://bucket/prefix/``: every file under ``<prefix>/runs/<run>/``, checksums verified, then
  ``<prefix>/latest.json`` replaced to name it (:mod:`.s3`);
- ``hf://org/name[@revision]``: one commit to a repo, private unless told otherwise (:mod:`.hub`).

Nothing is half-published: the pointer (``latest.json``, or the Hub revision) moves only after
every object is verified, and a failure midway leaves the previous pointer and says what was
uploaded. A local or PVC destination is the export's ``model_dir``, not a destination here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field

from airflow_provider_sft.core.dataset.options import RemoteAccess
from airflow_provider_sft.core.errors import InvalidParameterError

Logger = Callable[[str], None]


@dataclass(frozen=True)
class Destination:
    """A parsed ``publish_to``: ``s3`` (``bucket``, ``prefix`` ending in ``/`` or empty) or
    ``hf`` (``repo_id``, ``revision``: None means the repo's default branch)."""

    scheme: Literal["s3", "hf"]
    uri: str  # normalised: s3://bucket/prefix/ or hf://org/name[@revision]
    bucket: str = ""
    prefix: str = ""
    repo_id: str = ""
    revision: str | None = None


#: S3's bucket naming rules (3-63 characters: lowercase letters, digits, dots and hyphens,
#: beginning and ending with a letter or digit).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: A Hub repo id, as huggingface_hub's ``validate_repo_id`` has it: org/name of letters, digits,
#: ``-``, ``_`` and ``.``, not starting or ending with ``-`` or ``.``, without ``--`` or ``..``.
_HUB_NAME = re.compile(r"^(?![-.])(?!.*(--|\.\.))[\w.-]{1,96}(?<![-.])$")
#: A branch name for ``@revision`` (no ``@``, spaces, ``..`` or a leading ``-``).
_REVISION = re.compile(r"^(?!-)(?!.*\.\.)[\w./-]{1,128}$")


def parse_destination(value: str | None, *, field: str = "publish_to") -> Destination | None:
    """The destination ``value`` names, None when empty; anything else is one error naming ``field``.

    Credentials are never part of a destination: a URI with a user or password is refused without
    echoing it (it would reach the XCom, the asset, the lineage and the logs)."""
    text = (value or "").strip()
    if not text:
        return None
    if text.startswith("s3://"):
        parts = urlsplit(text)
        if "@" in parts.netloc:
            raise InvalidParameterError(
                kind="publish",
                errors={
                    field: "an s3:// URI with credentials in it: give them in the aws connection (aws_conn_id)"
                },
            )
        if not _BUCKET.match(parts.netloc) or parts.query or parts.fragment:
            raise InvalidParameterError(
                kind="publish",
                errors={
                    field: f"{text!r}: an S3 destination is s3://bucket/prefix/ (bucket: 3-63 of a-z 0-9 . -)"
                },
            )
        prefix = parts.path.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise InvalidParameterError(
                {field: f"{text!r}: the prefix has an empty, '.' or '..' part"}, kind="publish"
            )
        prefix = f"{prefix}/" if prefix else ""
        return Destination("s3", f"s3://{parts.netloc}/{prefix}", bucket=parts.netloc, prefix=prefix)
    if text.startswith("hf://"):
        repo, at, revision = text.removeprefix("hf://").partition("@")
        names = repo.strip("/").split("/")
        if ":" in repo:
            raise InvalidParameterError(
                kind="publish",
                errors={
                    field: "an hf:// URI with a token in it: give it in the huggingface connection (hf_conn_id)"
                },
            )
        if len(names) != 2 or not all(_HUB_NAME.match(name) for name in names):
            raise InvalidParameterError(
                {field: f"{text!r}: a Hub destination is hf://org/name[@revision]"}, kind="publish"
            )
        if at and not _REVISION.match(revision):
            raise InvalidParameterError(
                {field: f"{text!r}: {revision!r} is not a branch name"}, kind="publish"
            )
        repo_id = "/".join(names)
        uri = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
        return Destination("hf", uri, repo_id=repo_id, revision=revision or None)
    raise InvalidParameterError(
        {
            field: f"{text!r}: publish to s3://bucket/prefix/ or hf://org/name[@revision]; "
            "a local or PVC directory is model_dir"
        },
        kind="publish",
    )


class PublishOptions(RemoteAccess):
    """As whom to publish (the ``aws`` and ``huggingface`` connections), and how."""

    KIND: ClassVar[str] = "publish"

    private: bool = Field(True, description="A Hub repo the publish creates is private.")


@dataclass(frozen=True)
class Publication:
    """What a publish did: the XCom, the asset event's URI, the log line."""

    uri: str  # the published model: s3://bucket/prefix/runs/<run>/, or hf://org/name@<commit sha>
    pointer: str  # what moved last: s3://bucket/prefix/latest.json, or hf://org/name@<revision>
    files: int  # files of the model at the destination
    uploaded_bytes: int  # sent this time: 0 when a re-run finds every file there, same checksum
    skipped_files: int  # already there with the same checksum

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def publish(
    model_path: str | Path,
    destination: Destination,
    *,
    run_name: str,
    options: PublishOptions,
    log: Logger,
) -> Publication:
    """Upload the exported model at ``model_path`` (its ``sft_manifest.json`` lists every file
    and its sha256) to ``destination``; the pointer moves last."""
    if destination.scheme == "s3":
        from airflow_provider_sft.core.publish.s3 import publish_s3

        return publish_s3(Path(model_path), destination, run_name=run_name, options=options.s3, log=log)
    from airflow_provider_sft.core.publish.hub import publish_hub

    return publish_hub(
        Path(model_path),
        destination,
        run_name=run_name,
        token=options.hf_token.get_secret_value() if options.hf_token else None,
        endpoint=options.hf_endpoint,
        private=options.private,
        log=log,
    )
