"""Where this process sits in a multi-node job, and how the nodes agree that data is ready.

Every node of a TrainJob runs the same container command. The Trainer controller tells
them apart through the ``PET_*`` variables it injects (torchrun reads the same names).
Data processing writes to the shared PVC, so only node 0 runs it; the others wait for
the marker node 0 writes when it is done, for this attempt of the run (a marker an
earlier attempt left does not count).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.clock import SYSTEM_CLOCK, Clock
from airflow_provider_sft.core.errors import TrainingFailedError
from airflow_provider_sft.core.files import atomic_write_bytes

DATA_READY_MARKER = ".data-ready.json"
DATA_WAIT_SECONDS_ENV = "SFT_DATA_WAIT_SECONDS"
DEFAULT_DATA_WAIT_SECONDS = 3600.0
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Topology:
    node_rank: int = 0
    num_nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def is_first(self) -> bool:
        return self.node_rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Topology:
        try:
            topology = cls(
                node_rank=int(env.get("PET_NODE_RANK", "0")),
                num_nodes=int(env.get("PET_NNODES", "1")),
                master_addr=env.get("PET_MASTER_ADDR", "127.0.0.1"),
                master_port=int(env.get("PET_MASTER_PORT", str(DEFAULT_MASTER_PORT))),
            )
        except ValueError as exc:
            raise TrainingFailedError(f"bad PET_* variable from the Trainer controller: {exc}") from None
        if not 0 <= topology.node_rank < topology.num_nodes:
            raise TrainingFailedError(
                f"PET_NODE_RANK={topology.node_rank} is outside PET_NNODES={topology.num_nodes}"
            )
        return topology


def mark_data_ready(processed_dir: Path, attempt: str, report: dict[str, Any]) -> None:
    atomic_write_bytes(
        processed_dir / DATA_READY_MARKER, jsonio.dumps({"attempt": attempt, "report": report})
    )


def clear_data_ready(processed_dir: Path) -> None:
    (processed_dir / DATA_READY_MARKER).unlink(missing_ok=True)


def wait_for_data(
    processed_dir: Path,
    attempt: str,
    *,
    timeout: float | None = None,
    poll: float = 1.0,
    log: Callable[[str], None] = print,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, Any]:
    """Wait until node 0 marks the processed data ready for ``attempt``; its report."""
    if timeout is None:
        timeout = float(os.environ.get(DATA_WAIT_SECONDS_ENV, DEFAULT_DATA_WAIT_SECONDS))
    marker = processed_dir / DATA_READY_MARKER
    deadline = clock.monotonic() + timeout
    log(f"waiting for node 0 to process the data (marker {marker}, up to {timeout:g}s)")
    while True:
        try:
            ready = jsonio.loads(marker.read_bytes())
        except (OSError, ValueError):
            ready = None
        if ready is not None and ready.get("attempt") == attempt:
            return ready["report"]
        if clock.monotonic() >= deadline:
            raise TrainingFailedError(
                f"node 0 did not finish data processing within {timeout:g}s (no {marker} for attempt "
                f"{attempt or '-'}); see node 0's log, or raise {DATA_WAIT_SECONDS_ENV}"
            )
        clock.sleep(poll)
