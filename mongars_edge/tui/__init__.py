"""The Textual TUI: an HTTP client of the daemon, for people who live in SSH."""

from mongars_edge.tui.client import DaemonClient, read_local_token

__all__ = ["DaemonClient", "read_local_token"]
