"""Evaluate a trained model: the model an asset event names, or one given by path."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from airflow_provider_sft.assets import MODELS_ALIAS, model_alias, newest_model_event
from airflow_provider_sft.core.dataset.options import RemoteAccess
from airflow_provider_sft.core.errors import InvalidParameterError
from airflow_provider_sft.core.publish.fetch import fetch_model
from airflow_provider_sft.core.results.evaluate import DEFAULT_PROMPT, evaluate_model, model_location
from airflow_provider_sft.hooks.remote_access import remote_access
from airflow_provider_sft.operators.failures import bad_input_is_final


class EvaluateModelOperator(BaseOperator):
    """Load a model, reply to a held-out prompt and compute a perplexity on a validation file.

    The model is ``model`` when given; else the one named by the newest event of the asset alias
    ``asset_alias`` (``ExportModelOperator``'s outlet): an event that triggered this run (a DAG
    scheduled on the alias), or, for a manual run, the alias's newest event (the alias is this
    task's inlet). The event's ``model_path`` is loaded when this worker sees it, else the
    published model (``model_uri``: the S3 run prefix or the Hub commit) is fetched into a
    temporary directory and checked against its manifest first. See
    :mod:`airflow_provider_sft.core.results.evaluate` and :mod:`airflow_provider_sft.core.publish.fetch`.

    :param model: a model directory, an S3 run prefix (``s3://bucket/prefix/runs/<run>/``) or
        ``hf://org/name[@revision]``; empty: from the asset event. (templated)
    :param prompt: a question the training data does not ask; its reply is logged. (templated)
    :param validation_file: held-out conversations (messages JSONL); empty: the bundled held-out
        file. Its records are scored, never logged. (templated)
    :param max_new_tokens: the reply's length cap. (templated)
    :param hf_conn_id: a ``huggingface`` connection for a Hub model (token, endpoint); default
        ``HF_TOKEN``/``HF_ENDPOINT``. (templated)
    :param aws_conn_id: an ``aws`` connection for a model published to S3; default: the one the
        event's export published through (``aws_conn_id`` in its extra), else boto3's chain. (templated)
    :param asset_alias: the alias whose events name the model (default ``sft_models``).

    Returns (XCom) ``perplexity``, ``mean_nll``, ``scored_tokens``, ``conversations``, ``reply``,
    ``prompt``, ``model`` (what was loaded), ``validation_file`` and, from the event, ``model_uri``,
    ``source_run`` (the training run) and ``source_run_id`` (the DAG run that exported it).
    """

    template_fields: Sequence[str] = (
        "model",
        "prompt",
        "validation_file",
        "max_new_tokens",
        "hf_conn_id",
        "aws_conn_id",
    )
    ui_color = "#e8f8f5"

    def __init__(
        self,
        *,
        model: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        validation_file: str | None = None,
        max_new_tokens: int | str = 32,
        hf_conn_id: str | None = None,
        aws_conn_id: str | None = None,
        asset_alias: str = MODELS_ALIAS,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)  # each result key is its own XCom too
        kwargs["inlets"] = [*(kwargs.get("inlets") or []), model_alias(asset_alias)]
        super().__init__(**kwargs)
        self.model = model
        self.prompt = prompt
        self.validation_file = validation_file
        self.max_new_tokens = max_new_tokens
        self.hf_conn_id = hf_conn_id
        self.aws_conn_id = aws_conn_id
        self.asset_alias = asset_alias

    def execute(self, context: Any) -> dict[str, Any]:
        with bad_input_is_final():  # a bad parameter is not retried
            return self._execute(context)

    def _execute(self, context: Any) -> dict[str, Any]:
        if self.model:
            event: dict[str, Any] = {"model_path": self.model, "model_uri": self.model}
        else:
            found = newest_model_event(context, self.asset_alias)
            if found is None:
                raise InvalidParameterError(
                    {"model": f"is empty and the asset alias {self.asset_alias!r} has no model event yet"}
                )
            event = found
        location, published = model_location(event)
        with tempfile.TemporaryDirectory(prefix="sft-evaluate-") as scratch:
            if published is not None:  # not on this worker: fetched and checked against its manifest
                # the connections it was published through, unless this task names its own
                access = remote_access(
                    self.aws_conn_id or event.get("aws_conn_id"),
                    self.hf_conn_id or event.get("hf_conn_id"),
                    model=RemoteAccess,
                )
                location = str(
                    fetch_model(published, Path(scratch) / "model", access=access, log=self.log.info)
                )
            self.log.info("Evaluating %s", published or location)
            evaluation = evaluate_model(
                str(location),
                prompt=self.prompt,
                validation_file=Path(self.validation_file) if self.validation_file else None,
                max_new_tokens=int(self.max_new_tokens),
            )
        if published is not None:  # what was loaded: the published model, not the scratch copy
            evaluation = dataclasses.replace(evaluation, model=published)
        self.log.info("Reply to %r: %r", evaluation.prompt, evaluation.reply)
        self.log.info(
            "Perplexity on %s: %.4f (%d held-out conversations, %d reply tokens)",
            Path(evaluation.validation_file).name,
            evaluation.perplexity,
            evaluation.conversations,
            evaluation.scored_tokens,
        )
        return evaluation.to_dict() | {
            "model_uri": event.get("model_uri"),
            "source_run": event.get("run"),
            "source_run_id": event.get("run_id"),
        }
