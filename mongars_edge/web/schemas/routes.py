"""Routes that carry their wire declarations: the OpenAPI document is generated from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.routing import Route

JSON: Final = "application/json"
#: What any operation may answer besides its success, each with the Error object.
ERRORS: Final = (400, 401, 403, 404, 409, 413, 429, 503)


@dataclass(frozen=True)
class Op:
    """One operation: what it takes and what it answers.

    `ok` is the success body's type (None: no body); `content` overrides it with media type ->
    type (or a ready JSON Schema dict) when the success is not one JSON shape; `form` says the
    body is multipart with these file fields besides the `body` type's fields; `error` names
    the error response its failures use ("Error": OpenAI's object, "OllamaError": Ollama's).
    """

    summary: str
    ok: Any = None
    status: int = 200
    body: Any = None
    body_required: bool = True
    query: Any = None
    public: bool = False
    content: Mapping[str, Any] | None = None
    form_files: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ERRORS
    description: str = ""
    error: str = "Error"


class ApiRoute(Route):
    """A Starlette Route whose methods are the keys of `ops`; `params` types its path params."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        ops: Mapping[str, Op],
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(path, endpoint, methods=[m.upper() for m in ops])
        self.ops = {m.lower(): op for m, op in ops.items()}
        self.params = dict(params or {})
