"""The public surface is exactly `modeltap.__all__`, and everything in it resolves."""

from __future__ import annotations

import types

import pytest

import modeltap


def test_all_names_resolve_and_are_documented() -> None:
    for name in modeltap.__all__:
        value = getattr(modeltap, name)
        if isinstance(value, type):
            assert value.__doc__, f"{name} has no docstring"


def test_public_names_are_the_intended_set() -> None:
    assert set(modeltap.__all__) == {
        "ConfigError",
        "ExportConfig",
        "ModelTapConfig",
        "ModelTapError",
        "ModelTapMiddleware",
        "ReferenceProfileError",
        "SamplerConfig",
        "__version__",
        "build_profile",
        "feedback",
        "load_reference",
        "outcome",
        "write_profile",
    }
    public = {
        name
        for name, value in vars(modeltap).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    # Subpackages imported for re-export appear as attributes; nothing else may leak.
    leaked = (
        public
        - set(modeltap.__all__)
        - {
            "config",
            "errors",
            "middleware",
            "capture",
            "export",
            "protocols",
            "stats",
            "records",
            "snapshot",
            "reference",
            "worker",
        }
    )
    assert not leaked, leaked


def test_errors_form_one_tree() -> None:
    assert issubclass(modeltap.ConfigError, modeltap.ModelTapError)
    assert issubclass(modeltap.ReferenceProfileError, modeltap.ModelTapError)


def test_middleware_keywords_match_config_fields() -> None:
    import dataclasses
    import inspect

    keywords = {
        name
        for name, parameter in inspect.signature(modeltap.ModelTapMiddleware.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    fields = {field.name for field in dataclasses.fields(modeltap.ModelTapConfig)}
    assert keywords == fields | {"config", "tracer_provider"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("modeltap.stats.reference", "modeltap.reference.document"),
        ("modeltap.stats.profile_builder", "modeltap.reference.builder"),
        ("modeltap.stats.profile_io", "modeltap.reference.tables"),
    ],
)
def test_moved_reference_modules_still_import_with_a_deprecation_warning(old: str, new: str) -> None:
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert callable(
        getattr(module, "build_profile", None) or getattr(module, "load_reference", None) or module.read_table
    )
