"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from airflow_provider_sft import __version__

INTEGRATION = "Supervised Fine-Tuning (SFT)"


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
            "airflow_provider_sft.links.TrainJobConsoleLink",
            "airflow_provider_sft.links.LossChartLink",
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_provider_sft.triggers.trainjob"]}
        ],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["airflow_provider_sft.hooks.sft"]}],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_provider_sft.operators.dataset",
                    "airflow_provider_sft.operators.train",
                    "airflow_provider_sft.operators.export",
                ],
            }
        ],
    }
