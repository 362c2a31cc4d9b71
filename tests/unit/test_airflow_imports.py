"""Every name the provider imports from Airflow exists in the Airflow it runs on.

Run by the main venv (the newest supported Airflow) and by the compatibility venv (the oldest,
scripts/test-compat.sh): a name one minor moved or lacks fails here, in the venv that lacks it,
not in a user's task. Two checks:

* every module of the package imports (what ``airflow dags list-import-errors`` would show);
* every ``from airflow... import name`` in the package, the ones inside functions too (those run
  only when a task reaches them), resolves, unless it sits in a ``try`` that catches ImportError
  or under an ``if`` on a version flag of :mod:`airflow_provider_sft.version_compat` (or
  ``TYPE_CHECKING``: mypy checks those against the newest minor).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import airflow_provider_sft

PACKAGE_DIR = Path(airflow_provider_sft.__file__).parent
DAGS_DIR = PACKAGE_DIR.parent / "dags"


def package_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(airflow_provider_sft.__path__, "airflow_provider_sft.")]
    # The KFP shim lives in its own venv (kfp's pins conflict with Airflow's); nothing else may be left out.
    return sorted(n for n in names if not (n.startswith("airflow_provider_sft.kfp.") and not _has("kfp")))


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent that is a module, not a package
        return False


@pytest.mark.parametrize("module", package_modules())
def test_every_module_of_the_package_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("path", sorted(DAGS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_every_example_dag_file_imports(path):
    spec = importlib.util.spec_from_file_location(f"example_dag_{path.stem}", path)
    assert spec and spec.loader
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


class _AirflowImports(ast.NodeVisitor):
    """``(module, name, line)`` of each unguarded ``from airflow... import name``: a ``try`` that catches
    ImportError guards its body and its fallback alike (each is the one that runs on its minor)."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str, int]] = []
        self._guarded = 0

    def visit_Try(self, node: ast.Try) -> None:
        catches_import_error = any(
            isinstance(h.type, ast.Name) and h.type.id in {"ImportError", "ModuleNotFoundError"}
            for h in node.handlers
        )
        self._guarded += catches_import_error  # the fallback in the handler too: each runs on its minor
        self.generic_visit(node)
        self._guarded -= catches_import_error

    def visit_If(self, node: ast.If) -> None:
        on_version = any(
            isinstance(n, ast.Name) and (n.id.startswith("AIRFLOW_V_") or n.id == "TYPE_CHECKING")
            for n in ast.walk(node.test)
        )
        self._guarded += on_version
        self.generic_visit(node)
        self._guarded -= on_version

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if not self._guarded and node.level == 0 and (module == "airflow" or module.startswith("airflow.")):
            self.found.extend((module, alias.name, node.lineno) for alias in node.names)


def airflow_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted([*PACKAGE_DIR.rglob("*.py"), *DAGS_DIR.glob("*.py")]):
        if path.is_relative_to(PACKAGE_DIR / "kfp"):
            continue  # no Airflow there
        visitor = _AirflowImports()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        where = path.relative_to(PACKAGE_DIR.parent)
        found += [(f"{where}:{line}", module, name) for module, name, line in visitor.found]
    return found


AIRFLOW_IMPORTS = airflow_imports()


def test_the_scan_sees_the_imports_inside_functions_too():
    """The check is only as good as its scan: a name imported in a method is in it, a guarded one is not."""
    from_compat = {(m, n) for w, m, n in AIRFLOW_IMPORTS if w.startswith("airflow_provider_sft/compat.py")}
    assert ("airflow.providers.common.compat.sdk", "AirflowFailException") in from_compat
    assert not {m for m, _ in from_compat} & {"airflow.exceptions", "airflow.sdk.exceptions"}
    where = {w.split(":")[0] for w, m, _ in AIRFLOW_IMPORTS if m == "airflow.sdk.execution_time.xcom"}
    assert "airflow_provider_sft/triggers/training_job.py" in where
    assert len(AIRFLOW_IMPORTS) > 20


@pytest.mark.parametrize(("where", "module", "name"), AIRFLOW_IMPORTS, ids=lambda v: v if ":" in v else "")
def test_every_name_imported_from_airflow_exists(where, module, name):
    if module.startswith("airflow.providers.openlineage") and not _has("airflow.providers.openlineage"):
        pytest.skip("the lineage extra is not installed")
    imported = importlib.import_module(module)
    assert hasattr(imported, name) or _has(f"{module}.{name}"), f"{where}: {module} has no {name}"


def test_an_airflow_older_than_the_oldest_supported_is_refused_as_providers_do(monkeypatch):
    import sys

    import airflow

    monkeypatch.setattr(airflow, "__version__", "3.0.6")
    monkeypatch.delitem(sys.modules, "airflow_provider_sft.version_compat")  # restored afterwards
    with pytest.raises(RuntimeError, match=r"`airflow-provider-sft` needs Apache Airflow 3\.1\.0\+"):
        importlib.import_module("airflow_provider_sft.version_compat")


def test_the_oldest_supported_airflow_is_the_one_pyproject_states():
    import tomllib

    from airflow_provider_sft.version_compat import MIN_AIRFLOW_VERSION

    pyproject = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())
    assert (
        f"apache-airflow>={MIN_AIRFLOW_VERSION.removesuffix('.0')}"
        in pyproject["project"]["optional-dependencies"]["airflow"]
    )
