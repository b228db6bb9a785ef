"""Client events of ``/v1/realtime``: one WebSocket text message -> a checked ``ClientEvent``.

Served: ``session.update``, ``input_audio_buffer.append`` / ``commit`` / ``clear``, ``response.create``
(its parameters: ``response_create.py``), ``response.cancel``, ``conversation.item.create`` of a user
message with ``input_text`` (a typed question for hybrid mode) or of a ``function_call_output`` (the
client's answer to a call of its function: ``function_calls.py``) and ``conversation.item.truncate``.
Anything else is refused with a recoverable ``error`` that names the client's ``event_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from bizra_voice import constants as C
from bizra_voice.realtime.audio_formats import decode_base64_audio, parse_format
from bizra_voice.realtime.errors import RealtimeError
from bizra_voice.realtime.function_calls import (
    FunctionOutput,
    FunctionTool,
    parse_function_output,
    parse_tool_choice,
    parse_tools,
)
from bizra_voice.realtime.response_create import ResponseCreateParams, parse_response_params
from bizra_voice.session_params import normalize_voice

MAX_EVENT_BYTES = 15 * 1024 * 1024  # OpenAI's limit for one input_audio_buffer.append
MODES = ("standalone", "hybrid", "auto")
MAX_ID_CHARS = 64


@dataclass(frozen=True)
class SessionChanges:
    """What a ``session.update`` asks for (None = unchanged)."""

    instructions: str | None = None
    voice: str | None = None  # as the client named it (an OpenAI name or a catalog voice)
    mode: str | None = None
    record: bool | None = None
    transcription: bool | None = None  # audio.input.transcription set (True) or null (False)
    input_format: str | None = None
    output_format: str | None = None
    tools: tuple[FunctionTool, ...] | None = None  # the client's functions (hybrid mode's knowledge model)
    tool_choice: str | dict[str, str] | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class ClientEvent:
    kind: Literal["session.update", "append", "commit", "clear", "response.create", "response.cancel",
                  "item.create", "function_output", "item.truncate"]
    event_id: str | None = None
    changes: SessionChanges | None = None
    audio: bytes | None = None  # append: the audio bytes, in the session's input format
    response: ResponseCreateParams | None = None  # response.create: its parameters (checked for shape)
    response_id: str | None = None  # response.cancel: the response named, if any
    text: str | None = None  # item.create: the user's typed message
    item_id: str | None = None  # item.create: the client's item id, if it chose one; item.truncate: the item
    audio_end_ms: int | None = None  # item.truncate: how much of the item's audio the user heard
    function_output: FunctionOutput | None = None  # function_output: the client's output for a call


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS


def _session_changes(session: Any, event_id: str | None) -> SessionChanges:
    def bad(message: str, param: str, code: str = "invalid_value") -> RealtimeError:
        return RealtimeError(message, code, param=param, event_id=event_id)

    if not isinstance(session, dict):
        raise bad("session.update needs a `session` object.", "session")
    if session.get("type", "realtime") != "realtime":
        raise bad("Only realtime sessions are served here (not transcription sessions).", "session.type")
    instructions = session.get("instructions")
    if instructions is not None and (not isinstance(instructions, str) or len(instructions) > C.MAX_PROMPT_CHARS
                                     or "\x00" in instructions):
        raise bad(f"`instructions` must be text of at most {C.MAX_PROMPT_CHARS} characters.",
                  "session.instructions")
    audio = session.get("audio") or {}
    if not isinstance(audio, dict):
        raise bad("`audio` must be an object.", "session.audio")
    audio_in = audio.get("input") or {}
    audio_out = audio.get("output") or {}
    voice = audio_out.get("voice")
    if voice is not None:
        if isinstance(voice, dict):
            voice = voice.get("id")
        try:
            voice = normalize_voice(str(voice))
        except ValueError as exc:
            raise bad(str(exc), "session.audio.output.voice") from None
    mode = session.get("mode")
    if mode is not None and mode not in MODES:
        raise bad(f"`mode` must be one of {', '.join(MODES)}.", "session.mode")
    record = session.get("record")
    if record is not None and not isinstance(record, bool):
        raise bad("`record` must be true or false.", "session.record")
    transcription = audio_in["transcription"] is not None if "transcription" in audio_in else None
    tools = parse_tools(session["tools"], event_id) if session.get("tools") is not None else None
    choice = parse_tool_choice(session["tool_choice"], event_id) if session.get("tool_choice") is not None \
        else None
    return SessionChanges(instructions=instructions, voice=voice, mode=mode, record=record,
                          transcription=transcription, tools=tools, tool_choice=choice,
                          input_format=parse_format(audio_in.get("format"), "audio.input", event_id),
                          output_format=parse_format(audio_out.get("format"), "audio.output", event_id),
                          event_id=event_id)


def parse_session_config(session: Any) -> SessionChanges:
    """A session config given outside an event (a WebRTC call's ``session`` part), checked like
    ``session.update``'s."""
    return _session_changes(session, None)


def _user_text_item(item: Any, event_id: str | None) -> tuple[str, str | None]:
    """A ``conversation.item.create`` item -> (text, item id); only user messages of input_text are served."""
    def bad(message: str, param: str = "item", code: str = "invalid_value") -> RealtimeError:
        return RealtimeError(message, code, param=param, event_id=event_id)

    if not isinstance(item, dict):
        raise bad("conversation.item.create needs an `item` object.")
    if item.get("type") != "message" or item.get("role") != "user":
        raise bad("Only user messages and function_call_output items can be added here (PersonaPlex speaks "
                  "for itself, and the model makes its own function calls): item.type 'message' with "
                  "item.role 'user', or 'function_call_output'.", "item.type", "unsupported_item")
    content = item.get("content")
    if not isinstance(content, list) or not content or not all(isinstance(c, dict) for c in content):
        raise bad("item.content must be a non-empty list of content parts.", "item.content")
    if any(c.get("type") != "input_text" for c in content):
        raise bad("Only input_text content is accepted in conversation.item.create (send speech with "
                  "input_audio_buffer.append).", "item.content", "unsupported_content")
    if any(not isinstance(c.get("text"), str) for c in content):
        raise bad("Each input_text part needs a `text` string.", "item.content")
    text = " ".join(" ".join(c["text"] for c in content).split())
    if not text or len(text) > C.MAX_TYPED_CHARS or "\x00" in text:
        raise bad(f"The message must be non-empty text of at most {C.MAX_TYPED_CHARS} characters.",
                  "item.content")
    item_id = item.get("id")
    if item_id is not None and not _is_id(item_id):
        raise bad(f"item.id must be a string of at most {MAX_ID_CHARS} characters.", "item.id")
    return text, item_id


def _truncate(event: dict[str, Any], event_id: str | None) -> ClientEvent:
    item_id, end_ms, index = event.get("item_id"), event.get("audio_end_ms"), event.get("content_index", 0)
    for name, ok in (("item_id", _is_id(item_id)),
                     ("audio_end_ms", isinstance(end_ms, int) and not isinstance(end_ms, bool) and end_ms >= 0),
                     ("content_index", index == 0)):
        if not ok:
            raise RealtimeError(f"conversation.item.truncate needs `item_id`, `audio_end_ms` >= 0 and "
                                f"`content_index` 0 (assistant items have one audio part); bad `{name}`.",
                                "invalid_value", param=name, event_id=event_id)
    return ClientEvent("item.truncate", event_id, item_id=item_id, audio_end_ms=end_ms)


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
        return ClientEvent("response.create", event_id, response=parse_response_params(event.get("response"),
                                                                                       event_id))
    if kind == "response.cancel":
        response_id = event.get("response_id")
        if response_id is not None and not _is_id(response_id):
            raise RealtimeError("`response_id` must be a response id.", "invalid_value", param="response_id",
                                event_id=event_id)
        return ClientEvent("response.cancel", event_id, response_id=response_id)
    if kind == "conversation.item.create":
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            return ClientEvent("function_output", event_id,
                               function_output=parse_function_output(item, event_id, MAX_ID_CHARS))
        text, item_id = _user_text_item(item, event_id)
        return ClientEvent("item.create", event_id, text=text, item_id=item_id)
    if kind == "conversation.item.truncate":
        return _truncate(event, event_id)
    if kind == "conversation.item.delete":
        raise RealtimeError("conversation.item.delete is not supported: PersonaPlex cannot take back what it "
                            "heard or said (conversation.item.truncate records what the user heard).",
                            "unsupported_event", param="type", event_id=event_id)
    raise RealtimeError(f"Unsupported event type {str(kind)[:64]!r}: this server handles session.update, "
                        "input_audio_buffer.append/commit/clear, response.create/cancel, "
                        "conversation.item.create (user text, function_call_output) and conversation.item.truncate.", "unknown_event",
                        param="type", event_id=event_id)
