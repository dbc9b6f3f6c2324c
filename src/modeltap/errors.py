"""The modeltap exception tree.

Only start-up raises: configuration errors name the offending value. Nothing on the request
path raises into the user's application.
"""

from __future__ import annotations

__all__ = ["ConfigError", "ModelTapError", "ReferenceProfileError"]


class ModelTapError(Exception):
    """Base class of every error modeltap raises."""


class ConfigError(ModelTapError, ValueError):
    """A configuration value is invalid; the message names the setting and the value.

    Example::

        >>> from modeltap.config import ModelTapConfig
        >>> ModelTapConfig(max_body_bytes=-1)
        Traceback (most recent call last):
        ...
        modeltap.errors.ConfigError: max_body_bytes must be >= 0, got -1
    """


class ReferenceProfileError(ModelTapError):
    """A reference profile cannot be read or is malformed; the message names the file and field."""
