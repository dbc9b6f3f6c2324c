"""modeltap: see when a model's world changes, with no change to the model.

Public API::

    from modeltap import ModelTapMiddleware, ModelTapConfig
    from modeltap import build_profile, write_profile, load_reference   # reference profiles
"""

from modeltap._version import __version__
from modeltap.config import ExportConfig, ModelTapConfig, SamplerConfig
from modeltap.errors import ConfigError, ModelTapError, ReferenceProfileError
from modeltap.middleware import ModelTapMiddleware
from modeltap.reference import build_profile, load_reference, write_profile

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
    "load_reference",
    "write_profile",
]
