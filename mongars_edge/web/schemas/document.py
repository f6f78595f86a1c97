"""The OpenAPI 3.1 document, generated from the routes' declarations (served at /openapi.json)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

import msgspec
from starlette.routing import BaseRoute, Mount

from mongars_edge.web.schemas.common import Error
from mongars_edge.web.schemas.ollama import OllamaChatChunk, OllamaError, OllamaProgress
from mongars_edge.web.schemas.openai import ChatCompletionChunk
from mongars_edge.web.schemas.routes import JSON, ApiRoute, Op

_REF: Final = "#/components/schemas/{name}"
_CONVERTOR: Final = re.compile(r"\{(\w+):\w+\}")
#: Shapes that travel inside another body (an SSE stream) but are part of the contract.
_EXTRA: Final = (ChatCompletionChunk, OllamaChatChunk, OllamaProgress)


def _walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, ApiRoute]]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(route.routes, prefix + route.path)
        elif isinstance(route, ApiRoute):
            yield _CONVERTOR.sub(r"{\1}", prefix + route.path), route


class _Schemas:
    """Collects every type first, so msgspec names each shape once in `components`."""

    def __init__(self) -> None:
        self.types: list[Any] = []

    def add(self, kind: Any) -> int:
        self.types.append(kind)
        return len(self.types) - 1

    def build(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        schemas, components = msgspec.json.schema_components(self.types, ref_template=_REF)
        return list(schemas), dict(components)


def _query_params(kind: Any) -> list[dict[str, Any]]:
    schema = msgspec.json.schema(kind)
    name = schema["$ref"].rsplit("/", 1)[-1]
    body = schema["$defs"][name]
    return [
        {"name": key, "in": "query", "required": False, "schema": value}
        for key, value in body["properties"].items()
    ]


def document(routes: Iterable[BaseRoute], version: str) -> dict[str, Any]:
    """The whole document for an app's routes."""
    found = list(_walk(routes))
    pool = _Schemas()
    error_at = pool.add(Error)
    ollama_error_at = pool.add(OllamaError)
    for extra in _EXTRA:
        pool.add(extra)
    slots: dict[tuple[str, str, str], int] = {}
    for path, route in found:
        for method, op in route.ops.items():
            if op.body is not None:
                slots[(path, method, "body")] = pool.add(op.body)
            if op.ok is not None:
                slots[(path, method, "ok")] = pool.add(op.ok)
            for media, kind in (op.content or {}).items():
                if not isinstance(kind, dict):
                    slots[(path, method, media)] = pool.add(kind)
            for name, kind in route.params.items():
                slots[(path, method, "param:" + name)] = pool.add(kind)
    schemas, components = pool.build()

    def at(path: str, method: str, what: str) -> dict[str, Any]:
        return schemas[slots[(path, method, what)]]

    paths: dict[str, Any] = {}
    for path, route in found:
        item = paths.setdefault(path, {})
        for method, op in route.ops.items():
            item[method] = _operation(path, method, route, op, at, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "monGARS Edge",
            "version": version,
            "description": "OpenAI-compatible and native API of a monGARS Edge box. "
            "Errors are {error: {message, type, param, code}}; `param` names the field "
            "at fault (messages[0].role). The Ollama-compatible routes answer Ollama's "
            "{error: message} instead.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
            "responses": {
                "Error": {
                    "description": "an error (OpenAI's error object)",
                    "content": {JSON: {"schema": schemas[error_at]}},
                },
                "OllamaError": {
                    "description": "an error (Ollama's: the message, starting with the field "
                    "at fault when there is one)",
                    "content": {JSON: {"schema": schemas[ollama_error_at]}},
                },
            },
        },
        "paths": paths,
    }


def _operation(
    path: str, method: str, route: ApiRoute, op: Op, at: Any, components: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.public:
        out["security"] = []
    params = [
        {"name": name, "in": "path", "required": True, "schema": at(path, method, "param:" + name)}
        for name in re.findall(r"\{(\w+)\}", path)
        if name in route.params
    ]
    params += [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", path)
        if name not in route.params
    ]
    if op.query is not None:
        params += _query_params(op.query)
    if params:
        out["parameters"] = params
    if op.body is not None:
        schema = at(path, method, "body")
        if op.form_files:
            out["requestBody"] = _form(schema, components, op.form_files)
        else:
            out["requestBody"] = {
                "required": op.body_required,
                "content": {JSON: {"schema": schema}},
            }
    ok: dict[str, Any] = {"description": op.summary}
    content: dict[str, Any] = {}
    if op.ok is not None:
        content[JSON] = {"schema": at(path, method, "ok")}
    for media, kind in (op.content or {}).items():
        content[media] = {"schema": kind if isinstance(kind, dict) else at(path, method, media)}
    if content:
        ok["content"] = content
    if op.headers:
        ok["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in op.headers.items()
        }
    responses: dict[str, Any] = {str(op.status): ok}
    for status in op.errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{op.error}"}
    out["responses"] = responses
    return out


def _form(
    schema: dict[str, Any], components: dict[str, Any], files: tuple[str, ...]
) -> dict[str, Any]:
    """A multipart body: the fields' shape with the file fields added (binary strings)."""
    fields = components[schema["$ref"].rsplit("/", 1)[-1]]
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    **fields,
                    "properties": {**fields["properties"], **dict.fromkeys(files, binary)},
                    "required": [*fields.get("required", []), *files],
                },
                "encoding": {f: {"contentType": "application/octet-stream"} for f in files},
            }
        },
    }
