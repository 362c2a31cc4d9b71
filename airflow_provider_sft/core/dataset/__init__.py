"""Dataset resolution: any supported source -> ``<workspace>/dataset/train.jsonl`` (validated chat JSONL)."""

from airflow_provider_sft.core.dataset.formats import Format
from airflow_provider_sft.core.dataset.options import DatasetOptions, OnBadRecord, S3Options
from airflow_provider_sft.core.dataset.records import ROLES, BadRecordError, RecordMapping
from airflow_provider_sft.core.dataset.resolve import MANIFEST_FILE, TRAIN_FILE, DatasetStats, resolve_dataset
from airflow_provider_sft.core.dataset.sources import BUNDLED_SOURCE, Source, artifact_location, parse_source

__all__ = [
    "BUNDLED_SOURCE",
    "MANIFEST_FILE",
    "ROLES",
    "TRAIN_FILE",
    "BadRecordError",
    "DatasetOptions",
    "DatasetStats",
    "Format",
    "OnBadRecord",
    "RecordMapping",
    "S3Options",
    "Source",
    "artifact_location",
    "parse_source",
    "resolve_dataset",
]
