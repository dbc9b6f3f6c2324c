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

    `setting` is the configuration field concerned, when there is one, so that a caller that
    read the value from an environment variable can name the variable instead.

    Example::

        >>> from modeltap.config import ModelTapConfig
        >>> ModelTapConfig(max_body_bytes=-1)
        Traceback (most recent call last):
        ...
        modeltap.errors.ConfigError: max_body_bytes must be >= 0, got -1
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ReferenceProfileError(ModelTapError):
    """A reference profile cannot be read or is malformed; the message names the file and field."""
