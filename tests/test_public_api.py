"""The declared public surface stays in step with what the modules define."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tomllib
from pathlib import Path

import pytest

import orderflow
from orderflow import errors

REPO_ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = sorted(
    module.name
    for module in pkgutil.walk_packages(orderflow.__path__, "orderflow.")
    if not any(part.startswith("_") for part in module.name.split("."))
    and module.name not in ("orderflow.storage.postgres", "orderflow.broker.redis")
)


def test_package_all_names_exist() -> None:
    missing = [name for name in orderflow.__all__ if not hasattr(orderflow, name)]
    assert missing == []


def test_package_all_has_no_duplicates() -> None:
    assert len(orderflow.__all__) == len(set(orderflow.__all__))


def test_every_error_class_is_exported() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, errors.OrderflowError)
        and value.__module__ == errors.__name__
        and not name.startswith("_")
    }
    assert defined == set(errors.__all__)
    assert defined <= set(orderflow.__all__)


def test_errors_derive_from_root() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.OrderflowError), name


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_module_all_names_exist(module_name: str) -> None:
    module = importlib.import_module(module_name)
    declared = getattr(module, "__all__", None)
    assert declared is not None, f"{module_name} declares no __all__"
    missing = [name for name in declared if not hasattr(module, name)]
    assert missing == []


def test_version_matches_pyproject() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert orderflow.__version__ == project["project"]["version"]


def test_package_is_typed() -> None:
    assert (Path(orderflow.__file__).parent / "py.typed").is_file()
