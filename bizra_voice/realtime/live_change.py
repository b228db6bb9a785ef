"""A persona or voice change of a running Realtime session: what the engine must re-prefill, and its answers.

Once audio flows, ``instructions`` and the voice live in the model's context. A ``session.update`` that
changes them is applied by re-anchoring the session's slot on the new prompt plus the recent conversation
(``LiveSession.update_prompt``; the audio keeps streaming) and answered with ``session.updated`` only once
the change is in effect. That event carries our ``bizra`` extension field (the openai models accept extra
fields): what changed, in GA paths, and how long the re-prefill took. A refused change is an ``error`` that
names the client's ``event_id`` and the field to blame; the session keeps its old persona and voice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bizra_voice.realtime.errors import RealtimeError

INSTRUCTIONS = "session.instructions"
VOICE = "session.audio.output.voice"


@dataclass(frozen=True)
class LiveChange:
    """What the engine must change (None = unchanged): the persona and/or the engine voice."""

    instructions: str | None = None
    engine_voice: str | None = None
    event_id: str | None = None  # the session.update it answers

    @property
    def changed(self) -> list[str]:
        """The GA paths of what changes, in the order a client reads them."""
        return [path for path, value in ((INSTRUCTIONS, self.instructions), (VOICE, self.engine_voice))
                if value is not None]

    @property
    def param(self) -> str:
        """The field an engine refusal is blamed on: the persona when it changes (a prompt too long for the
        context, a bad persona), else the voice."""
        return INSTRUCTIONS if self.instructions is not None else VOICE

    def refused(self, message: str) -> RealtimeError:
        """The engine refused the new value (``BadSessionRequest``): the client's mistake, nothing changed."""
        return RealtimeError(f"{message} The session keeps its current persona and voice.", "invalid_value",
                             param=self.param, event_id=self.event_id)

    def failed(self, message: str) -> RealtimeError:
        """The engine could not apply a valid change (``EngineError``): the server's fault, nothing changed."""
        return RealtimeError(f"The live change failed: {message}.", "live_update_failed", param=self.param,
                             event_id=self.event_id, error_type="server_error")

    def report(self, result: dict[str, Any]) -> dict[str, Any]:
        """The ``bizra`` field of the ``session.updated`` that answers this change (``update_prompt``'s result)."""
        return {"changed": self.changed, "engine_voice": result.get("voice"),
                "prompt_positions": result.get("prompt_positions"), "prefill_ms": result.get("prefill_ms"),
                "event_id": self.event_id}
