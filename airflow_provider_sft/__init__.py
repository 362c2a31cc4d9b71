"""Apache Airflow provider for supervised fine-tuning (SFT) of LLMs on Kubeflow Trainer."""

__version__ = "0.1.0"
