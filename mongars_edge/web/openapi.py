"""The OpenAPI 3.0 description served at /openapi.json (hand-written: it is the contract)."""

from __future__ import annotations

from typing import Any

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": schema}}}


def _errors() -> dict[str, Any]:
    """The error statuses every protected route can answer, each with OpenAI's error object."""
    return {
        status: {"$ref": "#/components/responses/Error"}
        for status in ("400", "401", "403", "404", "413", "429", "503")
    }


def _ok(schema: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
    responses = _errors()
    if schema is None:
        responses[status] = {"description": "done"}
    else:
        responses[status] = {"description": "ok", "content": {_JSON: {"schema": schema}}}
    return responses


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _id_param(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": 2**53},
    }


def _header(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "schema": schema or {"type": "string"}}


_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
_SPEECH_HEADERS: dict[str, Any] = {
    "X-Voice": _header("The voice that spoke"),
    "X-Language": _header("Its language (en, fr)"),
    "X-Sample-Rate": _header("Samples per second of the audio", {"type": "integer"}),
}

_PAGE = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
]
_LIST = {"type": "object", "properties": {"data": {"type": "array", "items": {}}}}
_OBJECT: dict[str, Any] = {"type": "object"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string"},
                },
            }
        },
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"type": "string"},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": _ref("ChatMessage"),
            },
            "stream": {"type": "boolean"},
            "stream_options": {
                "type": "object",
                "properties": {"include_usage": {"type": "boolean"}},
            },
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
            "seed": {"type": "integer"},
            "stop": {
                "oneOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
                ]
            },
            "response_format": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                    "json_schema": {"type": "object"},
                },
            },
            "conversation_id": {
                "description": 'Extension: a conversation id, or "new" to start one.',
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "enum": ["new"]}],
            },
            "adapter": {"type": "string", "description": "Extension: a stored LoRA adapter."},
            "memory": {"type": "boolean", "description": "Extension: false = no recall."},
            "regenerate": {"type": "boolean", "description": "Extension: answer again."},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _OBJECT},
            "usage": _OBJECT,
            "conversation_id": {"type": "integer"},
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string"},
            "input": {
                "oneOf": [
                    {"type": "string", "minLength": 1, "maxLength": 500},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 4,
                        "items": {"type": "string", "minLength": 1, "maxLength": 500},
                    },
                ]
            },
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
        },
    },
    "SpeechRequest": {
        "type": "object",
        "required": ["input"],
        "properties": {
            "model": {
                "type": "string",
                "description": "Any name (tts-1, …): the box speaks with its own voices.",
            },
            "input": {
                "type": "string",
                "minLength": 1,
                "maxLength": 200000,
                "pattern": "\\S",
                "description": "The text to speak (not only spaces); spoken sentence by sentence.",
            },
            "voice": {
                "type": "string",
                "description": "An installed voice (GET /api/speech lists them); OpenAI's names "
                "(alloy, …), default and auto pick the voice for the text's language.",
            },
            "response_format": {"type": "string", "enum": ["wav", "pcm"], "default": "wav"},
            "speed": {"type": "number", "minimum": 0.25, "maximum": 4, "default": 1},
            "language": {
                "type": "string",
                "description": "Extension: en, fr, fr-CA…; picks the voice when `voice` does "
                "not (guessed from the text when absent).",
            },
        },
    },
    "TranscriptionRequest": {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "WAV, WebM/Opus, Ogg, MP3 or FLAC.",
            },
            "model": {"type": "string", "description": "Any name (whisper-1, …)."},
            "language": {
                "type": "string",
                "description": "en, fr, …; detected when absent (or auto).",
            },
            "response_format": {
                "type": "string",
                "enum": ["json", "text", "verbose_json"],
                "default": "json",
            },
        },
    },
    "Transcription": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "task": {"type": "string", "enum": ["transcribe"], "description": "verbose_json"},
            "language": {"type": "string", "description": "verbose_json"},
            "duration": {"type": "number", "description": "verbose_json: seconds"},
        },
    },
    "SpeechStatus": {
        "type": "object",
        "required": ["tts", "stt", "voices", "stt_languages", "wyoming_port"],
        "properties": {
            "tts": {"type": "boolean", "description": "POST /v1/audio/speech is on"},
            "stt": {"type": "boolean", "description": "POST /v1/audio/transcriptions is on"},
            "voices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "language", "locale", "engine"],
                    "properties": {
                        "name": {"type": "string"},
                        "language": {"type": "string"},
                        "locale": {"type": "string"},
                        "engine": {"type": "string"},
                    },
                },
            },
            "stt_languages": {"type": "array", "items": {"type": "string"}},
            "wyoming_port": {"type": "integer", "nullable": True},
        },
    },
    "Credentials": {
        "type": "object",
        "required": ["name", "password"],
        "properties": {"name": {"type": "string"}, "password": {"type": "string"}},
    },
    "Setup": {
        "type": "object",
        "required": ["code", "name", "password"],
        "properties": {
            "code": {"type": "string"},
            "name": {"type": "string"},
            "password": {"type": "string"},
        },
    },
    "Title": {"type": "object", "properties": {"title": {"type": "string"}}},
    "ModelChoice": {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "description": "a catalog id (or, to load, a GGUF path)"},
            "load": {"type": "boolean", "description": "pull: load it once it is whole"},
        },
    },
    "PairCode": {
        "type": "object",
        "required": ["code"],
        "properties": {"code": {"type": "string"}, "peer": {"type": "string"}},
    },
    "NewUser": {
        "type": "object",
        "required": ["name", "password"],
        "properties": {
            "name": {"type": "string"},
            "password": {"type": "string"},
            "is_admin": {"type": "boolean"},
        },
    },
    "NewToken": {"type": "object", "properties": {"name": {"type": "string"}}},
    "NewMemory": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "kind": {"type": "string", "enum": ["fact", "preference", "summary"]},
        },
    },
}


