"""Label values of the run's identifiers: valid, and never two identifiers as one."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_sft.core import constants as c
from airflow_provider_sft.core.backends.kubernetes import KubernetesBackend
from airflow_provider_sft.core.backends.kubernetes.config import KubernetesConfig
from airflow_provider_sft.core.backends.kubernetes.manifest import label_value

#: k8s.io/apimachinery validation.IsValidLabelValue
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def labels_of(map_index: int) -> dict[str, str]:
    backend = KubernetesBackend(
        config=KubernetesConfig.build(pvc_name="ws"),
        connect=None,  # type: ignore[arg-type]
        run_labels={c.LABEL_MAP_INDEX: str(map_index)},  # as operators.workspace.run_labels gives it
    )
    return backend.labels()


def test_an_unmapped_task_is_not_labelled_as_map_index_1():
    unmapped, first, second = (labels_of(i)[c.LABEL_MAP_INDEX] for i in (-1, 0, 1))
    assert len({unmapped, first, second}) == 3
    assert (first, second) == ("0", "1")  # valid values stay as they are
    assert LABEL_VALUE.match(unmapped)


@pytest.mark.parametrize(
    ("a", "b"),
    [("-1", "1"), ("a:b", "a-b"), ("_x_", "x"), ("x" * 70, "x" * 71), ("run.", "run")],
)
def test_texts_that_sanitise_alike_get_distinct_values(a, b):
    assert label_value(a) != label_value(b)


@given(st.text(max_size=120))
def test_every_text_becomes_a_valid_label_value(text):
    value = label_value(text)
    assert len(value) <= 63 and LABEL_VALUE.match(value), value
