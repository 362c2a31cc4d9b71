"""Bad input fails a task for good: retrying cannot fix a parameter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_sft.core.errors import InvalidParameterError


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
