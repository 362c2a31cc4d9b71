"""Which lines of a training process's output the Airflow task log shows, and at which level.

The training process (the entrypoint, locally or in a pod) prints everything it and its
libraries say: instructlab-training's and datasets' logging, progress bars, warnings,
tracebacks. All of it is kept (``<run>/train.log`` locally, the pod's log on Kubernetes), but
a person reading the task log wants the run's story: the provider's own lines, which start
with :data:`PREFIX` (``[sft] ``, ``[sft node i/n] `` on several nodes), and the one
``ERROR: ...`` line a failed process ends with. Everything else stays out of the task log.

Standard library only: the pod program carries this module too (the entrypoint prints with
:func:`node_prefix`).
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

from airflow_provider_sft.core.steps import ERROR_PREFIX

PREFIX = "[sft] "
#: A provider line whose message starts with this is a warning (``[sft] warning: ...``).
WARNING_MARK = "warning: "
_PROVIDER = re.compile(r"\[sft(?: node \d+/\d+)?\] ")


class Shown(NamedTuple):
    """A line as the task log shows it."""

    level: int  # a ``logging`` level
    text: str


def node_prefix(node_rank: int, num_nodes: int) -> str:
    """The prefix of the provider's lines on one node of a run (:data:`PREFIX` on a single node)."""
    return PREFIX if num_nodes <= 1 else f"[sft node {node_rank}/{num_nodes}] "


def provider_line(message: str) -> str:
    """A line of the provider's own, as a backend adds it to the task log (``[sft] message``)."""
    return PREFIX + message


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
