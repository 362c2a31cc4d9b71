"""SFT evaluate: runs by itself after every model the pipeline exports (an Airflow Asset schedule).

``sft_pipeline``'s export task emits an event of the model's asset through the ``sft_models``
alias (the asset is the destination: ``s3://bucket/prefix``, ``hf://org/name`` or the
workspace's ``latest.json``; the event's ``extra`` names this run's model and its metrics). This
DAG is scheduled on that alias: it loads the model the event names, replies to a prompt the
training data never asked, and computes the perplexity on a held-out chat file; both are in
the ``evaluate`` task's XCom (``perplexity``, ``reply``).

Unpause it, and it runs after each export. By hand (``airflow dags test sft_evaluate``) it
takes the alias's newest model, or the ``model`` given in ``conf``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_provider_sft.assets import model_alias
from airflow_provider_sft.core.results.evaluate import DEFAULT_PROMPT
from airflow_provider_sft.operators import EvaluateModelOperator

with DAG(
    dag_id="sft_evaluate",
    description="After each exported model: a reply to a held-out prompt and a held-out perplexity",
    schedule=[model_alias()],  # every model ExportModelOperator exports, wherever it is published
    catchup=False,
    tags=["sft", "llm", "evaluation"],
    render_template_as_native_obj=True,  # params keep their types (None stays None)
    params={
        "model": Param(
            None,
            type=["null", "string"],
            title="Model",
            description="A model directory, an S3 run prefix (s3://bucket/prefix/runs/<run>/) or "
            "hf://org/name[@revision]; empty: the model of the asset event (fetched when this worker "
            "does not see its directory).",
        ),
        "prompt": Param(
            DEFAULT_PROMPT,
            type="string",
            minLength=1,
            title="Prompt",
            description="A question the training data does not ask; the reply is logged and kept in XCom.",
        ),
        "validation_file": Param(
            None,
            type=["null", "string"],
            title="Validation file",
            description="Held-out conversations (messages JSONL); empty: the provider's bundled held-out file.",
        ),
        "aws_conn_id": Param(
            "",
            type="string",
            title="AWS connection",
            description="An aws connection to fetch a model published to S3; empty: boto3's own chain.",
        ),
        "hf_conn_id": Param(
            "",
            type="string",
            title="Hugging Face connection",
            description="A huggingface connection to fetch a private Hub model; empty: HF_TOKEN.",
        ),
        "max_new_tokens": Param(
            32,
            type="integer",
            minimum=1,
            title="Reply length",
            description="The most tokens the reply may have.",
        ),
    },
) as dag:
    EvaluateModelOperator(
        task_id="evaluate",
        model="{{ params.model }}",
        prompt="{{ params.prompt }}",
        validation_file="{{ params.validation_file }}",
        max_new_tokens="{{ params.max_new_tokens }}",
        aws_conn_id="{{ params.aws_conn_id }}",
        hf_conn_id="{{ params.hf_conn_id }}",
    )
