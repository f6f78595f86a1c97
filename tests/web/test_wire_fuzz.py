"""Hypothesis against every JSON body a real server accepts (read from its /openapi.json):
malformed JSON, wrong types, out-of-range numbers and unknown fields each get OpenAI's error
object with `param` naming the field (on the Ollama routes, Ollama's `{"error": message}` with
the message starting with the field); none gets a 5xx."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mongars_edge.web.ollama import PATHS as OLLAMA_PATHS
from tests.support.server import Server

_SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 1.5,
    "string": "x",
    "array": [],
    "object": {},
}


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.admin_token()}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def bodies(http: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, the body's JSON Schema) of every operation that takes a JSON body."""
    doc = http.get("/openapi.json").json()
    components = doc["components"]["schemas"]
    found = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            schema = op.get("requestBody", {}).get("content", {}).get("application/json")
            if schema is not None:
                # A path id that may not exist: the body is checked before the id is looked up.
                concrete = re.sub(r"\{\w+\}", "1", path)
                found.append((method, concrete, _resolve(schema["schema"], components)))
    assert len(found) >= 13, [(m, p) for m, p, _ in found]
    return found


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return _resolve(components[schema["$ref"].rsplit("/", 1)[-1]], components)
    return schema


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a property's schema allows."""
    if "$ref" in schema:
        return {"object"}
    if "anyOf" in schema:
        return set().union(*(_types(s) for s in schema["anyOf"]))
    if "enum" in schema:
        return {_json_type(v) for v in schema["enum"]}
    kind = schema.get("type")
    if kind is None:
        return set(_SAMPLES)  # anything goes
    kinds = {kind} if isinstance(kind, str) else set(kind)
    return kinds | ({"integer"} if "number" in kinds else set())


def _json_type(value: Any) -> str:
    for name, sample in _SAMPLES.items():
        if type(value) is type(sample):
            return name
    return "object"


def _bounds(schema: dict[str, Any]) -> Iterator[tuple[str, float, bool]]:
    """(keyword, bound, integer) for each numeric bound of a property, in any branch."""
    for branch in schema.get("anyOf", [schema]):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in branch:
                yield key, branch[key], branch.get("type") == "integer"


def _post(http: httpx.Client, method: str, path: str, content: bytes) -> httpx.Response:
    return http.request(
        method.upper(), path, content=content, headers={"Content-Type": "application/json"}
    )


_ANY: Any = object()


def _check(response: httpx.Response, param: str | None) -> None:
    assert response.status_code == 400, (response.status_code, response.text)
    if response.url.path in OLLAMA_PATHS:
        body = response.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
        if param is not _ANY:
            assert body["error"].startswith(f"{param}: "), body
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    if param is _ANY:
        assert error["param"] is None or isinstance(error["param"], str), error
    else:
        assert error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"]


_FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_FUZZ
@given(data=st.data())
def test_malformed_json(http: httpx.Client, bodies: list[Any], data: st.DataObject) -> None:
    method, path, _schema = data.draw(st.sampled_from(bodies))
    junk = data.draw(
        st.one_of(
            st.binary(max_size=40).filter(lambda b: _not_json(b)),
            st.sampled_from([b"{", b'{"a":', b"[1,", b"NaN", b'{"x": Infinity}', b"\xff{}"]),
        )
    )
    response = _post(http, method, path, junk)
    # The decoder checks while it parses: `{"nope": ` may be refused for the unknown field
    # before the missing end is seen. Either way a 400 in the error shape.
    _check(response, _ANY)


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return bool(raw.strip())
    return False


@_FUZZ
@given(data=st.data())
def test_unknown_fields(http: httpx.Client, bodies: list[Any], data: st.DataObject) -> None:
    method, path, schema = data.draw(st.sampled_from(bodies))
    name = data.draw(
        st.text(
            st.characters(codec="utf-8", exclude_characters='"\\'), min_size=1, max_size=12
        ).filter(lambda n: n not in schema["properties"] and n.isprintable())
    )
    value = data.draw(st.sampled_from(list(_SAMPLES.values())))
    # The unknown field comes first: msgspec stops at the first problem it meets.
    body = json.dumps({name: value}).encode()
    _check(_post(http, method, path, body), name)


@_FUZZ
@given(data=st.data())
def test_wrong_types(http: httpx.Client, bodies: list[Any], data: st.DataObject) -> None:
    method, path, schema = data.draw(st.sampled_from(bodies))
    fields = {
        name: [v for t, v in _SAMPLES.items() if t not in _types(prop)]
        for name, prop in schema["properties"].items()
    }
    name = data.draw(st.sampled_from(sorted(n for n, wrong in fields.items() if wrong)))
    value = data.draw(st.sampled_from(fields[name]))
    _check(_post(http, method, path, json.dumps({name: value}).encode()), name)


@_FUZZ
@given(data=st.data())
def test_out_of_range(http: httpx.Client, bodies: list[Any], data: st.DataObject) -> None:
    ranged = [
        (method, path, name, bound)
        for method, path, schema in bodies
        for name, prop in schema["properties"].items()
        for bound in _bounds(prop)
    ]
    assert ranged
    method, path, name, (key, limit, integer) = data.draw(st.sampled_from(ranged))
    below = key in ("minimum", "exclusiveMinimum")
    step = data.draw(st.integers(1, 10**6)) if integer else data.draw(st.floats(0.001, 1e6))
    value = limit - step if below else limit + step
    if key == "exclusiveMinimum" and data.draw(st.booleans()):
        value = limit  # the bound itself is out too (top_p = 0)
    _check(_post(http, method, path, json.dumps({name: value}).encode()), name)
