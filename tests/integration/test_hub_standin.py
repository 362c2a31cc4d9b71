"""The Hub stand-in (``tests/servers.HubStandIn``) refuses what the Hub refuses, driven by the real
``huggingface_hub`` client (2.4.0) where the client can send the request, raw HTTP where it
cannot (a client never sends a commit naming an LFS object it did not upload)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

from tests.servers import GITATTRIBUTES, HubStandIn

TOKEN = "hf_StandInToken_NotReal_123"
REPO = "acme/model"


@pytest.fixture
def hub(tmp_path, hub_client_online):
    server = HubStandIn(tmp_path, TOKEN)
    yield server
    server.stop()


def api(hub, token=TOKEN):
    return HfApi(endpoint=hub.url, token=token)


def status_of(error: pytest.ExceptionInfo) -> int:
    return error.value.response.status_code


def test_a_write_without_the_token_or_with_another_is_401(hub):
    with pytest.raises(HfHubHTTPError) as none:
        api(hub, token=False).create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as wrong:
        api(hub, token="hf_wrong").create_repo(REPO)
    assert status_of(none) == status_of(wrong) == 401
    assert "Invalid credentials" in str(wrong.value)
    assert REPO not in hub.state.models  # nothing was created


def test_a_private_repo_is_invisible_without_the_token(hub):
    api(hub).create_repo(REPO, private=True)
    with pytest.raises(RepositoryNotFoundError):
        api(hub, token=False).repo_info(REPO)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, ".gitattributes", endpoint=hub.url, token=False)
    info = api(hub).repo_info(REPO)
    assert info.private is True and [s.rfilename for s in info.siblings] == [".gitattributes"]


def test_a_tree_is_listed_only_for_a_revision_that_exists_and_a_caller_who_may_see_it(hub):
    # what snapshot_download asks first (a fetch of a published model)
    api(hub).create_repo(REPO, private=True)
    assert [f.path for f in api(hub).list_repo_tree(REPO, recursive=True)] == [".gitattributes"]
    with pytest.raises(RepositoryNotFoundError):
        list(api(hub, token=False).list_repo_tree(REPO, recursive=True))
    with pytest.raises(RevisionNotFoundError):
        list(api(hub).list_repo_tree(REPO, revision="no-such-branch", recursive=True))


def test_a_repo_or_branch_that_exists_is_409_and_exist_ok_accepts_it(hub):
    api(hub).create_repo(REPO)
    with pytest.raises(HfHubHTTPError) as again:
        api(hub).create_repo(REPO)
    assert status_of(again) == 409
    api(hub).create_repo(REPO, exist_ok=True)
    api(hub).create_branch(REPO, branch="candidate")
    with pytest.raises(HfHubHTTPError) as branch:
        api(hub).create_branch(REPO, branch="candidate")
    assert status_of(branch) == 409


def preupload(hub, files):
    payload = {
        "files": [{"path": p, "size": size, "sample": base64.b64encode(s).decode()} for p, size, s in files]
    }
    response = httpx.post(
        f"{hub.url}/api/models/{REPO}/preupload/main",
        json=payload,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.raise_for_status()
    return {f["path"]: f["uploadMode"] for f in response.json()["files"]}


def test_preupload_answers_lfs_where_the_hub_stores_in_lfs(hub):
    api(hub).create_repo(REPO)
    modes = preupload(
        hub,
        [
            ("model.safetensors", 100, b"{}"),  # an LFS suffix, however small
            ("tokenizer.model", 100, b"text"),
            ("big.txt", 10_000_001, b"text"),  # over 10 MB
            ("blob.dat", 100, b"\x00\x01"),  # binary
            ("config.json", 100, b'{"a": 1}'),
        ],
    )
    assert modes == {
        "model.safetensors": "lfs",
        "tokenizer.model": "lfs",
        "big.txt": "lfs",
        "blob.dat": "lfs",
        "config.json": "regular",
    }
    assert b"*.safetensors filter=lfs" in GITATTRIBUTES


def commit_ndjson(hub, lines, token=TOKEN):
    header = {"key": "header", "value": {"summary": "raw", "description": ""}}
    body = b"".join(json.dumps(line).encode() + b"\n" for line in [header, *lines])
    return httpx.post(
        f"{hub.url}/api/models/{REPO}/commit/main",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"},
    )


def test_a_commit_naming_an_lfs_object_never_uploaded_is_refused(hub):
    api(hub).create_repo(REPO)
    oid = hashlib.sha256(b"weights").hexdigest()
    refused = commit_ndjson(
        hub, [{"key": "lfsFile", "value": {"path": "m.safetensors", "algo": "sha256", "oid": oid, "size": 7}}]
    )
    assert refused.status_code == 400 and "LFS pointer pointed to a file that does not exist" in refused.text
    assert len(hub.commits(REPO)) == 1  # the initial commit only


def test_a_regular_file_the_hub_keeps_in_lfs_is_refused(hub):
    api(hub).create_repo(REPO)
    content = base64.b64encode(b"\x00weights").decode()
    refused = commit_ndjson(
        hub, [{"key": "file", "value": {"path": "m.safetensors", "content": content, "encoding": "base64"}}]
    )
    assert refused.status_code == 400 and "not tracked by LFS" in refused.text
    assert commit_ndjson(hub, [], token="hf_wrong").status_code == 401
    assert len(hub.commits(REPO)) == 1


def test_an_upload_whose_content_is_not_its_oid_is_refused_and_cannot_be_committed(hub):
    api(hub).create_repo(REPO)
    oid = hashlib.sha256(b"weights").hexdigest()
    batch = httpx.post(
        f"{hub.url}/{REPO}.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": oid, "size": 7}], "hash_algo": "sha256"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    (entry,) = batch.json()["objects"]
    upload = entry["actions"]["upload"]["href"]
    assert httpx.put(upload, content=b"WEIGHTS").status_code == 400  # same size, other bytes
    assert httpx.put(f"{hub.url}/lfs-upload/not-a-ticket", content=b"weights").status_code == 403
    lfs = {"key": "lfsFile", "value": {"path": "m.safetensors", "algo": "sha256", "oid": oid, "size": 7}}
    assert commit_ndjson(hub, [lfs]).status_code == 400
    assert httpx.put(upload, content=b"weights").status_code == 200
    assert commit_ndjson(hub, [lfs]).status_code == 200


def test_a_commit_whose_parent_is_not_the_head_is_412(hub):
    hf = api(hub)
    hf.create_repo(REPO)
    first = hf.repo_info(REPO).sha
    hf.upload_file(path_or_fileobj=b"one", path_in_repo="a.txt", repo_id=REPO)
    with pytest.raises(HfHubHTTPError) as stale:
        hf.create_commit(
            REPO,
            [CommitOperationAdd("b.txt", b"two")],
            commit_message="on a stale parent",
            parent_commit=first,
        )
    assert status_of(stale) == 412
    assert [c.title for c in hf.list_repo_commits(REPO)] == [
        "Upload a.txt with huggingface_hub",
        "initial commit",
    ]


def test_the_client_round_trip_lfs_upload_commit_and_resolve(hub, tmp_path):
    hf = api(hub)
    hf.create_repo(REPO, private=True)
    weights = b"\x00" * 2048
    info = hf.create_commit(
        REPO,
        [CommitOperationAdd("model.safetensors", weights), CommitOperationAdd("config.json", b'{"a": 1}')],
        commit_message="model",
    )
    assert hf.repo_info(REPO).sha == info.oid
    siblings = {s.rfilename: s for s in hf.repo_info(REPO, files_metadata=True).siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["config.json"].lfs is None
    assert hub.state.lfs[hashlib.sha256(weights).hexdigest()] == weights  # went through the LFS store
    path = hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == weights
