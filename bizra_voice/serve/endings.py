"""The one place that decides how a session ends for its client: exception or cause -> close code + reason.

Every transport (``/api/chat``'s 0x05 + close, ``/v1/realtime``'s ``error`` event + close) asks
:func:`ending_for` what to tell the client, so a session the server ends is never reported as a normal
close (1000) and every such end is logged once, with the session id and the reason. Pure: no Ray, no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bizra_voice import protocol as P
from bizra_voice.engine.api import AtCapacity, BadSessionRequest, EndCause, EngineError, SessionClosed

log = logging.getLogger("ray.serve")


class ClientGone(Exception):
    """The client disconnected (nothing can be told to it any more)."""


class ClientProtocolError(Exception):
    """The client broke the protocol; the text goes back to it with ``close_code`` (default 1008)."""

    def __init__(self, message: str, close_code: int = P.CloseCode.BAD_REQUEST, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.close_code = int(close_code)
        self.code = code


class ClientTooSlow(Exception):
    """The client stopped reading; ``str(exc)`` is the close reason (it says what was lost)."""


@dataclass(frozen=True)
class Ending:
    """What the client is told when the server ends its session."""

    message: str  # one sentence, sent as 0x05 / the error event's message (and as the close reason, cut)
    close_code: int  # the WebSocket close code
    code: str  # the machine-readable error code (Realtime ``error.code``; ``session.ended`` events)
    error_type: str = "server_error"  # Realtime ``error.type``


# Engine causes -> (close code, error code). 1013 "try again later" for overload, 1001 for a replica
# going away (the client reconnects elsewhere), 4408 for a client that stopped reading, 1011 for faults.
_ENGINE_CAUSES: dict[EndCause, tuple[int, str]] = {
    EndCause.FELL_BEHIND: (P.CloseCode.AT_CAPACITY, "server_overloaded"),
    EndCause.OUTPUT_NOT_READ: (P.CloseCode.TOO_SLOW, "client_too_slow"),
    EndCause.SHUTDOWN: (P.CloseCode.GOING_AWAY, "server_shutting_down"),
    EndCause.ENGINE_ERROR: (P.CloseCode.INTERNAL, "engine_error"),
    EndCause.REANCHOR_FAILED: (P.CloseCode.INTERNAL, "engine_error"),
}


def engine_ending(cause: EndCause, reason: str) -> Ending | None:
    """The ending for a session the engine closed (None when the client closed it)."""
    if cause is EndCause.CLIENT:
        return None
    close_code, code = _ENGINE_CAUSES[cause]
    return Ending(f"The server ended the session: {reason}.", close_code, code)


def ending_for(exc: BaseException | None) -> Ending | None:
    """What to tell the client for ``exc`` (None: nothing to tell — the client left or closed normally)."""
    if exc is None or isinstance(exc, ClientGone):
        return None
    if isinstance(exc, ClientProtocolError):
        return Ending(str(exc), exc.close_code, exc.code, "invalid_request_error")
    if isinstance(exc, ClientTooSlow):
        return Ending(f"The server ended the session: {exc}.", P.CloseCode.TOO_SLOW, "client_too_slow")
    if isinstance(exc, SessionClosed):
        return engine_ending(exc.cause, str(exc))
    if isinstance(exc, AtCapacity):
        return Ending(str(exc), P.CloseCode.AT_CAPACITY, "server_at_capacity")
    if isinstance(exc, BadSessionRequest):
        return Ending(str(exc), P.CloseCode.BAD_REQUEST, "invalid_session", "invalid_request_error")
    if isinstance(exc, EngineError):
        return Ending(f"The server ended the session: {exc}.", P.CloseCode.INTERNAL, "engine_error")
    return Ending("internal server error; the session was closed", P.CloseCode.INTERNAL, "internal_error")


def log_ending(session_id: str | None, ending: Ending, exc: BaseException | None = None) -> None:
    """One log line per server-ended session: id, close code, code and reason (traceback for faults)."""
    internal = ending.close_code == P.CloseCode.INTERNAL and exc is not None and not isinstance(
        exc, (SessionClosed, EngineError))
    log.log(logging.ERROR if internal else logging.WARNING, "session %s ended by the server: close %d (%s): %s",
            session_id or "-", ending.close_code, ending.code, ending.message,
            exc_info=exc if internal else None)
