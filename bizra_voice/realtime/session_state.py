"""The settings of one Realtime session: what ``session.update`` may change, and when it no longer may.

A ``session.update`` is first *planned* (checked against the current settings, nothing changed), then
*committed*. Before audio starts every field just commits. Once the engine session starts (the first
append, ``response.create`` or typed message), mode, recording consent and the audio formats are fixed:
a change of one gets ``session_locked`` with its GA path. The persona (``instructions``) and the voice are
prefilled into the model too, but they can change live: the plan then carries a ``LiveChange`` that the
engine applies first (``live_change.py``), and the update commits only once that is in effect - a refused
change leaves every setting as it was. Voices are resolved when they are named (``voices.py``), so an
unknown one is refused at ``session.update``. The client's ``tools`` and ``tool_choice`` may change at any
time; they apply from the next user turn (``function_calls.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bizra_voice.realtime.audio_formats import AudioCodec, format_object
from bizra_voice.realtime.client_events import SessionChanges
from bizra_voice.realtime.errors import RealtimeError, new_id
from bizra_voice.realtime.function_calls import FunctionTool, check_choice
from bizra_voice.realtime.live_change import LiveChange
from bizra_voice.realtime.voices import VoiceMap
from bizra_voice.session_params import normalize_voice

# session.update fields (SessionChanges -> RealtimeSettings, same names), with the GA path of each
_FIELDS = ("instructions", "voice", "mode", "record", "transcription", "input_format", "output_format", "tools",
           "tool_choice")
_LOCKED_ONCE_STARTED = {"mode": "session.mode", "record": "session.record",
                        "input_format": "session.audio.input.format",
                        "output_format": "session.audio.output.format"}
_LIVE_ONCE_STARTED = ("instructions", "voice")  # re-prefilled by the engine (LiveChange)


@dataclass
class RealtimeSettings:
    """The session's effective configuration (what session.created/updated report)."""

    model: str = "personaplex-7b-v1"
    instructions: str = ""
    voice: str = ""  # as the client named it (reported back)
    engine_voice: str = ""  # the catalog voice it resolved to (what the model speaks with)
    mode: str = "auto"
    record: bool = False
    transcription: bool = False
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str | dict[str, str] = "auto"


@dataclass(frozen=True)
class SettingsUpdate:
    """A checked ``session.update``: the fields it sets, the engine voice it resolves to, and the live change
    the engine must make before it may be committed (None: it commits at once)."""

    fields: dict[str, Any]
    engine_voice: str
    live: LiveChange | None = None


class SessionState:
    """Settings + the lock that the engine session's start puts on them + the audio codec it fixes."""

    def __init__(self, settings: RealtimeSettings, voices: VoiceMap | None = None,
                 session_id: str | None = None, can_force_tools: bool = True) -> None:
        self.settings = settings
        self.voices = voices
        self.can_force_tools = can_force_tools  # the knowledge backend can enforce tool_choice 'required'
        self.session_id = session_id or new_id("sess")
        self.codec: AudioCodec | None = None  # made when the engine session starts
        if not settings.engine_voice and voices is None:
            settings.engine_voice = settings.voice

    @property
    def started(self) -> bool:
        return self.codec is not None

    @property
    def conversation_id(self) -> str:
        return f"conv_{self.session_id}"

    def resolve_voice(self, name: str, *, param: str = "session.audio.output.voice",
                      event_id: str | None = None) -> str:
        """The engine voice a client's voice name stands for; RealtimeError (``param``) if none."""
        try:
            name = normalize_voice(name)
        except ValueError as exc:
            raise RealtimeError(str(exc), "invalid_value", param=param, event_id=event_id) from None
        return name if self.voices is None else self.voices.resolve(name, param=param, event_id=event_id)

    def resolve_initial_voice(self) -> None:
        """Resolve the voice the connection opened with (query ``voice_prompt`` or the server's default)."""
        self.settings.engine_voice = self.resolve_voice(self.settings.voice, param="voice_prompt")

    def start(self) -> AudioCodec:
        """Fix the settings (the engine session is opening with them) and make the codec they chose."""
        if self.codec is None:
            self.codec = AudioCodec(self.settings.input_format, self.settings.output_format)
        return self.codec

    def plan(self, changes: SessionChanges) -> SettingsUpdate:
        """Check a session.update against the current settings (nothing changes yet); RealtimeError if it
        names an unknown voice or changes a fixed setting. A persona or voice change of a started session
        comes back as the plan's ``live`` part."""
        s = self.settings
        asked = {name: getattr(changes, name) for name in _FIELDS if getattr(changes, name) is not None}
        engine_voice = s.engine_voice
        if "voice" in asked:
            engine_voice = self.resolve_voice(asked["voice"], event_id=changes.event_id)
        if "tools" in asked or "tool_choice" in asked:
            check_choice(asked.get("tools", s.tools), asked.get("tool_choice", s.tool_choice),
                         can_force=self.can_force_tools, event_id=changes.event_id)
        if not self.started:
            return SettingsUpdate(asked, engine_voice)
        current = {**vars(s), "voice": s.engine_voice}
        proposed = {**asked, "voice": engine_voice} if "voice" in asked else asked
        differs = [name for name, value in proposed.items() if value != current[name]]
        fixed = [_LOCKED_ONCE_STARTED[name] for name in differs if name in _LOCKED_ONCE_STARTED]
        if fixed:
            raise RealtimeError(f"{', '.join(fixed)} cannot change once audio has started (they are fixed "
                                "when the model's session opens); open a new connection instead. The persona "
                                "(instructions) and the voice can change live.", "session_locked",
                                param=fixed[0], event_id=changes.event_id)
        live = None
        if any(name in _LIVE_ONCE_STARTED for name in differs):
            live = LiveChange(instructions=asked["instructions"] if "instructions" in differs else None,
                              engine_voice=engine_voice if "voice" in differs else None,
                              event_id=changes.event_id)
        return SettingsUpdate(asked, engine_voice, live)

    def commit(self, update: SettingsUpdate) -> None:
        """Make a planned update the session's settings (a live part only once the engine applied it)."""
        for name, value in update.fields.items():
            setattr(self.settings, name, value)
        self.settings.engine_voice = update.engine_voice

    # ---- what session.created / session.updated report -------------------------------------------------
    def session_object(self) -> dict[str, Any]:
        s = self.settings
        return {
            "type": "realtime", "object": "realtime.session", "id": self.session_id, "model": s.model,
            "output_modalities": ["audio"], "instructions": s.instructions,
            "audio": {
                "input": {"format": format_object(s.input_format),
                          "transcription": {"model": "whisper"} if s.transcription else None,
                          "turn_detection": None, "noise_reduction": None},
                "output": {"format": format_object(s.output_format), "voice": s.voice, "speed": 1.0},
            },
            "tools": [tool.session_object() for tool in s.tools], "tool_choice": s.tool_choice,
            "max_output_tokens": "inf", "tracing": None,
            "mode": s.mode, "record": s.record,
        }

    def created(self) -> dict[str, Any]:
        return {"type": "session.created", "event_id": new_id("event"), "session": self.session_object()}

    def updated(self, live: dict[str, Any] | None = None) -> dict[str, Any]:
        """``session.updated``; after a live change with its ``bizra`` report (``LiveChange.report``)."""
        event = {"type": "session.updated", "event_id": new_id("event"), "session": self.session_object()}
        if live is not None:
            event["bizra"] = live
        return event
