"""Types that cross the boundary between the engine and whoever drives it (server, CLI, tests).

Pure Python + numpy: importable without torch, Ray or a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from bizra_voice import constants as C

# Top-k ceilings: the batched sampler takes a fixed-size top-k (so the step stays CUDA-graph friendly)
# and masks each row down to its own k.
MAX_TEXT_TOPK = 1000
MAX_AUDIO_TOPK = 2048


class EngineError(Exception):
    """Base class of errors the engine reports to a client in one sentence."""


class AtCapacity(EngineError):
    """Every session slot of this engine is taken."""


class BadSessionRequest(EngineError):
    """The session request is invalid (unknown voice, bad prompt, bad sampling values)."""


class EndCause(str, Enum):
    """Why a session ended. Every cause but ``CLIENT`` is the server's doing and is reported to the client
    (``bizra_voice/serve/endings.py`` maps each to a close code and an error code)."""

    CLIENT = "client_closed"
    FELL_BEHIND = "fell_behind"  # the engine stayed behind the session's audio past the allowed time
    OUTPUT_NOT_READ = "output_not_read"  # the consumer of the session's output stopped reading
    SHUTDOWN = "server_shutdown"  # the engine (replica) is shutting down
    ENGINE_ERROR = "engine_error"  # a model step or a prefill raised
    REANCHOR_FAILED = "reanchor_failed"  # a long session could not re-anchor its persona


class SessionClosed(EngineError):
    """The session has ended (closed by the client, the server, or a fault); ``cause`` says which."""

    def __init__(self, message: str = "The session is closed.", cause: EndCause = EndCause.CLIENT) -> None:
        super().__init__(message)
        self.cause = EndCause(cause)


@dataclass(frozen=True)
class SamplingParams:
    """Per-session sampling. ``greedy`` (or a temperature of 0) means argmax, as the conformance kit uses."""

    text_temperature: float = C.TEXT_TEMPERATURE
    text_topk: int = C.TEXT_TOPK
    audio_temperature: float = C.AUDIO_TEMPERATURE
    audio_topk: int = C.AUDIO_TOPK
    seed: int | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        for name in ("text_temperature", "audio_temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 5.0:
                raise BadSessionRequest(f"{name} must be a finite number between 0 and 5, got {value!r}.")
        for name, limit in (("text_topk", MAX_TEXT_TOPK), ("audio_topk", MAX_AUDIO_TOPK)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
                raise BadSessionRequest(f"{name} must be an integer between 1 and {limit}, got {value!r}.")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise BadSessionRequest(f"seed must be a non-negative 63-bit integer, got {self.seed!r}.")


@dataclass(frozen=True)
class SessionSpec:
    """What a session asks the engine for. ``text_prompt`` is the raw persona (wrapped by the engine)."""

    text_prompt: str = ""
    voice: str = C.DEFAULT_VOICE
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class FrameOutput:
    """One 80 ms frame produced for a session: the assistant's audio and its inner-monologue text token."""

    frame: int  # conversation frame index (0 = first frame after the prompt)
    pcm: np.ndarray  # float32, FRAME_SIZE samples at 24 kHz
    text_token: int
    text: str | None  # decoded word piece ('▁' -> ' '); None for padding tokens
    agent_codes: np.ndarray  # int64 [8], un-delayed Mimi codes of this frame
    tick_ms: float = 0.0  # duration of the batched tick that produced it
    guided: bool = False  # the text token is a guidance (hybrid answer) token
