"""The box serving on this machine: its URL, and the data directory it keeps its data in.

The CLI acts on a data directory, and the TUI needs the local admin token inside it. Someone who
runs `make serve` (data in ./.data) and then a bare `mongars-edge users add` as root would write
to /var/lib/mongars-edge, where the running server never looks. So the server tells clients on
its own machine where its data is (`data_dir` in /health), and the CLI follows it when no data
dir was chosen, or says that they differ when one was. Imports stay light: every command runs
this before doing anything else.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import urllib.parse
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

_ASK_TIMEOUT_S: Final = 1.0
#: Written into the data dir by a serving box (its pid and URL), removed when it stops.
MARKER_FILE: Final = "serving.json"


def local_url(host: str, port: int) -> str:
    """The URL of the box listening on *host*:*port*, seen from this machine."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - a listen address, turned into loopback here
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def same_machine(client_host: str | None, server_host: str | None) -> bool:
    """True when a request comes from this machine: loopback, or the address it reached us on."""
    if not client_host:
        return False
    try:
        client = ipaddress.ip_address(client_host)
    except ValueError:
        return False
    if client.is_loopback:
        return True
    ipv4 = getattr(client, "ipv4_mapped", None)
    if ipv4 is not None and ipv4.is_loopback:
        return True
    return client_host == server_host


def ask_data_dir(url: str, timeout_s: float = _ASK_TIMEOUT_S) -> Path | None:
    """The data dir of the box answering at *url*, or None (nothing there, or not saying)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        return None  # https and odd URLs: a remote box; its data dir is not ours to use
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", "/health", headers={"Accept": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            return None
        body = json.loads(response.read(65536))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("no box answered at %s: %s", url, exc)
        return None
    finally:
        conn.close()
    raw = body.get("data_dir") if isinstance(body, dict) else None
    return Path(raw) if isinstance(raw, str) and raw.startswith("/") else None


def same_place(a: Path, b: Path) -> bool:
    """Whether two paths name the same directory (symlinks and `..` resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def write_marker(data_dir: Path, url: str) -> None:
    """Say in *data_dir* that this process serves it at *url* (readable by local clients)."""
    from mongars_edge.datadir import write_private

    write_private(data_dir / MARKER_FILE, json.dumps({"pid": os.getpid(), "url": url}), 0o644)


def remove_marker(data_dir: Path) -> None:
    path = data_dir / MARKER_FILE
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError) as exc:
        log.debug("cannot remove %s: %s", path, exc)


def serving_url(data_dir: Path) -> str | None:
    """The URL of the box serving *data_dir* right now, or None (stopped, or never started)."""
    try:
        marker = json.loads((data_dir / MARKER_FILE).read_text(encoding="utf-8"))
        pid, url = int(marker["pid"]), str(marker["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # left behind by a box that did not stop cleanly
    except PermissionError:
        pass  # alive, and another user's (the appliance's service user)
    return url
