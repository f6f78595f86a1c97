"""Typed declarations of every HTTP wire shape (msgspec Structs), split by API.

Handlers decode bodies with `mongars_edge.web.http.read_body` (one path: bytes -> declared
type, or OpenAI's 400 naming the field); routes carry their shapes (`routes.ApiRoute`) and
`document.document` turns them into the OpenAPI 3.1 document served at /openapi.json.
"""

from mongars_edge.web.schemas.common import BadFieldError, decode
from mongars_edge.web.schemas.routes import ApiRoute, Op

__all__ = ["ApiRoute", "BadFieldError", "Op", "decode"]
