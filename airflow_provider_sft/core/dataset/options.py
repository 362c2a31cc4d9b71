"""Options of a dataset resolution, validated up front (pydantic); secrets are ``SecretStr``."""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from typing_extensions import Self

from airflow_provider_sft.core.dataset.formats import Format
from airflow_provider_sft.core.dataset.records import RecordMapping
from airflow_provider_sft.core.errors import InvalidParameterError

#: 32 GiB: far above any chat dataset a single SFT run trains on, far below a filled volume.
DEFAULT_MAX_DECOMPRESSED_BYTES = 32 << 30


class OnBadRecord(str, Enum):
    FAIL = "fail"  # the first bad record stops the resolution, nothing is written
    SKIP = "skip"  # bad records are counted (and a few reasons kept) in the stats


class S3Options(BaseModel):
    """Where and as whom to read ``s3://``: unset credentials fall back to boto3's own chain (env, profile, IAM)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph...); default AWS."
    )
    region_name: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        secret = {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url or None,
            region_name=self.region_name or None,
            config=Config(
                retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=120
            ),
            **{k: v.get_secret_value() for k, v in secret.items() if v is not None},
        )

    def describe_error(self, error: Exception, uri: str) -> str:
        """One line for a failed S3 request on ``uri``: what went wrong and what to check, never a
        secret (reading a dataset and publishing a model both say it this way)."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        if isinstance(error, NoCredentialsError):
            return f"{uri}: no S3 credentials (set aws_conn_id, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        if isinstance(error, EndpointConnectionError):
            return f"{uri}: cannot reach the S3 endpoint {self.endpoint_url or 'of AWS'} ({error})"
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", "unknown"))
            hints = {
                "NoSuchBucket": "the bucket does not exist",
                "NoSuchKey": "the object does not exist",
                "404": "the object does not exist",
                "InvalidAccessKeyId": "the access key id is not known to the server (check the credentials)",
                "SignatureDoesNotMatch": "the secret access key is wrong (check the credentials)",
                "AccessDenied": "access denied for these credentials",
                "403": "access denied (wrong credentials, or no permission for this object)",
            }
            return f"{uri}: S3 refused the request: {code}: {hints.get(code, error)}"
        return f"{uri}: S3 request failed ({type(error).__name__})"


class RemoteAccess(BaseModel):
    """Who to be at the Hub and S3, shared by reading a dataset and publishing a model: secrets
    are ``SecretStr``, handed to a pod in its environment (:meth:`secret_env`), never its config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hf_endpoint: str | None = Field(
        None, description="HuggingFace Hub endpoint; default HF_ENDPOINT or the public Hub."
    )
    hf_token: SecretStr | None = None
    s3: S3Options = Field(default_factory=S3Options)

    SECRET_ENV: ClassVar[dict[str, str]] = {
        "hf_token": "HF_TOKEN",
        "s3.access_key_id": "AWS_ACCESS_KEY_ID",
        "s3.secret_access_key": "AWS_SECRET_ACCESS_KEY",
        "s3.session_token": "AWS_SESSION_TOKEN",
    }

    def settings(self) -> dict[str, Any]:
        """Everything but the secrets, JSON-safe (for a pod's config)."""
        return self.model_dump(
            mode="json",
            exclude={"hf_token": True, "s3": {"access_key_id", "secret_access_key", "session_token"}},
        )

    def secret_env(self) -> dict[str, str]:
        """The secrets as the environment variables :meth:`from_settings` reads them from."""
        values = {
            "hf_token": self.hf_token,
            "s3.access_key_id": self.s3.access_key_id,
            "s3.secret_access_key": self.s3.secret_access_key,
            "s3.session_token": self.s3.session_token,
        }
        return {self.SECRET_ENV[k]: v.get_secret_value() for k, v in values.items() if v is not None}

    @classmethod
    def from_settings(cls, settings: dict[str, Any], env: Any) -> Self:
        """The inverse of :meth:`settings` plus :meth:`secret_env`, in the pod."""
        s3 = dict(settings.get("s3") or {})
        for key, name in cls.SECRET_ENV.items():
            if key.startswith("s3.") and env.get(name):
                s3[key.removeprefix("s3.")] = env[name]
        return cls.build(
            **{**settings, "s3": S3Options(**s3), "hf_token": env.get(cls.SECRET_ENV["hf_token"])}
        )

    #: The noun of :meth:`build`'s error ("Invalid dataset parameters: ...").
    KIND: ClassVar[str] = "dataset"

    @classmethod
    def build(cls, **values: Any) -> Self:
        """Like the constructor, but every problem reported at once as :class:`InvalidParameterError`."""
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as error:
            problems = {}
            for item in error.errors():
                name = ".".join(str(part) for part in item["loc"]) or "options"
                problems[name] = item["msg"]
            raise InvalidParameterError(problems, kind=cls.KIND) from None


class DatasetOptions(RemoteAccess):
    """How to read a source. Every field is a parameter of ``ResolveDatasetOperator``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    format: Format = Field(
        Format.AUTO, description="jsonl, json (array), parquet, csv; auto: by name, then content."
    )
    mapping: RecordMapping = Field(
        RecordMapping.MESSAGES,
        description="messages (as is), prompt_completion or instruction (Alpaca): converted to chat messages.",
    )
    on_bad_record: OnBadRecord = Field(OnBadRecord.FAIL, description="fail, or skip and count bad records.")
    split: str | None = Field(None, description="HuggingFace split (default train).")
    subset: str | None = Field(None, description="HuggingFace subset (configuration) directory.")
    revision: str | None = Field(None, description="HuggingFace branch, tag or commit.")
    hf_default_revision: str | None = Field(
        None, description="Revision when neither ``revision`` nor the source names one (the connection's)."
    )
    tokenizer: str | None = Field(
        None, description="tokenizer.json (or its directory) to count approximate tokens."
    )
    max_decompressed_bytes: int = Field(
        DEFAULT_MAX_DECOMPRESSED_BYTES,
        ge=0,
        description="The most bytes the dataset's files may hold together once decompressed (0: no limit): "
        "a small .gz can expand to terabytes and fill the volume.",
    )

    @field_validator("split", "subset", "revision", "hf_default_revision", "tokenizer", "hf_endpoint")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    def cache_key(self) -> dict[str, Any]:
        """What changes the output for the same source files (never secrets)."""
        return {
            "format": self.format.value,
            "mapping": self.mapping.value,
            "on_bad_record": self.on_bad_record.value,
        }
