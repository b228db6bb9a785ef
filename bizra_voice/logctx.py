"""Structured logs: the session id on every log line written while a session's tasks run.

``bind_session(id)`` sets a context variable in the WebSocket handler's task; asyncio tasks it spawns
inherit it. ``SessionLogFilter`` (installed on Ray Serve's ``ray.serve`` logger, which every serving module logs to)
adds ``session_id`` to each record, which Serve's JSON log encoding emits as a field, and prefixes the
message with ``[session <id>]`` so the default text encoding shows it too.
"""

from __future__ import annotations

import contextvars
import logging

SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("bizra_session_id", default=None)
LOGGERS = ("ray.serve",)


def bind_session(session_id: str) -> contextvars.Token:
    return SESSION_ID.set(session_id)


def current_session() -> str | None:
    return SESSION_ID.get()


class SessionLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        session_id = getattr(record, "session_id", None) or SESSION_ID.get()
        if session_id:
            record.session_id = session_id
            prefix = f"[session {session_id}] "
            if not (isinstance(record.msg, str) and record.msg.startswith(prefix)):
                record.msg = prefix + str(record.msg)
        return True


def install(loggers: tuple[str, ...] = LOGGERS) -> None:
    """Add the filter once per logger (idempotent)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SessionLogFilter) for f in logger.filters):
            logger.addFilter(SessionLogFilter())
