"""Publishing an exported model to the Hub: the export step (``core/pod/steps.export``) with
``publish_to="hf://..."``, the real ``huggingface_hub`` client, against the Hub stand-in
(``tests/servers.HubStandIn``, which refuses what the Hub refuses: see test_hub_standin.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import PublishError
from airflow_provider_sft.core.pod.steps import export
from airflow_provider_sft.core.publish import PublishOptions
from airflow_provider_sft.core.results.model_card import MODEL_CARD_FILE
from tests.servers import RACE_FILE, HubStandIn, free_port
from tests.unit.core.results.test_export import write_checkpoint
from tests.unit.core.results.test_metrics import HPARAMS, step, write_lines
from tests.unit.core.results.test_model_card import FACTS, write_run

TOKEN = "hf_PublishToken_NotReal_456"
REPO = "acme/sft-model"


@pytest.fixture
def hub(tmp_path, hub_client_online):
    server = HubStandIn(tmp_path / "datasets", TOKEN)
    yield server
    server.stop()


def trained_run(
    workspace: Path, name: str = "run-1", payload: bytes = b"weights-1", tokenizer: bool = True
) -> Path:
    """A run as training leaves it: run_config.json, a checkpoint, the metrics with the run facts."""
    run = write_run(workspace / c.RUNS_DIR / name)
    checkpoint = write_checkpoint(run / c.HF_FORMAT_DIR / "samples_32", payload)
    if not tokenizer:
        (checkpoint / "tokenizer.json").unlink()
    write_lines(run / c.METRICS_FILE, [HPARAMS, FACTS, *(step(n, 3.0 - 0.1 * n) for n in range(1, 9))])
    return run


def export_step(run: Path, destination: str, endpoint: str, *, token: str | None = TOKEN, lines=None):
    workspace = run.parent.parent
    config = {
        "run_dir": str(run),
        "model_dir": str(run / c.FINAL_MODEL_DIR),
        "metrics_path": str(run / c.METRICS_SUMMARY_FILE),
        "latest_path": str(workspace / c.LATEST_FILE),
        "publish_to": destination,
        "publish_settings": PublishOptions.build(hf_endpoint=endpoint).settings(),
    }
    env = {"HF_TOKEN": token} if token else {}
    return export(config, log=(lines if lines is not None else []).append, env=env)


def published_files(run: Path) -> dict[str, str]:
    """The exported model's files and their sha256, the manifest's own included."""
    import hashlib

    model = run / c.FINAL_MODEL_DIR
    files = {
        n: e["sha256"] for n, e in json.loads((model / c.MODEL_MANIFEST_FILE).read_text())["files"].items()
    }
    files[c.MODEL_MANIFEST_FILE] = hashlib.sha256((model / c.MODEL_MANIFEST_FILE).read_bytes()).hexdigest()
    return files


def test_one_commit_of_the_whole_model_and_its_card_to_a_private_repo(hub, tmp_path, monkeypatch):
    lines: list[str] = []
    run = trained_run(tmp_path / "ws")
    result = export_step(run, f"hf://{REPO}", hub.url, lines=lines)

    commits = HfApi(endpoint=hub.url, token=TOKEN).list_repo_commits(REPO)
    assert [commit.title for commit in commits] == ["airflow-provider-sft: run run-1", "initial commit"]
    publication = result["publication"]
    assert publication == {
        "uri": f"hf://{REPO}@{commits[0].commit_id}",
        "pointer": f"hf://{REPO}@main",
        "files": 5,  # config.json, tokenizer.json, model.safetensors, README.md, sft_manifest.json
        "uploaded_bytes": sum(p.stat().st_size for p in (run / c.FINAL_MODEL_DIR).iterdir()),
        "skipped_files": 0,
    }
    info = HfApi(endpoint=hub.url, token=TOKEN).repo_info(REPO, files_metadata=True)
    assert info.private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).repo_info(REPO)
    siblings = {s.rfilename: s for s in info.siblings}
    expected = published_files(run)
    assert set(siblings) == {*expected, ".gitattributes"}
    assert siblings["model.safetensors"].lfs.sha256 == expected["model.safetensors"]  # through LFS
    assert json.loads((tmp_path / "ws" / c.LATEST_FILE).read_text())["published"] == publication["uri"]

    # The card's header, read back from the repo by the Hub client's own loader.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    card = ModelCard.load(REPO, token=TOKEN)
    assert card.data.base_model == "Qwen/Qwen2.5-1.5B-Instruct" and card.data.datasets == ["acme/chat"]
    assert card.data.library_name == "transformers" and "sft" in card.data.tags
    local = (run / c.FINAL_MODEL_DIR / MODEL_CARD_FILE).read_text()
    assert "## Training parameters" in card.text and local.endswith(card.text)  # the card that was exported
    assert f"published 5 files ({publication['uploaded_bytes']} bytes" in "\n".join(lines)
    assert TOKEN not in "\n".join(lines) + json.dumps(result)


def test_a_rerun_of_the_same_model_makes_no_commit_and_uploads_nothing(hub, tmp_path):
    run = trained_run(tmp_path / "ws")
    first = export_step(run, f"hf://{REPO}", hub.url)["publication"]
    hub.requests_seen.clear()
    lines: list[str] = []
    again = export_step(run, f"hf://{REPO}", hub.url, lines=lines)["publication"]

    assert again == {**first, "uploaded_bytes": 0, "skipped_files": 5}
    assert len(hub.commits(REPO)) == 2  # no empty commit
    sent = [r for r in hub.requests_seen if r.startswith(("POST", "PUT")) and "repos/create" not in r]
    assert sent == []  # no preupload, no LFS batch, no commit: compared with the repo's files first
    assert f"hf://{REPO}@main already holds this model (commit {first['uri'].split('@')[1]})" in lines[-1]
    # What the client itself does with the same files: it drops them and makes no commit either.
    files = [CommitOperationAdd(n, str(run / c.FINAL_MODEL_DIR / n)) for n in published_files(run)]
    HfApi(endpoint=hub.url, token=TOKEN).create_commit(REPO, files, commit_message="same files")
    assert len(hub.commits(REPO)) == 2


def test_a_changed_model_is_one_commit_of_the_changed_files_that_removes_the_stale_ones(hub, tmp_path):
    export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}", hub.url)
    second = trained_run(tmp_path / "ws", "run-2", payload=b"weights-2", tokenizer=False)
    publication = export_step(second, f"hf://{REPO}", hub.url)["publication"]

    commits = hub.commits(REPO)
    assert len(commits) == 3 and commits[0].title == "airflow-provider-sft: run run-2"
    assert set(commits[0].files) == {*published_files(second), ".gitattributes"}  # tokenizer.json gone
    model = second / c.FINAL_MODEL_DIR
    changed = ("model.safetensors", MODEL_CARD_FILE, c.MODEL_MANIFEST_FILE)  # config.json is the same
    assert publication["skipped_files"] == 1
    assert publication["uploaded_bytes"] == sum((model / name).stat().st_size for name in changed)


def test_a_racing_commit_fails_ours_with_412_in_one_line_and_no_second_commit(hub, tmp_path):
    export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}", hub.url)
    latest = (tmp_path / "ws" / c.LATEST_FILE).read_bytes()
    hub.race_next_commit(REPO)
    second = trained_run(tmp_path / "ws", "run-2", payload=b"weights-2")
    with pytest.raises(PublishError) as error:
        export_step(second, f"hf://{REPO}", hub.url)

    message = str(error.value)
    assert (
        message.startswith(f"hf://{REPO}@main: another commit reached the branch") and "HTTP 412" in message
    )
    assert "nothing was committed: the revision still points to" in message and "\n" not in message
    assert TOKEN not in message
    commits = hub.commits(REPO)
    assert [c_.title for c_ in commits] == [
        "a racing commit",
        "airflow-provider-sft: run run-1",
        "initial commit",
    ]
    assert RACE_FILE in commits[0].files  # the other client's commit stands, ours is not on top of it
    assert (tmp_path / "ws" / c.LATEST_FILE).read_bytes() == latest  # the local pointer did not move


def test_an_upload_failing_midway_leaves_the_revision_and_says_so(hub, tmp_path):
    first = export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}", hub.url)["publication"]
    head = first["uri"].split("@")[1]
    hub.expire_uploads()
    second = trained_run(tmp_path / "ws", "run-2", payload=b"weights-2")
    with pytest.raises(PublishError) as error:
        export_step(second, f"hf://{REPO}", hub.url)
    message = str(error.value)
    assert "Error while uploading 'model.safetensors' to the Hub" in message
    assert (
        f"nothing was committed: the revision still points to {head}; what was sent of its 3 files" in message
    )
    assert len(hub.commits(REPO)) == 2 and TOKEN not in message
    hub.expire_uploads(False)  # the next attempt publishes
    assert export_step(second, f"hf://{REPO}", hub.url)["publication"]["skipped_files"] == 2


def test_a_revision_is_a_branch_made_from_main_when_missing(hub, tmp_path):
    publication = export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}@candidate", hub.url)["publication"]
    assert publication["pointer"] == f"hf://{REPO}@candidate"
    assert [c_.title for c_ in hub.commits(REPO, "main")] == ["initial commit"]
    head = hub.commits(REPO, "candidate")[0]
    assert publication["uri"] == f"hf://{REPO}@{head.oid}"


@pytest.mark.parametrize(
    ("token", "endpoint", "message"),
    [
        (None, "hub", r"refused access \(HTTP 401\): the huggingface connection's token"),
        ("hf_Wrong_Token_789", "hub", r"refused access \(HTTP 401\)"),
        (TOKEN, "nowhere", r"cannot reach the Hub at http://127\.0\.0\.1:\d+ \(ConnectError\)"),
    ],
)
def test_a_refusal_is_one_line_naming_the_repo_and_never_the_token(hub, tmp_path, token, endpoint, message):
    url = hub.url if endpoint == "hub" else f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []
    with pytest.raises(PublishError, match=message) as error:
        export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}", url, token=token, lines=lines)
    text = str(error.value)
    assert text.startswith(f"hf://{REPO}@main: ") and "\n" not in text
    assert not (tmp_path / "ws" / c.LATEST_FILE).exists()
    for secret in (TOKEN, "hf_Wrong_Token_789"):
        assert secret not in text + "\n".join(lines)


def test_offline_mode_is_named(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PublishError, match=f"hf://{REPO}@main: HF_HUB_OFFLINE is set"):
        export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}", hub.url)


def test_a_file_changed_since_the_export_is_refused_before_anything_is_sent(hub, tmp_path):
    from airflow_provider_sft.core.publish import parse_destination, publish

    run = trained_run(tmp_path / "ws")
    model = Path(export_step(run, f"hf://{REPO}", hub.url)["model_path"])
    config = model / "config.json"
    data = config.read_bytes()
    config.unlink()  # a hard link into the checkpoint: replace it, as an editor would
    config.write_bytes(data.replace(b"llama", b"qwen2"))
    options = PublishOptions.build(hf_endpoint=hub.url, hf_token=TOKEN)
    destination = parse_destination(f"hf://{REPO}")
    assert destination is not None
    with pytest.raises(PublishError, match=r"config\.json: changed since the export .*nothing was committed"):
        publish(model, destination, run_name="run-1", options=options, log=lambda _line: None)
    assert len(hub.commits(REPO)) == 2  # the first publish only


def test_a_commit_that_does_not_hold_the_manifests_files_is_an_error(hub, tmp_path):
    hub.lose_in_next_commit(REPO, "tokenizer.json")
    with pytest.raises(
        PublishError, match=r"the commit does not hold tokenizer\.json as sft_manifest\.json lists"
    ):
        export_step(trained_run(tmp_path / "ws"), f"hf://{REPO}", hub.url)
    assert not (tmp_path / "ws" / c.LATEST_FILE).exists()


def test_the_export_pods_program_publishes_with_only_the_training_images_packages(hub, tmp_path):
    """Cluster mode: the export step runs the pod program's zip, in an interpreter that has only
    what the training image has (instructlab-training and its requirements, huggingface_hub among
    them), the token in its environment as the step's Secret gives it."""
    import os
    import subprocess
    import sys
    import sysconfig

    from airflow_provider_sft.core.backends.kubernetes.program import program_zip
    from airflow_provider_sft.core.pod.protocol import parse_result
    from tests.k8s.standin import image_entries

    site = tmp_path / "image" / "site-packages"
    site.mkdir(parents=True)
    installed = Path(sysconfig.get_paths()["purelib"])
    for entry in image_entries():
        os.symlink(installed / entry, site / entry)
    program = tmp_path / "program.pyz"
    program.write_bytes(program_zip())
    run = trained_run(tmp_path / "ws")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "run_dir": str(run),
                "model_dir": str(run / c.FINAL_MODEL_DIR),
                "metrics_path": str(run / c.METRICS_SUMMARY_FILE),
                "latest_path": str(tmp_path / "ws" / c.LATEST_FILE),
                "publish_to": f"hf://{REPO}",
                "publish_settings": PublishOptions.build(hf_endpoint=hub.url).settings(),
            }
        )
    )
    assert TOKEN not in config.read_text()  # the token travels in the environment only
    env = {
        "PATH": os.defpath,
        "HOME": str(tmp_path / "image"),
        "PYTHONPATH": str(site),
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",  # the stand-in speaks LFS
    }
    done = subprocess.run(
        [sys.executable, "-S", str(program), "export", str(config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    publication = parse_result(done.stdout.splitlines())["publication"]
    assert publication["uri"] == f"hf://{REPO}@{hub.commits(REPO)[0].oid}" and publication["files"] == 5
    assert TOKEN not in done.stdout + done.stderr
