"""The moshi/PersonaPlex WebSocket wire protocol for ``/api/chat`` (pure: no Ray, no torch).

Every binary message is one kind byte followed by its payload. Byte-compatible with moshi and
PersonaPlex clients; our additions travel as JSON metadata (kind 0x04) so old clients still work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

# A documented bound on one client message: Ogg pages of 80 ms of Opus are well under 4 KiB; JSON events
# are small. Serve's uvicorn accepts up to 16 MiB, so this is enforced by the session loop.
MAX_MESSAGE_BYTES = 256 * 1024


class Kind(IntEnum):
    HANDSHAKE = 0x00
    AUDIO = 0x01
    TEXT = 0x02
    CONTROL = 0x03
    METADATA = 0x04
    ERROR = 0x05
    PING = 0x06


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (RFC 6455 registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # this replica is draining (stop/downscale); reconnect
    UNSUPPORTED = 1003  # a text WebSocket frame (the protocol is binary)
    INVALID_PAYLOAD = 1007  # a metadata message that is not UTF-8 JSON
    BAD_REQUEST = 1008  # policy violation: invalid parameters or messages, invalid audio
    TOO_BIG = 1009  # a message over MAX_MESSAGE_BYTES
    INTERNAL = 1011
    SERVICE_RESTART = 1012  # the replica holding the session failed or restarts; reconnect
    AT_CAPACITY = 1013  # "try again later"
    UNAUTHORIZED = 4401  # missing or wrong token (HTTP 401 on REST)
    FORBIDDEN_ORIGIN = 4403  # Origin not on the allow-list (HTTP 403 on REST)
    TOO_SLOW = 4408  # the client stopped reading; the reason says how much output was dropped


class ProtocolError(ValueError):
    """A client message that does not follow the protocol (the text is sent back as a 0x05 error).

    ``close_code`` is the WebSocket close code the server ends the session with.
    """

    def __init__(self, message: str, close_code: int = CloseCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.close_code = int(close_code)


@dataclass(frozen=True)
class Message:
    kind: Kind
    payload: bytes

    def text(self) -> str:
        """The payload as UTF-8 (TEXT / ERROR / METADATA)."""
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"{self.kind.name.lower()} message is not valid UTF-8",
                                CloseCode.INVALID_PAYLOAD) from exc

    def json(self) -> dict[str, Any]:
        """The payload of a METADATA message as a JSON object."""
        try:
            value = json.loads(self.text())
        except json.JSONDecodeError as exc:
            raise ProtocolError("metadata message is not valid JSON", CloseCode.INVALID_PAYLOAD) from exc
        except RecursionError as exc:
            raise ProtocolError("metadata message is nested too deeply", CloseCode.INVALID_PAYLOAD) from exc
        if not isinstance(value, dict):
            raise ProtocolError("metadata message must be a JSON object", CloseCode.INVALID_PAYLOAD)
        return value


def decode(data: bytes | bytearray | memoryview, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Split one binary WebSocket message into its kind and payload."""
    data = bytes(data)
    if not data:
        raise ProtocolError("empty message")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit", CloseCode.TOO_BIG)
    try:
        kind = Kind(data[0])
    except ValueError as exc:
        raise ProtocolError(f"unknown message kind 0x{data[0]:02x}") from exc
    return Message(kind, data[1:])


def handshake() -> bytes:
    """Sent exactly once, after the session's prompts are in: the client may start streaming."""
    return bytes([Kind.HANDSHAKE])


def audio(ogg: bytes) -> bytes:
    return bytes([Kind.AUDIO]) + ogg


def text(piece: str) -> bytes:
    return bytes([Kind.TEXT]) + piece.encode("utf-8")


def metadata(event: dict[str, Any]) -> bytes:
    return bytes([Kind.METADATA]) + json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def error(message: str) -> bytes:
    return bytes([Kind.ERROR]) + message.encode("utf-8")


def ping() -> bytes:
    return bytes([Kind.PING])
