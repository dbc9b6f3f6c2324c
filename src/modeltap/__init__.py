"""modeltap: see when a model's world changes, with no change to the model.

Public API::

    from modeltap import ModelTapMiddleware, ModelTapConfig
    from modeltap import build_profile, write_profile, load_reference   # reference profiles
    from modeltap import feedback, outcome                              # labels, outcomes

The middleware and the profile functions are imported on first use: `import modeltap` stays
cheap for processes that need only part of it (the monitor process takes its lock first).
"""

import importlib as _importlib
import typing as _typing

from modeltap._version import __version__
from modeltap.config import ExportConfig, ModelTapConfig, SamplerConfig
from modeltap.errors import ConfigError, ModelTapError, ReferenceProfileError

if _typing.TYPE_CHECKING:
    from modeltap.middleware import ModelTapMiddleware
    from modeltap.middleware.feedback_api import feedback, outcome
    from modeltap.reference import build_profile, load_reference, write_profile

_LAZY = {
    "ModelTapMiddleware": "modeltap.middleware",
    "feedback": "modeltap.middleware.feedback_api",
    "outcome": "modeltap.middleware.feedback_api",
    "build_profile": "modeltap.reference",
    "load_reference": "modeltap.reference",
    "write_profile": "modeltap.reference",
}

__all__ = [
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
]


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modeltap' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
