"""HTTP edge: the chat page, the OpenAI-compatible API and the native API."""

from mongars_edge.web.app import create_app

__all__ = ["create_app"]
