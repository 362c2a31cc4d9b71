"""KFP shim: ``train_model`` with the exact interface of the original "SFT Training Component".

Needs the ``kfp`` extra (``pip install airflow-provider-sft[kfp]``); the work is done by
:mod:`airflow_provider_sft.kfp.runner` on the shared core. The component is imported lazily:
inside KFP's container ``kfp.dsl`` is the slim runtime build, and the runner must not need it.
"""

from typing import Any

__all__ = ["BASE_IMAGE", "PACKAGES_TO_INSTALL", "make_train_model", "train_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from airflow_provider_sft.kfp import component

        return getattr(component, name)
    raise AttributeError(name)
