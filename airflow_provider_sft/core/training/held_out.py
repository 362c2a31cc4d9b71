"""The held-out validation samples, chosen as instructlab-training 0.16.2 chooses them.

instructlab's ``TokenDataset.load_and_split`` (``sampler.py``) holds out samples with
``datasets.Dataset.train_test_split(test_size=validation_split, seed=seed, shuffle=True)``:
``ceil(validation_split * n)`` samples, the first ones of a ``numpy.random.default_rng(seed)``
permutation, and trains on the rest in that permutation's order. The CPU loop calls the same
function on the sample indices rather than copying its arithmetic, so on the same processed
data both paths hold out the same samples, and a ``datasets`` upgrade moves both together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from airflow_provider_sft.core.errors import DatasetError

T = TypeVar("T")


def split_held_out(samples: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """``(train, held_out)``; with ``fraction`` 0 every sample is trained on, in its order.

    Raises :class:`DatasetError` when the split would leave nothing to train on: instructlab
    fails there too, with ``datasets``' message, on the training node.
    """
    if fraction <= 0:
        return list(samples), []
    held = math.ceil(fraction * len(samples))
    if held >= len(samples):
        raise DatasetError(
            f"validation_split={fraction:g} holds out {held} of the {len(samples)} processed samples and "
            "leaves none to train on: lower validation_split or train on more data"
        )
    from datasets import Dataset

    split = Dataset.from_dict({"index": list(range(len(samples)))}).train_test_split(
        test_size=fraction, seed=seed, shuffle=True
    )
    return [samples[i] for i in split["train"]["index"]], [samples[i] for i in split["test"]["index"]]
