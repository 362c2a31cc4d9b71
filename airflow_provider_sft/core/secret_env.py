"""Which environment variables hold credentials, judged by name and value.

The Kubernetes backend refuses them in ``envs`` (they would be plain values in the TrainJob
spec); the operator masks their values in Airflow's logs and Rendered Templates.
"""

from __future__ import annotations

import itertools
import re

_SECRET_WORDS = {"TOKEN", "SECRET", "PASSWORD", "PASSWD", "APIKEY", "CREDENTIAL", "CREDENTIALS"}
_SECRET_PAIRS = {("API", "KEY"), ("ACCESS", "KEY"), ("PRIVATE", "KEY"), ("SECRET", "KEY")}
_FLAG_VALUES = {"", "0", "1", "true", "false", "yes", "no", "on", "off"}


def looks_secret(name: str, value: str) -> bool:
    """An env var that holds a credential: a name word such as TOKEN or API_KEY, and not a flag.

    Words, not substrings: ``TOKENIZERS_PARALLELISM`` and ``MAX_TOKENS`` are settings, and so is
    ``HF_HUB_DISABLE_IMPLICIT_TOKEN=1`` (its value is a flag).
    """
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name.upper()) if w]
    named = bool(_SECRET_WORDS & set(words)) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    )
    return named and value.strip().lower() not in _FLAG_VALUES


def secret_values(envs: object) -> list[str]:
    """The values of the secret-looking variables of ``envs`` (``K=V,...`` or a mapping).

    Unparseable input gives what could be read: validation reports it; masking must not fail.
    """
    if isinstance(envs, str):
        pairs = (item.partition("=") for item in envs.split(","))
        items = [(key.strip(), value.strip()) for key, sep, value in pairs if sep]
    elif isinstance(envs, dict):
        items = [(str(key), str(value)) for key, value in envs.items()]
    else:
        return []
    return [value for key, value in items if value and looks_secret(key, value)]
