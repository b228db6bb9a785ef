"""OpenAI Realtime (GA) protocol for ``/v1/realtime``: event parsing, event building, response segmentation.

Pure (no Ray, no sockets): ``bizra_voice/serve/realtime_session.py`` drives it.

Client events handled: ``session.update`` (``instructions`` -> persona, ``audio.output.voice`` -> voice,
``audio.*.format`` -> PCM16 24 kHz or G.711 μ-law/A-law 8 kHz (``audio/g711.py``), plus our extensions
``mode`` and ``record``), ``input_audio_buffer.append`` (base64 audio in the input format),
``input_audio_buffer.commit``, ``input_audio_buffer.clear``, ``response.create``, ``response.cancel`` and
``conversation.item.create`` of a user message with ``input_text`` (a typed question: hybrid mode answers it
with Qwen's knowledge in the persona's voice) and ``conversation.item.truncate`` (acknowledged). Anything else
is answered with a recoverable ``error`` event.

**Hybrid mode's own events** (router decisions, Qwen's streamed answer, guidance start/end) have no Realtime
equivalent; they are sent with a ``bizra.`` prefix (``bizra.router.decision``, ``bizra.knowledge.answer``,
``bizra.guidance.started``/``ended``) so that Realtime clients can ignore them and ours can show them.

**Responses in a full-duplex model.** PersonaPlex listens and speaks at once; it has no request/response
boundary, so responses are synthesised from its output (``ResponseSegmenter``): a frame *speaks* when it
carries a text piece or its audio RMS is above ``speech_rms`` (-40 dBFS). The first speaking frame opens a
response (``response.created``, the assistant item's ``response.output_item.added`` /
``conversation.item.added``, ``response.content_part.added``); every frame from then on is sent as
``response.output_audio.delta`` (and its text as ``response.output_audio_transcript.delta``) until
``end_silence_frames`` (10 = 800 ms) consecutive non-speaking frames, which close it (the matching ``.done``
events, then ``response.done`` status ``completed``). Frames outside a
response are the model's silence and are not sent. ``response.create`` is accepted (the model decides when
to speak); ``response.cancel`` closes the open response with status ``cancelled``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bizra_voice import constants as C
from bizra_voice.audio.g711 import TELEPHONY_RATE, G711Decoder, G711Encoder
from bizra_voice.session_params import normalize_voice

MAX_EVENT_BYTES = 15 * 1024 * 1024  # OpenAI's limit for one input_audio_buffer.append
MODES = ("standalone", "hybrid", "auto")
# session.update fields (SessionChanges -> RealtimeSettings, same names); those fixed once audio flows,
# with the parameter name an error reports
_SETTINGS_FIELDS = ("instructions", "voice", "mode", "record", "transcription", "input_format", "output_format")
_LOCKED_ONCE_STARTED = {"instructions": "instructions", "voice": "voice", "mode": "mode", "record": "record",
                        "input_format": "audio.input.format", "output_format": "audio.output.format"}
MAX_TRACKED_ITEMS = 64  # assistant items whose audio length is kept (conversation.item.truncate)
AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")  # PCM16 24 kHz; G.711 μ-law / A-law 8 kHz
_G711_LAW = {"audio/pcmu": "ulaw", "audio/pcma": "alaw"}


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


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def error_event(message: str, code: str, *, error_type: str = "invalid_request_error", param: str | None = None,
                event_id: str | None = None) -> dict[str, Any]:
    """A GA ``error`` server event."""
    return {"type": "error", "event_id": new_id("event"),
            "error": {"type": error_type, "code": code, "message": message, "param": param,
                      "event_id": event_id}}


def encode_pcm16(pcm: np.ndarray) -> str:
    """float32 [-1, 1] -> base64 PCM16 little-endian."""
    samples = np.clip(np.asarray(pcm, np.float32).reshape(-1), -1.0, 1.0)
    return base64.b64encode((samples * 32767.0).round().astype("<i2").tobytes()).decode("ascii")


def decode_base64_audio(data: Any, event_id: str | None = None) -> bytes:
    """The ``audio`` field of ``input_audio_buffer.append`` -> its bytes; raises RealtimeError on bad input."""
    if not isinstance(data, str):
        raise RealtimeError("input_audio_buffer.append needs `audio`: a base64 string in the session's input "
                            "format (PCM16 24 kHz mono unless set otherwise).", "invalid_value", param="audio",
                            event_id=event_id)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RealtimeError("`audio` is not valid base64.", "invalid_value", param="audio",
                            event_id=event_id) from None


def pcm16_samples(raw: bytes, event_id: str | None = None) -> np.ndarray:
    """PCM16 little-endian bytes -> float32 [-1, 1); raises RealtimeError on a torn sample."""
    if len(raw) % 2:
        raise RealtimeError("`audio` must hold whole 16-bit samples (an even number of bytes).", "invalid_value",
                            param="audio", event_id=event_id)
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def decode_pcm16(data: Any, event_id: str | None = None) -> np.ndarray:
    """base64 PCM16 little-endian -> float32 [-1, 1); raises RealtimeError on bad input."""
    return pcm16_samples(decode_base64_audio(data, event_id), event_id)


# ---- client events ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionChanges:
    """What a ``session.update`` asks for (None = unchanged)."""

    instructions: str | None = None
    voice: str | None = None
    mode: str | None = None
    record: bool | None = None
    transcription: bool | None = None  # audio.input.transcription set (True) or null (False)
    input_format: str | None = None
    output_format: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class ClientEvent:
    kind: Literal["session.update", "append", "commit", "clear", "response.create", "response.cancel",
                  "item.create", "item.truncate"]
    event_id: str | None = None
    changes: SessionChanges | None = None
    audio: bytes | None = None  # append: the audio bytes, in the session's input format
    text: str | None = None  # item.create: the user's typed message
    item_id: str | None = None  # item.create: the client's item id, if it chose one; item.truncate: the item
    audio_end_ms: int | None = None  # item.truncate: how much of the item's audio the user heard


def _audio_format(fmt: Any, where: str, event_id: str | None) -> str | None:
    """A session's ``audio.*.format`` -> one of AUDIO_FORMATS (None = unchanged)."""
    if fmt is None:
        return None
    kind = fmt.get("type", "audio/pcm") if isinstance(fmt, dict) else None
    rate = fmt.get("rate") if isinstance(fmt, dict) else None
    expected_rate = C.SAMPLE_RATE if kind == "audio/pcm" else TELEPHONY_RATE
    if kind not in AUDIO_FORMATS or rate not in (None, expected_rate):
        raise RealtimeError(f"Supported formats for {where}: audio/pcm at {C.SAMPLE_RATE} Hz, audio/pcmu and "
                            f"audio/pcma (G.711 at {TELEPHONY_RATE} Hz).", "unsupported_audio_format",
                            param=f"session.{where}.format", event_id=event_id)
    return kind


