"""Bad input fails a task for good: retrying cannot fix a parameter, nor data the gate refused."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow_provider_sft.compat import AirflowFailException
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.training.data_report import DataGateError


class FinalInvalidParameterError(InvalidParameterError, AirflowFailException):
    """An :class:`InvalidParameterError` that Airflow does not retry (an ``AirflowFailException``)."""


@contextlib.contextmanager
def bad_input_is_final() -> Iterator[None]:
    try:
        yield
    except InvalidParameterError as error:
        if isinstance(error, FinalInvalidParameterError):
            raise
        final = FinalInvalidParameterError(error.errors)
        final.args = error.args  # the same message, its kind included
        raise final from error


class FinalDataGateError(DataGateError, AirflowFailException):
    """A run stopped by the data gate: the same data and parameters would stop it again."""


@contextlib.contextmanager
def data_gate_is_final() -> Iterator[None]:
    try:
        yield
    except DataGateError as error:
        if isinstance(error, FinalDataGateError):
            raise
        raise FinalDataGateError(*error.args) from error
