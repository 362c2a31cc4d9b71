"""The Airflow minor this provider runs on, and the oldest it supports.

Airflow asks every provider to keep such a module of its own rather than import another provider's
(apache-airflow-providers-common-compat's ``version_compat`` says so). Importing it on an Airflow
older than :data:`MIN_AIRFLOW_VERSION` raises, as an official provider's ``__init__`` does: the
package root cannot, because the core and the KFP shim import it where no Airflow is installed.
"""

from __future__ import annotations

from airflow import __version__ as airflow_version
from packaging.version import Version

#: The oldest Airflow this provider supports; pyproject.toml's ``apache-airflow>=`` says the same.
MIN_AIRFLOW_VERSION = "3.1.0"

AIRFLOW_VERSION = Version(Version(airflow_version).base_version)
AIRFLOW_V_3_2_PLUS = Version("3.2.0") <= AIRFLOW_VERSION
AIRFLOW_V_3_3_PLUS = Version("3.3.0") <= AIRFLOW_VERSION

if Version(MIN_AIRFLOW_VERSION) > AIRFLOW_VERSION:
    raise RuntimeError(f"The package `airflow-provider-sft` needs Apache Airflow {MIN_AIRFLOW_VERSION}+")