def format_object(kind: str) -> dict[str, Any]:
    """The GA schema's format object (G.711 formats carry no rate: it is always 8 kHz)."""
    return {"type": kind, "rate": C.SAMPLE_RATE} if kind == "audio/pcm" else {"type": kind}


def _session_changes(session: Any, event_id: str | None) -> SessionChanges:
    if not isinstance(session, dict):
        raise RealtimeError("session.update needs a `session` object.", "invalid_value", param="session",
                            event_id=event_id)
    if session.get("type", "realtime") != "realtime":
        raise RealtimeError("Only realtime sessions are served here (not transcription sessions).",
                            "invalid_value", param="session.type", event_id=event_id)
    instructions = session.get("instructions")
    if instructions is not None and (not isinstance(instructions, str) or len(instructions) > C.MAX_PROMPT_CHARS
                                     or "\x00" in instructions):
        raise RealtimeError(f"`instructions` must be text of at most {C.MAX_PROMPT_CHARS} characters.",
                            "invalid_value", param="session.instructions", event_id=event_id)
    audio = session.get("audio") or {}
    if not isinstance(audio, dict):
        raise RealtimeError("`audio` must be an object.", "invalid_value", param="session.audio", event_id=event_id)
    audio_in = audio.get("input") or {}
    audio_out = audio.get("output") or {}
    input_format = _audio_format(audio_in.get("format"), "audio.input", event_id)
    output_format = _audio_format(audio_out.get("format"), "audio.output", event_id)
    voice = audio_out.get("voice")
    if voice is not None:
        if isinstance(voice, dict):
            voice = voice.get("id")
        try:
            voice = normalize_voice(str(voice))
        except ValueError as exc:
            raise RealtimeError(str(exc), "invalid_value", param="session.audio.output.voice",
                                event_id=event_id) from None
    mode = session.get("mode")
    if mode is not None and mode not in MODES:
        raise RealtimeError(f"`mode` must be one of {', '.join(MODES)}.", "invalid_value", param="session.mode",
                            event_id=event_id)
    record = session.get("record")
    if record is not None and not isinstance(record, bool):
        raise RealtimeError("`record` must be true or false.", "invalid_value", param="session.record",
                            event_id=event_id)
    transcription = None
    if "transcription" in audio_in:
        transcription = audio_in["transcription"] is not None
    return SessionChanges(instructions=instructions, voice=voice, mode=mode, record=record,
                          transcription=transcription, input_format=input_format, output_format=output_format,
                          event_id=event_id)


