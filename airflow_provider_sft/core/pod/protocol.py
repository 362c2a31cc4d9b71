"""The pod program's line protocol: what its output says to a backend and to the task log.

The training process (the entrypoint, locally or in a pod) prints everything it and its
libraries say: instructlab-training's and datasets' logging, progress bars, warnings,
tracebacks. All of it is kept (``<run>/train.log`` locally, the pod's log on Kubernetes), but
a person reading the task log wants the run's story, and a backend wants the outcome. Three
kinds of line carry them, each defined here with its format and its parser:

- the provider's own lines, which start with :data:`PREFIX` (``[sft] ``, ``[sft node i/n] ``
  on several nodes): the task log shows them, ``[sft] warning: ...`` as a warning;
- ``ERROR: ...`` (:data:`ERROR_PREFIX`), the one line a failed process ends with: shown as an
  error, and the failure's message;
- ``SFT_RESULT {...}`` (:data:`RESULT_PREFIX`), a workspace step's JSON result on its last
  line: read by the backend, never shown.

Everything else stays out of the task log.

Standard library only (:mod:`~airflow_provider_sft.core.jsonio` falls back to it): the pod
program's ``__main__`` imports this module before anything else, to report an image that
lacks a module in one ``ERROR:`` line.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

from airflow_provider_sft.core import jsonio

PREFIX = "[sft] "
#: A provider line whose message starts with this is a warning (``[sft] warning: ...``).
WARNING_MARK = "warning: "
ERROR_PREFIX = "ERROR: "  # the last line of a failed program
RESULT_PREFIX = "SFT_RESULT "  # the last line of a workspace step that succeeded
_PROVIDER = re.compile(r"\[sft(?: node \d+/\d+)?\] ")


class Shown(NamedTuple):
    """A line as the task log shows it."""

    level: int  # a ``logging`` level
    text: str

    @property
    def error(self) -> str | None:
        """The failure's message when this is the program's ``ERROR:`` line, else None."""
        return self.text.removeprefix(ERROR_PREFIX) if self.text.startswith(ERROR_PREFIX) else None


def node_prefix(node_rank: int, num_nodes: int) -> str:
    """The prefix of the provider's lines on one node of a run (:data:`PREFIX` on a single node)."""
    return PREFIX if num_nodes <= 1 else f"[sft node {node_rank}/{num_nodes}] "


def provider_line(message: str) -> str:
    """A line of the provider's own, as a backend adds it to the task log (``[sft] message``)."""
    return PREFIX + message


def error_line(message: str) -> str:
    """The line a failed program ends with (``ERROR: message``)."""
    return ERROR_PREFIX + message


#: Modules only one feature needs, and that feature: the advice names it, not the training stack.
_NEEDED_BY = {
    "boto3": "publish_to=s3://... (the export step uploads the model with it)",
    "botocore": "publish_to=s3://... (the export step uploads the model with it)",
    "s3transfer": "publish_to=s3://... (the export step uploads the model with it)",
}


def missing_module(exc: ImportError) -> str:
    """What a program whose image lacks a module it imports reports (after :data:`ERROR_PREFIX`)."""
    top = (exc.name or "").partition(".")[0]
    if top in _NEEDED_BY:
        return (
            f"the training image lacks the Python module {exc.name!r} ({exc}), which {_NEEDED_BY[top]} "
            "needs: set image= to one that has it (deploy/Containerfile.training installs it)"
        )
    return (
        f"the training image lacks the Python module {exc.name or exc!r} ({exc}). The node container needs "
        "Python with torch and instructlab-training (and their dependencies) in its image: set image= to "
        "one that has them (see deploy/Containerfile.training)"
    )


def result_line(result: dict[str, Any]) -> str:
    """The line a workspace step ends with: its result as JSON after :data:`RESULT_PREFIX`."""
    return RESULT_PREFIX + jsonio.dumps(result).decode()


def is_result_line(line: str) -> bool:
    return line.startswith(RESULT_PREFIX)


def parse_result(lines: list[str]) -> dict[str, Any] | None:
    """The result a step printed (its last ``SFT_RESULT`` line), or None."""
    for line in reversed(lines):
        if is_result_line(line):
            return jsonio.loads(line.removeprefix(RESULT_PREFIX))
    return None


def classify_log_line(line: str) -> Shown | None:
    """How the task log shows one output line, or None when only the full output keeps it.

    Progress bars rewrite their line with carriage returns, and one written without a newline
    (by a training subprocess sharing the output) can end up in front of a provider line: only
    what follows the last ``\\r`` counts, and a provider line is found after such a remnant.
    """
    visible = line.rpartition("\r")[2]
    if visible.startswith(ERROR_PREFIX):
        return Shown(logging.ERROR, visible)
    match = _PROVIDER.search(visible)
    if match is None:
        return None
    text = visible[match.start() :]
    warning = text.startswith(WARNING_MARK, match.end() - match.start())
    return Shown(logging.WARNING if warning else logging.INFO, text)
