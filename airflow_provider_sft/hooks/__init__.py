"""Airflow hooks: the cluster connection (cncf.kubernetes), the Hugging Face Hub, AWS."""

import airflow_provider_sft.version_compat  # noqa: F401  (refuses an Airflow older than 3.1, as providers do)