def _user_text_item(item: Any, event_id: str | None) -> tuple[str, str | None]:
    """A ``conversation.item.create`` item -> (text, item id); only user messages of input_text are served."""
    def bad(message: str, param: str = "item") -> RealtimeError:
        return RealtimeError(message, "invalid_value", param=param, event_id=event_id)

    if not isinstance(item, dict):
        raise bad("conversation.item.create needs an `item` object.")
    if item.get("type") != "message" or item.get("role") != "user":
        raise RealtimeError("Only user messages can be added here (PersonaPlex speaks for itself; there are no "
                            "tools): item.type 'message', item.role 'user'.", "unsupported_item",
                            param="item.type", event_id=event_id)
    content = item.get("content")
    if not isinstance(content, list) or not content or not all(isinstance(c, dict) for c in content):
        raise bad("item.content must be a non-empty list of content parts.", "item.content")
    if any(c.get("type") != "input_text" for c in content):
        raise RealtimeError("Only input_text content is accepted in conversation.item.create (send speech with "
                            "input_audio_buffer.append).", "unsupported_content", param="item.content",
                            event_id=event_id)
    if any(not isinstance(c.get("text"), str) for c in content):
        raise bad("Each input_text part needs a `text` string.", "item.content")
    text = " ".join(" ".join(c["text"] for c in content).split())
    if not text or len(text) > C.MAX_TYPED_CHARS or "\x00" in text:
        raise bad(f"The message must be non-empty text of at most {C.MAX_TYPED_CHARS} characters.",
                  "item.content")
    item_id = item.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not 0 < len(item_id) <= 64):
        raise bad("item.id must be a string of at most 64 characters.", "item.id")
    return text, item_id


def parse_client_event(data: str | bytes) -> ClientEvent:
    """One WebSocket text message -> a ``ClientEvent``; raises RealtimeError (recoverable) on anything else."""
    if len(data) > MAX_EVENT_BYTES:
        raise RealtimeError(f"An event may be at most {MAX_EVENT_BYTES} bytes.", "event_too_large")
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RealtimeError("Events must be JSON objects.", "invalid_json") from None
    if not isinstance(event, dict):
        raise RealtimeError("Events must be JSON objects.", "invalid_json")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    kind = event.get("type")
    if kind == "session.update":
        return ClientEvent("session.update", event_id, changes=_session_changes(event.get("session"), event_id))
    if kind == "input_audio_buffer.append":
        return ClientEvent("append", event_id, audio=decode_base64_audio(event.get("audio"), event_id))
    if kind == "input_audio_buffer.commit":
        return ClientEvent("commit", event_id)
    if kind == "input_audio_buffer.clear":
        return ClientEvent("clear", event_id)
    if kind == "response.create":
        return ClientEvent("response.create", event_id)
    if kind == "response.cancel":
        return ClientEvent("response.cancel", event_id)
    if kind == "conversation.item.create":
        text, item_id = _user_text_item(event.get("item"), event_id)
        return ClientEvent("item.create", event_id, text=text, item_id=item_id)
    if kind == "conversation.item.truncate":
        item_id, end_ms, index = event.get("item_id"), event.get("audio_end_ms"), event.get("content_index", 0)
        for name, ok in (("item_id", isinstance(item_id, str) and 0 < len(item_id) <= 64),
                         ("audio_end_ms", isinstance(end_ms, int) and not isinstance(end_ms, bool) and end_ms >= 0),
                         ("content_index", index == 0)):
            if not ok:
                raise RealtimeError(f"conversation.item.truncate needs `item_id`, `audio_end_ms` >= 0 and "
                                    f"`content_index` 0 (assistant items have one audio part); bad `{name}`.",
                                    "invalid_value", param=name, event_id=event_id)
        return ClientEvent("item.truncate", event_id, item_id=item_id, audio_end_ms=end_ms)
    raise RealtimeError(f"Unsupported event type {str(kind)[:64]!r}: this server handles session.update, "
                        "input_audio_buffer.append/commit/clear, response.create/cancel, "
                        "conversation.item.create (user text) and conversation.item.truncate.", "unknown_event",
                        param="type", event_id=event_id)