def _paths() -> dict[str, Any]:
    conv = _id_param("conversation_id")
    return {
        "/health": {
            "get": _op("Liveness and self-description (no auth)", _ok(_OBJECT), security=[])
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (administrators)",
                {
                    "200": {
                        "description": "text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/openapi.json": {
            "get": _op("This document: OpenAPI 3.0 (no auth)", _ok(_OBJECT), security=[])
        },
        "/v1/models": {"get": _op("Models served by this box", _ok(_OBJECT))},
        "/v1/models/{model}": {
            "get": _op(
                "One model",
                _ok(_OBJECT),
                parameters=[
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
            )
        },
        "/v1/chat/completions": {
            "post": _op(
                "Chat completion (OpenAI shape; `stream: true` answers with SSE)",
                _ok(_ref("ChatCompletion")),
                requestBody=_body(_ref("ChatCompletionRequest")),
            )
        },
        "/v1/embeddings": {
            "post": _op(
                "Text embeddings", _ok(_OBJECT), requestBody=_body(_ref("EmbeddingRequest"))
            )
        },
        "/v1/audio/speech": {
            "post": _op(
                "Text to speech (OpenAI shape): audio streamed sentence by sentence; "
                "503 while the `speech` setting is off",
                _errors()
                | {
                    "200": {
                        "description": "audio",
                        "headers": _SPEECH_HEADERS,
                        "content": {
                            "audio/wav": {"schema": _BINARY},
                            "audio/pcm": {
                                "schema": {
                                    **_BINARY,
                                    "description": "raw 16-bit little-endian mono at 24 kHz",
                                }
                            },
                        },
                    }
                },
                requestBody=_body(_ref("SpeechRequest")),
            )
        },
        "/v1/audio/transcriptions": {
            "post": _op(
                "Speech to text (OpenAI shape, multipart upload); "
                "503 while the `stt` setting is off",
                _errors()
                | {
                    "200": {
                        "description": "the text (response_format: json, verbose_json or text)",
                        "content": {
                            _JSON: {"schema": _ref("Transcription")},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    }
                },
                requestBody={
                    "required": True,
                    "content": {"multipart/form-data": {"schema": _ref("TranscriptionRequest")}},
                },
            )
        },
        "/api/speech": {
            "get": _op("Which voice features this box offers", _ok(_ref("SpeechStatus")))
        },
        "/api/session": {
            "get": _op("Who is signed in; whether setup is pending", _ok(_OBJECT), security=[])
        },
        "/api/setup": {
            "post": _op(
                "First boot: the console's one-time code creates the first administrator",
                _ok(_OBJECT),
                requestBody=_body(_ref("Setup")),
                security=[],
            )
        },
        "/api/login": {
            "post": _op(
                "Sign in (sets an HttpOnly session cookie)",
                _ok(_OBJECT),
                requestBody=_body(_ref("Credentials")),
                security=[],
            )
        },
        "/api/logout": {"post": _op("Sign out", _ok(_OBJECT))},
        "/api/conversations": {
            "get": _op("Your conversations, newest first", _ok(_LIST), parameters=_PAGE),
            "post": _op(
                "Start a conversation", _ok(_OBJECT, "201"), requestBody=_body(_ref("Title"), False)
            ),
        },
        "/api/conversations/{conversation_id}": {
            "parameters": [conv],
            "get": _op("A conversation with its messages", _ok(_OBJECT)),
            "patch": _op("Rename", _ok(_OBJECT), requestBody=_body(_ref("Title"))),
            "delete": _op("Delete", _ok(None, "204")),
        },
        "/api/conversations/{conversation_id}/export": {
            "parameters": [conv],
            "get": _op("Export as JSON", _ok(_OBJECT)),
        },
        "/api/memories": {
            "get": _op(
                "Your memories",
                _ok(_LIST),
                parameters=[
                    *_PAGE,
                    {
                        "name": "kind",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["fact", "preference", "summary"]},
                    },
                ],
            ),
            "post": _op(
                "Remember something", _ok(_OBJECT, "201"), requestBody=_body(_ref("NewMemory"))
            ),
        },
        "/api/memories/search": {
            "get": _op(
                "Search your memories and past messages",
                _ok(_LIST),
                parameters=[
                    {"name": "q", "in": "query", "schema": {"type": "string", "maxLength": 200}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                    },
                ],
            )
        },
        "/api/memories/{memory_id}": {
            "parameters": [_id_param("memory_id")],
            "delete": _op("Forget a memory", _ok(None, "204")),
        },
        "/api/me/export": {"get": _op("Everything the box holds about you", _ok(_OBJECT))},
        "/api/users": {
            "get": _op("Users (administrators)", _ok(_LIST)),
            "post": _op(
                "Add a user (administrators)",
                _ok(_OBJECT, "201"),
                requestBody=_body(_ref("NewUser")),
            ),
        },
        "/api/users/{user_id}": {
            "parameters": [_id_param("user_id")],
            "delete": _op("Delete a user and all their data (administrators)", _ok(None, "204")),
        },
        "/api/tokens": {
            "get": _op("Your API tokens (never the secrets)", _ok(_LIST)),
            "post": _op(
                "New API token (shown once)",
                _ok(_OBJECT, "201"),
                requestBody=_body(_ref("NewToken"), False),
            ),
        },
        "/api/tokens/{token_id}": {
            "parameters": [_id_param("token_id")],
            "delete": _op("Revoke a token", _ok(None, "204")),
        },
        "/api/hardware": {"get": _op("Hardware facts and tuning profile", _ok(_OBJECT))},
        "/api/models": {
            "get": _op(
                "The models: answering now, installable, downloads, engine load", _ok(_OBJECT)
            )
        },
        "/api/models/pull": {
            "post": _op(
                "Download a catalog model in the background (administrators)",
                _ok(_OBJECT, "202"),
                requestBody=_body(_ref("ModelChoice")),
            )
        },
        "/api/models/load": {
            "post": _op(
                "Make an installed model the one that answers (administrators)",
                _ok(_OBJECT),
                requestBody=_body(_ref("ModelChoice")),
            )
        },
        "/api/models/{model_id}": {
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": _op("Delete a downloaded model (administrators)", _ok(None, "204")),
        },
        "/api/models/{model_id}/pull": {
            "parameters": [
                {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": _op("Cancel a model's download (administrators)", _ok(None, "204")),
        },
        "/api/adapters": {"get": _op("Stored LoRA adapters", _ok(_LIST))},
        "/api/peers": {"get": _op("Mesh peers", _ok(_LIST))},
        "/api/peers/pair": {
            "post": _op(
                "Join a mesh with a member's code (administrators)",
                _ok(_OBJECT),
                requestBody=_body(_ref("PairCode")),
            )
        },
        "/api/peers/{node_id}": {
            "parameters": [
                {"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "delete": _op("Revoke a member (administrators)", _ok(None, "204")),
        },
    }


def schema(version: str) -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "monGARS Edge",
            "version": version,
            "description": "OpenAI-compatible and native API of a monGARS Edge box. "
            "Errors are {error: {message, type, param, code}}.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _SCHEMAS,
            "responses": {
                "Error": {"description": "an error", "content": {_JSON: {"schema": _ref("Error")}}}
            },
        },
        "paths": _paths(),
    }
