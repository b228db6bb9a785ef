"""``response.create`` in a full-duplex model: its parameters are honoured or refused, never dropped.

GA shape (``openai.types.realtime.RealtimeResponseCreateParams``): ``metadata``, ``instructions``,
``output_modalities`` (beta: ``modalities``), ``conversation``, ``input``, ``audio.output.{voice,format}``,
``max_output_tokens``, ``tools``, ``tool_choice``, ``prompt``, ``reasoning``, ``parallel_tool_calls``.
PersonaPlex's persona, voice and formats are prefilled into the model's session (the persona and voice
change for the whole session with ``session.update``, live) and it always answers in audio (with its
transcript) inside the one conversation, so:

- honoured: ``metadata`` (echoed on ``response.created`` and ``response.done``); values that restate the
  session (``instructions`` equal to the session's, ``output_modalities`` with ``audio``, ``conversation``
  ``auto``, the session's voice and output format, ``max_output_tokens`` ``inf``, no tools, ``tool_choice``
  ``auto``/``none``: the session's functions and their choice are set with ``session.update``), and nulls;
- refused with an ``error`` naming the request's ``event_id`` and the parameter (``response.<name>``):
  anything else - per-response instructions, text-only output, out-of-band responses (``conversation``
  ``none``, ``input``), another voice or format, a token limit, tools, prompts, reasoning. The response
  is then not created; unknown parameters are refused the same way (``unknown_parameter``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from bizra_voice.realtime.errors import RealtimeError

MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _OutputAudio(_Strict):
    format: dict[str, Any] | None = None
    voice: str | dict[str, str] | None = None


class _ResponseAudio(_Strict):
    output: _OutputAudio | None = None


class ResponseCreateParams(_Strict):
    """The ``response`` object of a ``response.create`` (shape only; ``check_response`` decides)."""

    audio: _ResponseAudio | None = None
    conversation: str | None = None
    input: list[Any] | None = None
    instructions: str | None = None
    max_output_tokens: int | Literal["inf"] | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    output_modalities: list[Literal["text", "audio"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None  # the beta protocol's name
    parallel_tool_calls: bool | None = None
    prompt: Any = None
    reasoning: Any = None
    tool_choice: str | dict[str, Any] | None = None
    tools: list[Any] | None = None


@dataclass(frozen=True)
class ResponseRequest:
    """An accepted ``response.create``: what the response it opens carries."""

    event_id: str | None
    metadata: dict[str, str] | None = None


def parse_response_params(raw: Any, event_id: str | None) -> ResponseCreateParams:
    """The event's ``response`` (absent or null = all defaults); RealtimeError names the first bad field."""
    if raw is None:
        return ResponseCreateParams()
    if not isinstance(raw, dict):
        raise RealtimeError("`response` must be an object.", "invalid_value", param="response", event_id=event_id)
    try:
        return ResponseCreateParams.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(["response", *_input_path(raw, first["loc"])])
        if first["type"] == "extra_forbidden":
            raise RealtimeError(f"Unknown parameter: '{path}'.", "unknown_parameter", param=path,
                                event_id=event_id) from None
        raise RealtimeError(f"Invalid value for '{path}': {first['msg']}.", "invalid_value", param=path,
                            event_id=event_id) from None


def _input_path(raw: Any, loc: tuple[Any, ...]) -> list[str]:
    """The parts of a validation error's location that are in the input (not pydantic's union tags)."""
    path, node = [], raw
    for part in loc:
        found = part in node if isinstance(node, dict) else (
            isinstance(node, list) and isinstance(part, int) and part < len(node))
        if not found:
            break
        node = node[part]
        path.append(str(part))
    return path


def check_response(params: ResponseCreateParams, *, event_id: str | None, instructions: str, voice: str,
                   output_format: str, conversation_id: str,
                   resolve_voice: Callable[..., str]) -> ResponseRequest:
    """Honour ``params`` in this session or refuse them (RealtimeError with ``response.<param>``)."""
    def refuse(param: str, why: str) -> RealtimeError:
        return RealtimeError(f"response.{param} cannot be honoured: {why}. The response was not created.",
                             "unsupported_parameter", param=f"response.{param}", event_id=event_id)

    if params.instructions is not None and params.instructions != instructions:
        raise refuse("instructions", "PersonaPlex's persona is prefilled into the model's context and cannot "
                                     "change per response; change session.instructions with session.update "
                                     "(applied live, for the rest of the session)")
    for name in ("output_modalities", "modalities"):
        modalities = getattr(params, name)
        if modalities is not None and "audio" not in modalities:
            raise refuse(name, "PersonaPlex always answers in audio (with its transcript): use ['audio']")
    if params.conversation not in (None, "auto", conversation_id):
        raise refuse("conversation", "every response of a full-duplex model belongs to its one conversation "
                                     "(out-of-band responses are not possible): use 'auto'")
    if params.input is not None:
        raise refuse("input", "the model's context is the conversation it heard; it cannot answer another one")
    output = params.audio.output if params.audio is not None else None
    if output is not None and output.voice is not None:
        asked = output.voice.get("id", "") if isinstance(output.voice, dict) else output.voice
        if resolve_voice(asked, param="response.audio.output.voice", event_id=event_id) != voice:
            raise refuse("audio.output.voice", "the voice is prefilled into the model's context and cannot "
                                               "change per response; change session.audio.output.voice with "
                                               "session.update (applied live)")
    if output is not None and output.format is not None and output.format.get("type") != output_format:
        raise refuse("audio.output.format", f"the session's output format is {output_format}")
    if params.max_output_tokens not in (None, "inf"):
        raise refuse("max_output_tokens", "the model decides how long it speaks; use 'inf'")
    if params.tools:
        raise refuse("tools", "the session's functions are declared with session.update (session.tools); a "
                              "per-response tool list is not supported")
    if params.tool_choice not in (None, "auto", "none"):
        raise refuse("tool_choice", "set it for the session with session.update (session.tool_choice)")
    for name in ("prompt", "reasoning", "parallel_tool_calls"):
        if getattr(params, name) is not None:
            raise refuse(name, "not supported by PersonaPlex")
    return ResponseRequest(event_id=event_id, metadata=None if params.metadata is None else dict(params.metadata))
