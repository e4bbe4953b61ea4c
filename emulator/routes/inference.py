"""The direct model endpoints (``/v1/embeddings``, ``/v1/chat/completions``...): one route per
endpoint, each answered by the same ``Engine`` that answers batch lines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from emulator.endpoints import ENDPOINTS
from emulator.responses import json_response
from emulator.routes.common import Backend, Emulated


def _route(endpoint: str) -> Callable[[Request, Backend], Awaitable[Response]]:
    async def route(request: Request, backend: Emulated) -> Response:
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _invalid_json(exc)
        status, answer = await run_in_threadpool(backend.engine.call, endpoint, body)
        return json_response(answer, status)

    return route


def _invalid_json(exc: orjson.JSONDecodeError) -> Response:
    """FastAPI's 422 for a body that is not JSON."""
    error = {
        "type": "json_invalid",
        "loc": ["body", exc.pos],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": exc.msg},
    }
    return json_response({"detail": [error]}, 422)


def _router() -> APIRouter:
    router = APIRouter()
    for endpoint in ENDPOINTS:
        router.add_api_route(endpoint, _route(endpoint), methods=["POST"], name=endpoint)
    return router


router = _router()