# ---- response segmentation -------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmenterConfig:
    end_silence_frames: int = 10  # 800 ms of silence closes a response
    speech_rms: float = 0.01  # -40 dBFS


@dataclass
class SegmentStep:
    started: bool = False  # this frame opened a response
    in_response: bool = False  # this frame belongs to the open response (send it)
    ended: bool = False  # the response closed after this frame


@dataclass
class ResponseSegmenter:
    """Full duplex has no response boundary: open on the first speaking frame, close after a silence."""

    config: SegmenterConfig = field(default_factory=SegmenterConfig)
    active: bool = False
    silent_frames: int = 0

    def speaks(self, text: str, pcm: np.ndarray) -> bool:
        if text.strip():
            return True
        samples = np.asarray(pcm, np.float32)
        return bool(samples.size) and float(np.sqrt(np.mean(samples * samples))) >= self.config.speech_rms

    def step(self, text: str, pcm: np.ndarray) -> SegmentStep:
        speaking = self.speaks(text, pcm)
        if not self.active:
            if not speaking:
                return SegmentStep()
            self.active, self.silent_frames = True, 0
            return SegmentStep(started=True, in_response=True)
        self.silent_frames = 0 if speaking else self.silent_frames + 1
        if self.silent_frames >= self.config.end_silence_frames:
            self.active, self.silent_frames = False, 0
            return SegmentStep(in_response=True, ended=True)
        return SegmentStep(in_response=True)

    def cancel(self) -> bool:
        """Close the open response now; True when one was open."""
        was, self.active, self.silent_frames = self.active, False, 0
        return was


# ---- the protocol state of one connection ------------------------------------------------------------------

@dataclass
class RealtimeSettings:
    """The session's effective configuration (what session.created/updated report)."""

    model: str = "personaplex-7b-v1"
    instructions: str = ""
    voice: str = ""
    mode: str = "auto"
    record: bool = False
    transcription: bool = False
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"


