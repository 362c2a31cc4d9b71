"""Publish an exported model to a Hugging Face Hub repo: see :func:`publish_hub`.

Why one commit with a parent: a Hub revision is the pointer. The files of a commit appear
together or not at all, so uploading the LFS blobs first (invisible until a commit names
them) and then committing every file at once is what "nothing half-published" means here.
``parent_commit`` is the head read before the upload: if another client commits to the
branch meanwhile, the Hub refuses ours (412) instead of interleaving the two models.

A re-run with the same files makes no commit: the repo's files are compared with the export's
manifest first (an LFS file by its sha256, a regular one by its git blob id), and when every
file matches and none is left over, the publication names the existing head and uploads 0
bytes. Would the Hub make an empty commit? The client guards against one: ``huggingface_hub``
2.4.0's ``create_commit`` drops unchanged files and then skips an all-unchanged commit ("No
files have been modified since last commit. Skipping to prevent empty commit."), which says
the server would otherwise record it (read from the client's source; not tried on the real
Hub). That guard costs a preupload round trip and tells the caller nothing; comparing first
says so in the log and counts what was skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.errors import PublishError
from airflow_provider_sft.core.files import sha256_file
from airflow_provider_sft.core.publish import Destination, Logger, Publication
from airflow_provider_sft.core.publish.manifest import ModelFile, model_files

GITATTRIBUTES = ".gitattributes"  # the Hub's own file in every repo: never the model's, never deleted


def git_blob_id(path: Path) -> str:
    """The id git gives a regular (non-LFS) file: what the Hub reports as its ``blobId``."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_same(remote: Any, local: ModelFile) -> bool:
    """``remote``: a ``RepoSibling`` of ``repo_info(files_metadata=True)``, or None."""
    if remote is None or remote.size != local.size:
        return False
    if remote.lfs is not None:
        return bool(remote.lfs.sha256 == local.sha256)
    return bool(remote.blob_id == git_blob_id(local.path))


def publish_hub(
    model_path: Path,
    destination: Destination,
    *,
    run_name: str,
    token: str | None,
    endpoint: str | None,
    private: bool,
    log: Logger,
) -> Publication:
    """One commit of the whole model (card included) to ``destination.repo_id``.

    The repo is created when missing (``private``), the branch ``destination.revision`` from
    ``main`` when missing. Files of an earlier model that this one lacks are deleted in the
    same commit, so the revision holds exactly this model. ``token`` None: the Hub client's
    own (``HF_TOKEN``, a saved login)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    repo_id = destination.repo_id
    revision = destination.revision or "main"
    files = {file.name: file for file in model_files(model_path)}
    api = HfApi(endpoint=endpoint, token=token)
    state = _Progress(f"hf://{repo_id}@{revision}", api.endpoint, token)
    with state.clear_errors():
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = _revision_info(api, repo_id, revision, log)
        state.head = info.sha
        if private and info.private is False:
            log(f"hf://{repo_id} exists and is public: publish_private applies only to a repo it creates")
        remote = {sibling.rfilename: sibling for sibling in info.siblings or []}
        changed = [name for name, local in files.items() if not is_same(remote.get(name), local)]
        stale = sorted(set(remote) - set(files) - {GITATTRIBUTES})
        if not changed and not stale:
            log(f"hf://{repo_id}@{revision} already holds this model (commit {info.sha}): no commit made")
            return Publication(
                uri=f"hf://{repo_id}@{info.sha}",
                pointer=f"hf://{repo_id}@{revision}",
                files=len(files),
                uploaded_bytes=0,
                skipped_files=len(files),
            )
        operations: list[Any] = [
            _verified_addition(CommitOperationAdd, name, files[name]) for name in changed
        ]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        state.uploading = changed
        log(
            f"publishing {len(changed)} of {len(files)} files "
            f"({sum(files[name].size for name in changed)} bytes) to hf://{repo_id}@{revision}, "
            f"one commit on {info.sha}"
        )
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=f"airflow-provider-sft: run {run_name}",
            commit_description=f"{len(files)} files; {len(changed)} changed, {len(stale)} removed.",
            revision=revision,
            parent_commit=info.sha,
        )
        state.committed = commit.oid
        # What the commit holds is what the manifest lists: every file, by its sha256 or blob id.
        held = api.model_info(repo_id, revision=commit.oid, files_metadata=True)
        held_files = {sibling.rfilename: sibling for sibling in held.siblings or []}
        wrong = [name for name, local in files.items() if not is_same(held_files.get(name), local)]
        wrong += sorted(set(held_files) - set(files) - {GITATTRIBUTES})
        if wrong:
            raise PublishError(
                f"hf://{repo_id}@{commit.oid}: the commit does not hold {', '.join(wrong)} as "
                f"{c.MODEL_MANIFEST_FILE} lists them; {revision} points to it: publish again"
            )
    uploaded = sum(files[name].size for name in changed)
    skipped = len(files) - len(changed)
    log(
        f"published {len(changed)} files ({uploaded} bytes; {skipped} unchanged, {len(stale)} removed) "
        f"to hf://{repo_id}@{commit.oid}; {revision} now points to it"
    )
    return Publication(
        uri=f"hf://{repo_id}@{commit.oid}",
        pointer=f"hf://{repo_id}@{revision}",
        files=len(files),
        uploaded_bytes=uploaded,
        skipped_files=skipped,
    )


def _verified_addition(operation: Any, name: str, local: ModelFile) -> Any:
    """The file as a commit operation, once its sha256 is the manifest's: a file changed since the
    export is refused before anything is sent. The client is handed the sha256, not reading it again."""
    actual = sha256_file(local.path)
    if actual != local.sha256:
        raise PublishError(
            f"{local.path}: changed since the export (its sha256 is not the one in "
            f"{c.MODEL_MANIFEST_FILE}); nothing was committed: export the model again"
        )
    addition = operation(path_in_repo=name, path_or_fileobj=str(local.path))
    addition.upload_info.sha256 = bytes.fromhex(actual)
    return addition


def _revision_info(api: Any, repo_id: str, revision: str, log: Logger) -> Any:
    """The repo at ``revision`` with its files' sizes and hashes; a missing branch is made from main."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        return api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        if revision == "main":
            raise
    api.create_branch(repo_id, branch=revision, exist_ok=True)
    log(f"created branch {revision} of hf://{repo_id} from main")
    return api.model_info(repo_id, revision=revision, files_metadata=True)


