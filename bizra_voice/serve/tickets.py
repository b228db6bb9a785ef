"""``POST /api/sessions`` and ``?session=<ticket>``: the Serve side of session tickets.

- :class:`SessionTickets` is a one-replica CPU deployment holding the pure :class:`TicketStore`: every
  VoiceServer replica talks to the same store through a handle, because Serve's proxy routes the POST and
  the WebSocket independently (they may land on different replicas). Its ticket methods are ``async`` and
  never await, so each create/consume runs whole on the replica's event loop: single use is atomic.
- :func:`post_session` answers the POST (bounded body, :meth:`SessionParams.from_body`, one sentence per
  error); :func:`resolve_params` turns a WebSocket's query into its :class:`SessionParams`, from the ticket
  when ``session=`` is given, else from the query itself (moshi/PersonaPlex clients).

If the replica restarts, tickets not yet used are lost (they live for a minute): their WebSocket is told
"unknown ticket" and the client makes a new one.

The same deployment hosts the :class:`~bizra_voice.webrtc.directory.CallDirectory` (which replica holds
which WebRTC call), for the same reason: a call's hang-up is routed on its own, maybe to another replica
(``serve/call_relay.py`` is the replicas' side of it). A restart loses the table; each owner's next poll
rebuilds it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve

from bizra_voice.security import AccessPolicy
from bizra_voice.session_params import TICKET_PARAM, BadParams, SessionParams, session_fields_in
from bizra_voice.session_tickets import StoreFull, TicketRefused, TicketStore
from bizra_voice.webrtc.directory import CallDirectory

HANDLE_TIMEOUT_S = 5.0  # a store call is microseconds of work; this only bounds a replica that is gone


class TicketsUnavailable(RuntimeError):
    """The ticket store did not answer (restarting, or not deployed): "try again later" (1013 / HTTP 503)."""


@serve.deployment(name="SessionTickets")
class SessionTickets:
    def __init__(self, ttl_s: float, max_pending: int) -> None:
        self.store = TicketStore(ttl_s, max_pending)
        self.calls = CallDirectory()

    async def create(self, params: dict[str, Any], token_tag: str | None) -> dict[str, Any]:
        try:
            ticket_id, ttl = self.store.create(params, token_tag)
        except StoreFull as exc:
            return {"refused": str(exc)}
        return {"id": ticket_id, "expires_in": ttl}

    async def consume(self, ticket_id: str, token_tag: str | None) -> dict[str, Any]:
        try:
            return {"params": self.store.consume(ticket_id, token_tag)}
        except TicketRefused as exc:
            return {"refused": str(exc), "reason": exc.reason.value}

    async def stats(self) -> dict[str, int]:
        return {"pending": self.store.pending, "calls": self.calls.calls}

    # ---- the call directory (webrtc/directory.py): one table, so every replica finds every call's owner
    async def register_call(self, call_id: str, replica: str) -> bool:
        return self.calls.register(call_id, replica)

    async def forget_call(self, call_id: str) -> None:
        self.calls.forget(call_id)

    async def hang_up_call(self, call_id: str, wait_s: float) -> str:
        return (await self.calls.hang_up(call_id, wait_s)).value

    async def next_hangups(self, replica: str, holding: list[str], wait_s: float) -> list[str]:
        return await self.calls.next_hangups(replica, holding, wait_s)


async def _call(tickets: Any, method: str, *args: Any) -> dict[str, Any]:
    if tickets is None:
        raise TicketsUnavailable("session tickets are not deployed on this server")
    try:
        return await asyncio.wait_for(getattr(tickets, method).remote(*args), timeout=HANDLE_TIMEOUT_S)
    except Exception as exc:  # a replica restarting, or a handle error: the caller says "try again"
        raise TicketsUnavailable(f"the session ticket service did not answer ({type(exc).__name__})") from None


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over ``limit`` bytes (declared or streamed): nothing more is read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"Cache-Control": "no-store"})


async def post_session(request: Request, tickets: Any, access: AccessPolicy, max_body_bytes: int,
                       replica: str | None = None) -> JSONResponse:
    """``POST /api/sessions``: validate the JSON body as a session request, store it, answer its ticket.
    (The access middleware has already checked the Origin and, with auth on, the token.)"""
    body = await _read_body(request, max_body_bytes)
    if body is None:
        return _error(413, f"The session request is over {max_body_bytes // 1024} KiB; a persona of at most "
                      "4000 characters and a voice name fit well within it.")
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        return _error(400, f"The session request is not UTF-8 JSON ({str(exc)[:80]}).")
    try:
        params = SessionParams.from_body(data)
    except BadParams as exc:
        return _error(400, str(exc))
    try:
        answer = await _call(tickets, "create", params.model_dump(), access.token_tag())
    except TicketsUnavailable as exc:
        return _error(503, f"Sessions cannot be set up right now: {exc}; try again in a few seconds, or put "
                      "the session parameters in the /api/chat query string.")
    if "refused" in answer:
        return _error(429, answer["refused"])
    prefix = request.url.path[: -len("/api/sessions")] if request.url.path.endswith("/api/sessions") else ""
    ticket = answer["id"]
    return JSONResponse({
        "id": ticket, "url": f"{prefix}/api/chat?{TICKET_PARAM}={ticket}",
        "realtime_url": f"{prefix}/v1/realtime?{TICKET_PARAM}={ticket}",
        "expires_in": answer["expires_in"], "expires_at": int(time.time() + answer["expires_in"]),
        "replica": replica,  # which replica took the POST (the WebSocket may land on another)
    }, headers={"Cache-Control": "no-store"})


def has_ticket(query: Mapping[str, str]) -> bool:
    return TICKET_PARAM in query


async def resolve_params(query: Mapping[str, str], tickets: Any, access: AccessPolicy) -> SessionParams:
    """A WebSocket's session request: its ticket's when ``session=`` is given (consumed here; a session
    field next to it is refused), else its query's. Raises BadParams (close 1008: a bad query, or an
    unknown, expired, used or foreign ticket, named) or TicketsUnavailable (1013)."""
    if not has_ticket(query):
        return SessionParams.from_query(query)
    extra = session_fields_in(query)
    if extra:
        raise BadParams(f"A session ticket carries the whole session request: remove {', '.join(extra)} from "
                        f"the URL, or put {'it' if len(extra) == 1 else 'them'} in the POST /api/sessions body.")
    answer = await _call(tickets, "consume", query[TICKET_PARAM], access.token_tag())
    if "refused" in answer:
        raise BadParams(answer["refused"])
    return SessionParams.model_validate(answer["params"])
