"""Refusals of client events, and the GA ``error`` server event that carries them."""

from __future__ import annotations

import uuid
from typing import Any


class RealtimeError(Exception):
    """A client event could not be honoured; becomes an ``error`` event (the session stays open)."""

    def __init__(self, message: str, code: str, *, param: str | None = None, event_id: str | None = None,
                 error_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def event(self) -> dict[str, Any]:
        return error_event(self.message, self.code, error_type=self.error_type, param=self.param,
                           event_id=self.event_id)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def error_event(message: str, code: str, *, error_type: str = "invalid_request_error", param: str | None = None,
                event_id: str | None = None) -> dict[str, Any]:
    """A GA ``error`` server event; ``event_id`` names the client event it answers (None: none)."""
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": error_type, "code": code, "message": message, "param": param,
                      "event_id": event_id}}
