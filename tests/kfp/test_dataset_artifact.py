"""The shim's ``dataset`` input: a real ``dsl.Dataset`` artifact in each of the forms the original read.

Order, as in the original component: the artifact's local path when it exists, metadata
``pvc_path`` / ``pvc_dir`` (a path on the PVC), metadata ``artifact_path`` (here an
``http://`` URL served on loopback), else an error naming what was looked at.
"""

import json

import pytest
from kfp import dsl

from airflow_provider_sft.core.errors import DatasetError
from airflow_provider_sft.kfp.runner import _dataset_source, _resolved
from tests.dataset_files import ROWS, jsonl_bytes, parquet_bytes, write_jsonl
from tests.servers import serve_directory


def _dataset_path(dataset, pvc_path: str) -> str:
    """What the runner does with the component's ``dataset`` input: locate it, then resolve it."""
    return _resolved(*_dataset_source(dataset, pvc_path))


def artifact(tmp_path, *, exists: bool, metadata=None):
    data = dsl.Dataset(name="dataset", uri=str(tmp_path / "artifact" / "data"), metadata=metadata or {})
    if exists:
        (tmp_path / "artifact").mkdir()
        write_jsonl(tmp_path / "artifact" / "data", ROWS)  # KFP artifacts have no suffix: sniffed
    return data


def lines(path):
    return [json.loads(line) for line in open(path)]


def test_artifact_path(tmp_path):
    path = _dataset_path(artifact(tmp_path, exists=True), str(tmp_path / "pvc"))
    assert path == str(tmp_path / "pvc" / "dataset" / "train.jsonl") and lines(path) == ROWS


@pytest.mark.parametrize("key", ["pvc_path", "pvc_dir"])
def test_metadata_pvc_path_relative_to_the_pvc(tmp_path, key):
    pvc = tmp_path / "pvc"
    (pvc / "uploads").mkdir(parents=True)
    (pvc / "uploads" / "chat.parquet").write_bytes(parquet_bytes(ROWS))
    location = "uploads/chat.parquet" if key == "pvc_path" else "uploads"
    path = _dataset_path(artifact(tmp_path, exists=False, metadata={key: location}), str(pvc))
    assert lines(path) == ROWS


def test_metadata_artifact_path_url(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "chat.jsonl").write_bytes(jsonl_bytes(ROWS))
    with serve_directory(tmp_path / "www") as url:
        data = artifact(tmp_path, exists=False, metadata={"artifact_path": f"{url}/chat.jsonl"})
        assert lines(_dataset_path(data, str(tmp_path / "pvc"))) == ROWS


def test_artifact_without_data_is_named(tmp_path):
    with pytest.raises(DatasetError, match="metadata has none of pvc_path, pvc_dir, artifact_path"):
        _dataset_path(artifact(tmp_path, exists=False), str(tmp_path / "pvc"))
    assert not (tmp_path / "pvc" / "dataset" / "train.jsonl").exists()