class RealtimeProtocol:
    """Builds the server events of one ``/v1/realtime`` connection from engine frames and client events."""

    def __init__(self, settings: RealtimeSettings, session_id: str | None = None,
                 segmenter: SegmenterConfig | None = None) -> None:
        self.settings = settings
        self.session_id = session_id or new_id("sess")
        self.segmenter = ResponseSegmenter(segmenter or SegmenterConfig())
        self.started = False  # engine session open: instructions and voice are fixed from here on
        self.response_id: str | None = None
        self.item_id: str | None = None
        self.transcript: list[str] = []
        self.frames = 0
        self.responses = 0
        self.last_item_id: str | None = None
        self.created_at = int(time.time())
        self._item_previous: str | None = None  # the item before the open response's assistant item
        self.audio_ms: dict[str, int] = {}  # assistant item -> ms of audio sent (the last MAX_TRACKED_ITEMS)
        self._decoder: G711Decoder | None = None  # created once the formats are fixed (engine started)
        self._encoder: G711Encoder | None = None

    # session ------------------------------------------------------------------------------------------
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
            "tools": [], "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None,
            "mode": s.mode, "record": s.record,
        }

    def session_created(self) -> dict[str, Any]:
        return {"type": "session.created", "event_id": new_id("event"), "session": self.session_object()}

    def session_updated(self) -> dict[str, Any]:
        return {"type": "session.updated", "event_id": new_id("event"), "session": self.session_object()}

    def apply(self, changes: SessionChanges) -> None:
        """Apply a session.update; raises RealtimeError if it changes what the running engine session fixed."""
        s = self.settings
        asked = {name: getattr(changes, name) for name in _SETTINGS_FIELDS if getattr(changes, name) is not None}
        if self.started:
            fixed = [_LOCKED_ONCE_STARTED[name] for name, value in asked.items()
                     if name in _LOCKED_ONCE_STARTED and value != getattr(s, name)]
            if fixed:
                raise RealtimeError(f"{', '.join(fixed)} cannot change once audio has started (they are "
                                    "prefilled into the model's session); open a new connection instead.",
                                    "session_locked", param=f"session.{fixed[0]}", event_id=changes.event_id)
        for name, value in asked.items():
            setattr(s, name, value)

    # audio ---------------------------------------------------------------------------------------------
    def decode_input(self, raw: bytes, event_id: str | None = None) -> np.ndarray:
        """Appended audio in the session's input format -> float32 PCM at 24 kHz (call once started)."""
        law = _G711_LAW.get(self.settings.input_format)
        if law is None:
            return pcm16_samples(raw, event_id)
        if self._decoder is None:
            self._decoder = G711Decoder(law)  # type: ignore[arg-type]
        return self._decoder.decode(raw)

    def encode_output(self, pcm: np.ndarray) -> str:
        """One engine frame -> base64 audio in the session's output format (G.711 keeps resampler state)."""
        law = _G711_LAW.get(self.settings.output_format)
        if law is None:
            return encode_pcm16(pcm)
        if self._encoder is None:
            self._encoder = G711Encoder(law)  # type: ignore[arg-type]
        return base64.b64encode(self._encoder.encode(pcm)).decode("ascii")

    # output --------------------------------------------------------------------------------------------
    def _response(self, status: str, *, reason: str | None = None, with_output: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "object": "realtime.response", "id": self.response_id, "status": status,
            "status_details": {"type": status, "reason": reason} if status != "in_progress" else None,
            "conversation_id": f"conv_{self.session_id}", "output_modalities": ["audio"],
            "audio": {"output": {"format": format_object(self.settings.output_format),
                                 "voice": self.settings.voice}},
            "max_output_tokens": "inf", "metadata": None, "usage": None, "output": [],
        }
        if with_output:
            body["output"] = [{"id": self.item_id, "object": "realtime.item", "type": "message",
                               "role": "assistant", "status": "completed" if status == "completed" else "incomplete",
                               "content": [{"type": "output_audio", "transcript": "".join(self.transcript)}]}]
        return body

    def _part(self, event_type: str, **extra: Any) -> dict[str, Any]:
        return {"type": event_type, "event_id": new_id("event"), "response_id": self.response_id,
                "item_id": self.item_id, "output_index": 0, "content_index": 0, **extra}

    def _assistant_item(self, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [{"type": "output_audio", "transcript": "".join(self.transcript)}]
        return {"id": self.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": content}

    def _item_events(self, phase: Literal["added", "done"], item: dict[str, Any],
                     previous: str | None) -> list[dict[str, Any]]:
        """``response.output_item.*`` + ``conversation.item.*``: SDKs track the conversation through them."""
        return [{"type": f"response.output_item.{phase}", "event_id": new_id("event"),
                 "response_id": self.response_id, "output_index": 0, "item": item},
                {"type": f"conversation.item.{phase}", "event_id": new_id("event"), "previous_item_id": previous,
                 "item": item}]

    def _open(self) -> list[dict[str, Any]]:
        self.response_id, self.item_id, self.transcript = new_id("resp"), new_id("item"), []
        self.responses += 1
        self._item_previous, self.last_item_id = self.last_item_id, self.item_id
        return [{"type": "response.created", "event_id": new_id("event"), "response": self._response("in_progress")},
                *self._item_events("added", self._assistant_item("in_progress"), self._item_previous),
                self._part("response.content_part.added", part={"type": "audio", "transcript": ""})]

    def _close(self, status: str, reason: str | None = None) -> list[dict[str, Any]]:
        transcript = "".join(self.transcript)
        item = self._assistant_item("completed" if status == "completed" else "incomplete")
        events = [self._part("response.output_audio.done"),
                  self._part("response.output_audio_transcript.done", transcript=transcript),
                  self._part("response.content_part.done", part={"type": "audio", "transcript": transcript}),
                  *self._item_events("done", item, self._item_previous),
                  {"type": "response.done", "event_id": new_id("event"),
                   "response": self._response(status, reason=reason, with_output=True)}]
        self.response_id = self.item_id = None
        return events

    def on_frame(self, pcm: np.ndarray, text: str) -> list[dict[str, Any]]:
        """The server events for one 80 ms engine frame (none while the model is silent)."""
        self.frames += 1
        step = self.segmenter.step(text, pcm)
        # a G.711 stream's resampler must see the silences too; PCM16 is only encoded when it is sent
        audio = self.encode_output(pcm) if self.settings.output_format in _G711_LAW else None
        if not step.in_response:
            return []
        events = self._open() if step.started else []
        events.append(self._part("response.output_audio.delta",
                                 delta=self.encode_output(pcm) if audio is None else audio))
        self.audio_ms[self.item_id] = self.audio_ms.get(self.item_id, 0) + int(C.FRAME_MS)  # type: ignore[index]
        while len(self.audio_ms) > MAX_TRACKED_ITEMS:
            del self.audio_ms[next(iter(self.audio_ms))]
        if text:
            self.transcript.append(text)
            events.append(self._part("response.output_audio_transcript.delta", delta=text))
        if step.ended:
            events.extend(self._close("completed"))
        return events

    def truncated(self, item_id: str, audio_end_ms: int, event_id: str | None = None) -> dict[str, Any]:
        """Acknowledge ``conversation.item.truncate`` of an assistant item (the client stopped playing it)."""
        sent = self.audio_ms.get(item_id)
        if sent is None:
            raise RealtimeError(f"No assistant audio item {item_id!r} in this conversation (recent ones only).",
                                "item_not_found", param="item_id", event_id=event_id)
        if audio_end_ms > sent:
            raise RealtimeError(f"audio_end_ms {audio_end_ms} is past the {sent} ms of audio sent for {item_id}.",
                                "invalid_value", param="audio_end_ms", event_id=event_id)
        return {"type": "conversation.item.truncated", "event_id": new_id("event"), "item_id": item_id,
                "content_index": 0, "audio_end_ms": int(audio_end_ms)}

    def cancel(self, reason: str = "client_cancelled") -> list[dict[str, Any]]:
        """Close the open response (response.cancel, or the end of the connection)."""
        if not self.segmenter.cancel() or self.response_id is None:
            return []
        return self._close("cancelled", reason)

    # input ---------------------------------------------------------------------------------------------
    def committed(self, item_id: str) -> list[dict[str, Any]]:
        """``input_audio_buffer.committed`` and the user audio item it adds to the conversation."""
        previous, self.last_item_id = self.last_item_id, item_id
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}
        return [{"type": "input_audio_buffer.committed", "event_id": new_id("event"), "item_id": item_id,
                 "previous_item_id": previous},
                *({"type": f"conversation.item.{phase}", "event_id": new_id("event"), "previous_item_id": previous,
                   "item": item} for phase in ("added", "done"))]

    @staticmethod
    def cleared() -> dict[str, Any]:
        return {"type": "input_audio_buffer.cleared", "event_id": new_id("event")}

    @staticmethod
    def speech_started(item_id: str, audio_start_ms: int) -> dict[str, Any]:
        return {"type": "input_audio_buffer.speech_started", "event_id": new_id("event"), "item_id": item_id,
                "audio_start_ms": int(audio_start_ms)}

    @staticmethod
    def speech_stopped(item_id: str, audio_end_ms: int) -> dict[str, Any]:
        return {"type": "input_audio_buffer.speech_stopped", "event_id": new_id("event"), "item_id": item_id,
                "audio_end_ms": int(audio_end_ms)}

    def user_text_item(self, item_id: str, text: str) -> list[dict[str, Any]]:
        """``conversation.item.added`` + ``conversation.item.done`` for a typed user message."""
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_text", "text": text}]}
        previous, self.last_item_id = self.last_item_id, item_id
        return [{"type": kind, "event_id": new_id("event"), "previous_item_id": previous, "item": item}
                for kind in ("conversation.item.added", "conversation.item.done")]

    @staticmethod
    def extension(event: dict[str, Any]) -> dict[str, Any]:
        """One of hybrid mode's own events, namespaced for Realtime clients (``bizra.<type>``)."""
        return {**event, "type": f"bizra.{event['type']}", "event_id": new_id("event")}

    @staticmethod
    def transcription_completed(item_id: str, transcript: str, seconds: float) -> dict[str, Any]:
        return {"type": "conversation.item.input_audio_transcription.completed", "event_id": new_id("event"),
                "item_id": item_id, "content_index": 0, "transcript": transcript,
                "usage": {"type": "duration", "seconds": round(float(seconds), 3)}}

    @staticmethod
    def transcription_failed(item_id: str, message: str) -> dict[str, Any]:
        return {"type": "conversation.item.input_audio_transcription.failed", "event_id": new_id("event"),
                "item_id": item_id, "content_index": 0,
                "error": {"type": "transcription_error", "code": "transcription_failed", "message": message}}