class _Progress:
    """Where a publish stands, so an error can say what moved (nothing) and what was sent."""

    def __init__(self, where: str, endpoint: str, token: str | None):
        self.where, self.endpoint, self.token = where, endpoint, token
        self.head: str | None = None
        self.uploading: list[str] = []
        self.committed: str | None = None

    def _unchanged(self) -> str:
        if self.committed is not None:
            return f"the commit {self.committed} was made and the revision points to it"
        if self.head is None:
            return "nothing was committed"
        sent = (
            f"; what was sent of its {len(self.uploading)} files is in no revision" if self.uploading else ""
        )
        return f"nothing was committed: the revision still points to {self.head}{sent}"

    def _clean(self, text: str) -> str:
        first = (text.strip().splitlines() or [""])[0]
        return first.replace(self.token, "***") if self.token else first

    @contextlib.contextmanager
    def clear_errors(self) -> Iterator[None]:
        """Every failure of the Hub client becomes one :class:`PublishError` line, token-free."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

        try:
            yield
        except PublishError:
            raise
        except OfflineModeIsEnabled:
            raise PublishError(f"{self.where}: HF_HUB_OFFLINE is set, so nothing can be published") from None
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status == 412:
                message = (
                    f"another commit reached the branch while this one was prepared (HTTP 412: its head is "
                    f"no longer {self.head}); {self._unchanged()}: publish again to commit on top of it"
                )
            elif status in (401, 403) or isinstance(error, RepositoryNotFoundError):
                message = (
                    f"the Hub at {self.endpoint} refused access (HTTP {status}): the huggingface connection's "
                    "token (hf_conn_id, or HF_TOKEN) is missing, wrong, or cannot write to this repo; "
                    f"{self._unchanged()}"
                )
            else:
                reason = self._clean(error.server_message or str(error))
                message = f"the Hub at {self.endpoint} answered HTTP {status}: {reason}; {self._unchanged()}"
            raise PublishError(f"{self.where}: {message}") from None
        except (OSError, ValueError, RuntimeError) as error:
            # A file that cannot be read (OSError), the client's ValueError (invalid card metadata)
            # and RuntimeError (an LFS upload: its cause a connection error or the server's answer).
            raise PublishError(f"{self.where}: {self._describe(error)}; {self._unchanged()}") from None
        except Exception as error:
            if type(error).__module__.startswith("httpx"):
                raise PublishError(
                    f"{self.where}: cannot reach the Hub at {self.endpoint} ({type(error).__name__}); "
                    f"{self._unchanged()}"
                ) from None
            raise

    def _describe(self, error: BaseException) -> str:
        cause = error.__cause__ or error
        if type(cause).__module__.startswith("httpx") or isinstance(cause, ConnectionError):
            return f"cannot reach the Hub at {self.endpoint} ({type(cause).__name__})"
        return f"{type(error).__name__}: {self._clean(str(error))}"
