"""Package boundaries and provider registration."""

from __future__ import annotations

import ast
import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema

import airflow_provider_sft
from airflow_provider_sft.get_provider_info import get_provider_info

PACKAGE = Path(airflow_provider_sft.__file__).parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_imports_neither_airflow_nor_kfp():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in {"airflow", "kfp"}
        )
        for path in (PACKAGE / "core").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_provider_info_imports_no_airflow():
    """Airflow's ProvidersManager loads ``get_provider_info`` while Airflow itself is importing: a
    module that imports Airflow there is half-initialized when it is called (a circular import)."""
    path = PACKAGE / "get_provider_info.py"
    airflow_imports = sorted(m for m in imported_modules(path) if m.split(".")[0] == "airflow")
    assert airflow_imports == []
    assert "airflow_provider_sft.version_compat" not in imported_modules(path)


def test_provider_entry_point_and_info_match_airflows_schema():
    (entry,) = [
        e for e in entry_points(group="apache_airflow_provider") if e.value.startswith("airflow_provider_sft")
    ]
    info = entry.load()()
    assert info == get_provider_info()
    schema_path = Path(importlib.import_module("airflow").__file__).parent / "provider_info.schema.json"
    jsonschema.validate(info, json.loads(schema_path.read_text()))
    assert info["package-name"] == "airflow-provider-sft"
    assert info["versions"] == [airflow_provider_sft.__version__]


def test_every_registered_module_and_link_imports():
    info = get_provider_info()
    for kind in ("operators", "triggers", "hooks"):
        for group in info[kind]:
            for module in group["python-modules"]:
                importlib.import_module(module)
    for link in info["extra-links"]:
        module, _, name = link.rpartition(".")
        assert getattr(importlib.import_module(module), name)
