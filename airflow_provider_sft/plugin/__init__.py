"""The provider's Airflow 3 plugin: a *Training results* tab on task instances.

Declared in provider info (``plugins``), so installing the provider is enough: Airflow's API
server mounts :data:`results.app` under ``/sft`` and the UI shows the page in a tab of every
task instance (``external_views`` with destination ``task_instance``). The page needs Airflow's
own login and read access to the DAG's task instances.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

import airflow_provider_sft.version_compat  # noqa: F401  (refuses an Airflow older than 3.1, as providers do)
from airflow_provider_sft.plugin.results import PREFIX, app

#: The UI route of the tab: ``/dags/<dag>/runs/<run>/tasks/<task>/plugin/<URL_ROUTE>``.
URL_ROUTE = "sft-results"


class SFTResultsPlugin(AirflowPlugin):
    name = "sft"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "SFT training results"}]
    external_views = [
        {
            "name": "Training results",
            # Relative to the UI's base URL; the UI fills in the task instance.
            "href": PREFIX.lstrip("/") + "/results/{DAG_ID}/{RUN_ID}/{TASK_ID}?map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": URL_ROUTE,
        }
    ]
