"""An async HTTP client of the daemon: the TUI's only way to reach the box."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mongars_edge.datadir import DataDir
from mongars_edge.errors import MongarsError

log = logging.getLogger(__name__)

_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


class DaemonError(MongarsError):
    """The daemon could not do what the TUI asked; the message is shown to the user."""


class DaemonDown(DaemonError, ConnectionError):
    """The daemon does not answer (stopped, restarting, wrong URL)."""

    kind = "daemon_down"


class NotAvailable(DaemonError, LookupError):
    """This daemon has no such endpoint (an older build, or the feature is off)."""

    kind = "not_available"


class AuthFailed(DaemonError, PermissionError):
    """The daemon refused the token."""

    kind = "auth_failed"


class LocalTokenError(MongarsError, PermissionError):
    """The local admin token file cannot be read."""

    kind = "local_token"
    exit_code = 77


def read_local_token(data_dir: Path) -> str:
    """The console token the daemon writes into its data dir, or a clear error."""
    path = DataDir(data_dir).local_admin_token
    try:
        token = path.read_text(encoding="utf-8").strip()
    except PermissionError:
        raise LocalTokenError(
            f"cannot read {path}: permission denied. Run as root or as a member of the "
            "'mongars' group (sudo usermod -aG mongars $USER, then log in again), "
            "or pass --url and --token."
        ) from None
    except FileNotFoundError:
        raise LocalTokenError(
            f"cannot read {path}: no such file. Is the daemon running with this data dir "
            "(--data-dir)? It writes the file when it starts. Or pass --url and --token."
        ) from None
    except OSError as exc:
        raise LocalTokenError(f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise LocalTokenError(f"{path} is empty; restart the daemon to write a new token")
    return token


@dataclass(frozen=True)
class ChatDelta:
    """One piece of a streamed answer."""

    text: str = ""
    conversation_id: str | None = None
    finish_reason: str | None = None


def items(body: Any, key: str) -> list[dict[str, Any]]:
    """A list of objects from `[...]` or `{key: [...]}`; anything else is empty."""
    if isinstance(body, dict):
        body = body.get(key, body.get("data", []))
    if not isinstance(body, list):
        return []
    return [item for item in body if isinstance(item, dict)]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {name: value}, samples of one name summed over their labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _METRIC_LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        out[match.group(1)] = out.get(match.group(1), 0.0) + value
    return out


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        return str(err)
    return str(body)


class DaemonClient:
    """Bearer-token HTTP client of one daemon; every failure becomes a DaemonError."""

    def __init__(
        self,
        url: str,
        token: str | Callable[[], str | None] | None = None,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=httpx.Timeout(timeout_s, connect=3.0)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        try:
            token = self._token() if callable(self._token) else self._token
        except LocalTokenError as exc:
            raise AuthFailed(str(exc)) from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        message = _error_message(response)
        if response.status_code in (401, 403):
            raise AuthFailed(f"the daemon refused the token ({response.status_code}): {message}")
        if response.status_code in (404, 405, 501):
            raise NotAvailable(f"{response.request.url.path} is not available on this daemon")
        if response.status_code in (502, 503, 504):
            raise DaemonDown(f"the daemon is not ready ({response.status_code}): {message}")
        raise DaemonError(f"{response.status_code}: {message}")

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, headers=self._headers(), **kwargs)
        except httpx.TransportError as exc:
            raise DaemonDown(f"no answer from {self.url}: {_transport_reason(exc)}") from None
        self._check(response)
        return response

    async def get_json(self, path: str, **params: Any) -> Any:
        response = await self.request("GET", path, params=params or None)
        return _json(response)

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        response = await self.request("POST", path, json=body)
        return _json(response) if response.content else None

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)

    async def health(self, timeout_s: float = 3.0) -> dict[str, Any]:
        # Short: a daemon that accepts but does not answer (loading its model) is not "up".
        response = await self.request("GET", "/health", timeout=timeout_s)
        body = _json(response)
        if not isinstance(body, dict):
            raise DaemonError("/health did not answer a JSON object")
        return body

    async def metrics(self) -> dict[str, float]:
        response = await self.request("GET", "/metrics")
        return parse_metrics(response.text)

    async def stream_chat(
        self,
        messages: list[dict[str, str]],
        *,
        model: str | None = None,
        conversation_id: str | None = None,
        adapter: str | None = None,
        max_tokens: int | None = None,
    ) -> AsyncIterator[ChatDelta]:
        """POST /v1/chat/completions with stream=true; yields deltas until [DONE]."""
        body: dict[str, Any] = {"messages": messages, "stream": True}
        body["model"] = model or "default"
        if conversation_id:
            body["conversation_id"] = conversation_id
        if adapter:
            body["adapter"] = adapter
        if max_tokens:
            body["max_tokens"] = max_tokens
        # A long generation may pause between tokens; only the connect is short.
        timeout = httpx.Timeout(None, connect=3.0)
        try:
            async with self._http.stream(
                "POST",
                "/v1/chat/completions",
                json=body,
                headers=self._headers(),
                timeout=timeout,
            ) as response:
                if not response.is_success:
                    await response.aread()
                    self._check(response)
                async for delta in _sse_deltas(response):
                    yield delta
        except httpx.TransportError as exc:
            raise DaemonDown(f"the answer was cut: {_transport_reason(exc)}") from None


async def _sse_deltas(response: httpx.Response) -> AsyncIterator[ChatDelta]:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            log.debug("ignoring a malformed SSE line: %.80s", data)
            continue
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            err = chunk["error"]
            message = err.get("message") if isinstance(err, dict) else err
            raise DaemonError(f"the daemon stopped the answer: {message}")
        conversation_id = chunk.get("conversation_id")
        choices = chunk.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        delta = choice.get("delta") or {}
        yield ChatDelta(
            text=str(delta.get("content") or ""),
            conversation_id=str(conversation_id) if conversation_id else None,
            finish_reason=choice.get("finish_reason"),
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise DaemonError(f"{response.request.url.path} did not answer JSON") from None


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (is the daemon running?)"
    if isinstance(exc, httpx.ConnectTimeout):
        return "timed out connecting (wrong address, or the box is off the network?)"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time (the daemon may be starting and loading its model)"
    if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError | httpx.WriteError):
        return f"the daemon closed the connection ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


class LocalToken:
    """The local admin token, re-read when the daemon rewrites it (each daemon start)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._stamp: int | None = None
        self._token: str | None = None

    def check(self) -> None:
        """Raise LocalTokenError when the file cannot be read for a reason other than absence."""
        try:
            self()
        except LocalTokenError:
            if DataDir(self.data_dir).local_admin_token.exists():
                raise

    def __call__(self) -> str | None:
        path = DataDir(self.data_dir).local_admin_token
        try:
            stamp = path.stat().st_mtime_ns
        except PermissionError:
            raise LocalTokenError(
                f"cannot read {path}: permission denied on {self.data_dir}. Run as root or "
                "as a member of the 'mongars' group, or pass --url and --token."
            ) from None
        except OSError:
            return None  # not written yet: the daemon is starting; /health still works
        if stamp != self._stamp:
            self._token = read_local_token(self.data_dir)
            self._stamp = stamp
        return self._token
