"""Validation of the ``/api/chat`` query parameters (pure: pydantic only).

Accepts what PersonaPlex/moshi web clients send (``text_prompt``, ``voice_prompt`` such as ``NATF2.pt``,
``text_temperature``, ``text_topk``, ``audio_temperature``, ``audio_topk``, ``text_seed``/``audio_seed``,
``pad_mult``, ``repetition_penalty``, ...) plus ours (``mode``, ``seed``, ``greedy``, ``record``,
``events``, ``token``). Parameters we do not use are ignored so an old client still connects.

The same fields arrive as a JSON object in ``POST /api/sessions`` (:meth:`SessionParams.from_body`), which
has no URL-length limit; there unknown fields are refused (a new API can catch a misspelt ``voice``), and
the access token is never part of the body. ``session=<ticket>`` then stands for the whole request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bizra_voice import constants as C

Mode = Literal["standalone", "hybrid", "auto"]

VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_VOICE_SUFFIXES = (".pt", ".wav")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class BadParams(ValueError):
    """The query parameters are invalid; ``str(exc)`` is one sentence for the client (0x05, close 1008)."""


def normalize_voice(value: str) -> str:
    """``NATF2.pt`` / ``NATF2.wav`` / ``NATF2`` -> ``NATF2``; anything path-like is refused."""
    name = value.strip()
    for suffix in _VOICE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if not VOICE_NAME.match(name):
        raise ValueError("voice_prompt must be a voice name such as NATF2 or NATF2.pt (letters, digits, _ and -)")
    return name


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected a boolean (1/0/true/false), got {value!r}")


class SessionParams(BaseModel):
    """One session's request, as validated from the WebSocket URL's query string."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    text_prompt: str | None = Field(None, description="Persona; empty or missing = the server's default.")
    voice_prompt: str | None = Field(None, description="Voice name; missing = the server's default.")
    text_temperature: float = Field(C.TEXT_TEMPERATURE, ge=0.0, le=5.0, allow_inf_nan=False)
    text_topk: int = Field(C.TEXT_TOPK, ge=1, le=5000)
    audio_temperature: float = Field(C.AUDIO_TEMPERATURE, ge=0.0, le=5.0, allow_inf_nan=False)
    audio_topk: int = Field(C.AUDIO_TOPK, ge=1, le=5000)
    seed: int | None = Field(None, description="Sampling seed; -1 or missing = random.")
    greedy: bool = False
    mode: Mode = "auto"
    record: bool = False
    events: bool = Field(False, description="Send our JSON events (0x04). Off by default: moshi/PersonaPlex "
                         "clients read 0x04 as the Rust server's info object and get only the reference's messages.")
    token: str | None = Field(None, max_length=512)

    @field_validator("text_prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if "\x00" in value:
            raise ValueError("text_prompt must not contain NUL characters")
        if len(value) > C.MAX_PROMPT_CHARS:
            raise ValueError(f"text_prompt is longer than {C.MAX_PROMPT_CHARS} characters")
        return value or None

    @field_validator("voice_prompt")
    @classmethod
    def _voice(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return normalize_voice(value)

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is None or value == -1:
            return None
        if not 0 <= value < 2**63:
            raise ValueError("must be -1 (random) or a non-negative 63-bit integer")
        return value

    @field_validator("greedy", "record", "events", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> bool:
        return _flag(value)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> SessionParams:
        """Validate a query mapping; ``seed`` falls back to PersonaPlex's ``text_seed``. Raises BadParams."""
        return cls._validate(dict(query), "query parameter")

    @classmethod
    def from_body(cls, body: Any) -> SessionParams:
        """Validate the JSON body of ``POST /api/sessions``: the query's fields and checks, as JSON values
        (strings, numbers, booleans). Unknown fields and ``token`` are refused. Raises BadParams."""
        if not isinstance(body, Mapping):
            raise BadParams('The session request must be a JSON object, such as {"text_prompt": "You are ...", '
                            '"voice_prompt": "NATF2"}.')
        if "token" in body:
            raise BadParams("The access token does not belong in the session request: send it as "
                            "Authorization: Bearer <token> (or ?token=) with the POST.")
        unknown = sorted(str(k) for k in body if k not in BODY_FIELDS)
        if unknown:
            raise BadParams(f"Unknown field {unknown[0][:40]!r} in the session request (the fields are "
                            f"{', '.join(sorted(BODY_FIELDS))}).")
        return cls._validate(dict(body), "field")

    @classmethod
    def _validate(cls, data: dict[str, Any], what: str) -> SessionParams:
        if "seed" not in data and "text_seed" in data:
            data["seed"] = data["text_seed"]
        if isinstance(data.get("mode"), str):
            data["mode"] = data["mode"].strip().lower()
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise BadParams(_one_sentence(exc, what)) from None

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the engine's ``SamplingParams``."""
        return {
            "text_temperature": self.text_temperature,
            "text_topk": self.text_topk,
            "audio_temperature": self.audio_temperature,
            "audio_topk": self.audio_topk,
            "seed": self.seed,
            "greedy": self.greedy,
        }


# The fields of a POST /api/sessions body: the session's own (not the access token), plus PersonaPlex's
# name for the seed. TICKET_PARAM in a URL stands for all of them (see session_fields_in).
BODY_FIELDS = frozenset(SessionParams.model_fields) - {"token"} | {"text_seed"}
TICKET_PARAM = "session"


def session_fields_in(query: Mapping[str, str]) -> list[str]:
    """The session fields a URL carries next to ``session=<ticket>``: refused, since the ticket already
    holds the whole request and two sources would leave it unclear which one the session got."""
    return sorted(k for k in query if k in BODY_FIELDS)


def _one_sentence(exc: ValidationError, what: str = "query parameter") -> str:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "query"
    msg = first.get("msg", "invalid value")
    msg = msg.removeprefix("Value error, ")
    value = first.get("input")
    shown = repr(value) if isinstance(value, (str, int, float)) and len(str(value)) <= 40 else "the given value"
    return f"Invalid {what} {field} ({shown}): {msg}."
