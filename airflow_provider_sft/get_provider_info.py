"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any

from airflow_provider_sft import __version__

INTEGRATION = "Supervised Fine-Tuning (SFT)"

#: The ``huggingface`` connection form, declared so the UI needs no hook import.
HUGGINGFACE_CONNECTION: dict[str, Any] = {
    "hook-class-name": "airflow_provider_sft.hooks.huggingface.HuggingFaceHook",
    "hook-name": "Hugging Face Hub",
    "connection-type": "huggingface",
    "conn-fields": {
        "revision": {
            "label": "Default revision",
            "description": "Branch, tag or commit used when a dataset source names none (e.g. main).",
            "schema": {"type": ["string", "null"]},
        },
    },
    "ui-field-behaviour": {
        "hidden-fields": ["schema", "port", "login", "extra"],
        "relabeling": {"host": "Hub endpoint", "password": "Access token"},
        "placeholders": {
            "host": "https://huggingface.co (leave empty for the public Hub)",
            "password": "hf_...",
        },
    },
}


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-provider-sft",
        "name": "SFT",
        "description": (
            "Supervised fine-tuning of LLMs with instructlab-training, run as Kubeflow Trainer TrainJobs "
            "on Kubernetes GPUs or on the embedded local backend."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://github.com/instructlab/training",
                "tags": ["software"],
            }
        ],
        "extra-links": [
            "airflow_provider_sft.links.TrainingJobConsoleLink",
            "airflow_provider_sft.links.TrainingResultsLink",
        ],
        # The *Training results* tab of task instances (an Airflow 3 FastAPI app + external view).
        "plugins": [{"name": "sft", "plugin-class": "airflow_provider_sft.plugin.SFTResultsPlugin"}],
        "triggers": [
            {
                "integration-name": INTEGRATION,
                "python-modules": ["airflow_provider_sft.triggers.training_job"],
            }
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_sft.hooks.sft",
                    "airflow_provider_sft.hooks.huggingface",
                ],
            }
        ],
        # The Kubernetes side reuses cncf.kubernetes' ``kubernetes`` connection type.
        "connection-types": [HUGGINGFACE_CONNECTION],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_sft.operators.dataset",
                    "airflow_provider_sft.operators.prepare",
                    "airflow_provider_sft.operators.train",
                    "airflow_provider_sft.operators.export",
                    "airflow_provider_sft.operators.evaluate",
                    "airflow_provider_sft.operators.validate",
                ],
            }
        ],
    }
