"""A clear answer to a request whose URL or headers are too long, in Ray Serve's proxy (no silence).

**Where the limit was.** Serve 2.53's proxy runs uvicorn with its defaults: HTTP parsed by httptools
(llhttp: no line limit of its own; ``httptools.parse_url`` fails at 64 KiB, answered 400 "Invalid HTTP
request received."), WebSockets by ``ws="auto"``. A WebSocket upgrade is parsed by httptools, then
re-serialised and parsed again by the websockets library, whose ``websockets.http11.MAX_LINE_LENGTH``
(8192 bytes, env ``WEBSOCKETS_MAX_LINE_LENGTH``) bounds the request line and every header line, and
``MAX_NUM_HEADERS`` (128) their number. Past it: uvicorn 0.50-0.54 (``auto`` = websockets-sansio) writes
nothing and leaves the connection open until the client gives up; uvicorn 0.55 answers a bare 400 "Failed
to open a WebSocket connection: invalid request." — which a browser's WebSocket API cannot even read (it
reports close 1006). Either way a 2,500-character Arabic persona in ``/api/chat?text_prompt=`` never
reached the application.

**The fix, at proxy start.** :func:`proxy_middlewares` is Serve's proxy callback (set
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=bizra_voice.serve.proxy_limits:proxy_middlewares`` where Ray
starts; Serve calls it in every proxy before uvicorn serves). It raises the websockets line limit to
:data:`WS_PARSER_LINE_LIMIT` so upgrades with long URLs parse, and returns :class:`RequestLimits`, an ASGI
middleware in front of every route that answers a request over :data:`MAX_URL_BYTES` /
:data:`MAX_HEADER_BYTES` at once: HTTP 414 / 431 with a JSON ``{"error": sentence}``; a WebSocket is
accepted and told the same sentence (``/api/chat``: 0x05, ``/v1/realtime``: an ``error`` event) and closed
with 1008. The sentence names the limit and points to ``POST /api/sessions``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from bizra_voice import protocol as P

log = logging.getLogger("ray.serve")

PROXY_CALLBACK = "bizra_voice.serve.proxy_limits:proxy_middlewares"
# What the websockets parser may read per line once the callback ran: far past MAX_URL_BYTES, so an
# oversized upgrade reaches RequestLimits and is told why. (httptools has already buffered the whole
# request by then, so this costs no memory of its own.)
WS_PARSER_LINE_LIMIT = 1 << 20
# path + "?" + query as sent, and all header lines; the proxy's environment may change them (a plain
# request's URL stays bounded by httptools' 64 KiB whatever is set here).
MAX_URL_BYTES = min(int(os.environ.get("BIZRA_VOICE_MAX_URL_BYTES", "8192")), WS_PARSER_LINE_LIMIT - 64)
MAX_HEADER_BYTES = int(os.environ.get("BIZRA_VOICE_MAX_HEADER_BYTES", "65536"))
SESSIONS_HINT = ("put the session request (persona, voice, settings) in the JSON body of POST /api/sessions "
                 "and connect to the url it returns")


def proxy_middlewares() -> list[Any]:
    """Serve's HTTP proxy callback: lift the websockets line limit, put :class:`RequestLimits` in front."""
    from starlette.middleware import Middleware

    raise_websockets_line_limit(WS_PARSER_LINE_LIMIT)
    log.info("BIZRA Voice proxy limits: URL %d bytes, headers %d bytes (over them: 414/431 or 0x05 + 1008)",
             MAX_URL_BYTES, MAX_HEADER_BYTES)
    return [Middleware(RequestLimits, max_url_bytes=MAX_URL_BYTES, max_header_bytes=MAX_HEADER_BYTES)]


def raise_websockets_line_limit(limit: int) -> int:
    """Set websockets' per-line handshake limit (read at each parse) to at least ``limit``; return it."""
    from websockets import http11

    http11.MAX_LINE_LENGTH = max(int(http11.MAX_LINE_LENGTH), int(limit))
    return http11.MAX_LINE_LENGTH


def oversize_reason(scope: dict[str, Any], max_url_bytes: int, max_header_bytes: int) -> tuple[int, str] | None:
    """(HTTP status, sentence) when the request's URL or headers are over the limits, else None. Pure."""
    target = len(scope.get("raw_path") or scope.get("path", "").encode("utf-8")) + len(scope.get("query_string", b""))
    target += 1 if scope.get("query_string") else 0
    if target > max_url_bytes:
        return 414, (f"The request URL is {target:,} bytes, over this server's limit of {max_url_bytes:,} bytes "
                     f"(long personas do not fit in a URL): {SESSIONS_HINT}.")
    headers = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
    if headers > max_header_bytes:
        return 431, (f"The request headers are {headers:,} bytes, over this server's limit of "
                     f"{max_header_bytes:,} bytes (large cookies or tokens?): send less, or {SESSIONS_HINT}.")
    return None


class RequestLimits:
    """Pure ASGI middleware: over-long requests get their reason at once, everything else passes through."""

    def __init__(self, app: Any, max_url_bytes: int = MAX_URL_BYTES, max_header_bytes: int = MAX_HEADER_BYTES):
        self.app = app
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = None
        if scope["type"] in ("http", "websocket"):
            refusal = oversize_reason(scope, self.max_url_bytes, self.max_header_bytes)
        if refusal is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await _http_refusal(send, *refusal)
        else:
            await _websocket_refusal(scope, receive, send, refusal[1])


async def _http_refusal(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _websocket_refusal(scope: dict[str, Any], receive: Any, send: Any, message: str) -> None:
    """Accept, say why in the endpoint's own protocol, close 1008: a browser can read all of that, while
    an HTTP status on a refused upgrade is hidden from its WebSocket API."""
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    if scope.get("path", "").rstrip("/").endswith("/v1/realtime"):
        from bizra_voice.realtime.errors import error_event

        event = error_event(message, "request_too_large")
        await send({"type": "websocket.send", "text": json.dumps(event)})
    else:
        await send({"type": "websocket.send", "bytes": P.error(message)})
    reason = message.encode("utf-8")[:123].decode("utf-8", "ignore")  # a close reason is at most 123 bytes
    await send({"type": "websocket.close", "code": int(P.CloseCode.BAD_REQUEST), "reason": reason})
