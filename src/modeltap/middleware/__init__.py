"""The in-process adapter: a pure ASGI middleware."""

from modeltap.middleware.asgi import ModelTapMiddleware

__all__ = ["ModelTapMiddleware"]
