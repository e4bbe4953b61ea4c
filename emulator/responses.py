"""The answers every route and the guard share: JSON bodies and the API's error shapes.

Application errors use the ``{"object": "error", ...}`` shape, bad requests FastAPI's 422
``{"detail": [...]}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def api_error(status: int, message: str, type_: str = "invalid_request_error") -> Response:
    body = {"object": "error", "message": message, "type": type_, "param": None, "code": None}
    return json_response(body, status)


def not_found(kind: str, ident: str) -> Response:
    return api_error(404, f"{kind} {ident} not found", "not_found")


def validation_error(loc: list[Any], msg: str, type_: str, input_: Any = None) -> Response:
    return json_response(
        {"detail": [{"type": type_, "loc": loc, "msg": msg, "input": input_}]}, 422
    )
