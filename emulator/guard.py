"""What stands in front of the ``/v1`` routes: the Bearer key check and the injected HTTP faults."""

from __future__ import annotations

import asyncio
import hmac

from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.faults import FaultInjector
from emulator.responses import json_response
from emulator.store import Store


class GuardMiddleware:
    """Checks the Bearer key and injects HTTP faults around the routes.

    A plain ASGI middleware (not ``BaseHTTPMiddleware``), so streamed downloads pass untouched.
    A missing or wrong key is answered ``401 {"detail": "Unauthorized"}``; paths outside ``/v1``
    pass without either.
    """

    def __init__(
        self, app: ASGIApp, api_key: str | None, injector: FaultInjector, store: Store
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.injector = injector
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await json_response({"detail": "Unauthorized"}, 401)(scope, receive, send)
            return
        with self.store.lock:
            fault = self.injector.http_fault(scope["method"], scope["path"])
            if fault is not None:
                self.store.save_fault_state()
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.status is None:  # a delay only: the real response, held back
            await self.app(scope, receive, _held(send, fault.delay_seconds or 0.0))
            return
        if fault.after_handling:  # the server acts; the client never hears of it
            await self.app(scope, receive, _discard)
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        await _fault_response(fault.status, fault.retry_after)(scope, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        if self.api_key is None:
            return True
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        return hmac.compare_digest(given, f"Bearer {self.api_key}")


def _fault_response(status: int, retry_after: float | None) -> Response:
    if status == 429:
        body = {
            "object": "error",
            "message": "Rate limit exceeded",
            "type": "rate_limited",
            "param": None,
            "code": "1300",
        }
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        return json_response(body, status, headers)
    body = {
        "object": "error",
        "message": "Service unavailable",
        "type": "internal_error",
        "param": None,
        "code": None,
    }
    return json_response(body, status)


def _held(send: Send, seconds: float) -> Send:
    """``send``, with the start of the response held back ``seconds`` (the body then streams)."""

    async def held(message: Message) -> None:
        if message["type"] == "http.response.start":
            await asyncio.sleep(seconds)
        await send(message)

    return held


async def _discard(message: Message) -> None:
    """A ``send`` that drops the route's real response (an ``after_handling`` fault replaces it)."""
