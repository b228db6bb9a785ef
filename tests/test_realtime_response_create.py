"""``response.create`` on a full-duplex model: parameters honoured (metadata echoed) or refused with the
request's event_id and the parameter's path; a requested response opens at once."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bizra_voice.constants import FRAME_SIZE, PRESET_VOICES
from bizra_voice.realtime import (
    Conversation,
    RealtimeError,
    RealtimeSettings,
    ResponseStream,
    SegmenterConfig,
    SessionState,
    parse_client_event,
)
from bizra_voice.realtime.response_create import check_response
from bizra_voice.realtime.voices import DEFAULT_VOICE_TABLE, VoiceMap

SILENCE = np.zeros(FRAME_SIZE, np.float32)
LOUD = (0.3 * np.sin(np.arange(FRAME_SIZE) / 5.0)).astype(np.float32)


def stream(segmenter: SegmenterConfig | None = None) -> ResponseStream:
    state = SessionState(RealtimeSettings(instructions="You are terse.", voice="marin"),
                         VoiceMap(DEFAULT_VOICE_TABLE, PRESET_VOICES))
    state.resolve_initial_voice()
    return ResponseStream(state, Conversation(), segmenter)


def create(responses: ResponseStream, response=None, event_id: str = "evt_c", **extra):
    """Parse and check one response.create as the connection does; returns its events."""
    event = parse_client_event(json.dumps({"type": "response.create", "event_id": event_id,
                                           **({} if response is None else {"response": response}), **extra}))
    s = responses.state.settings
    request = check_response(event.response, event_id=event.event_id, instructions=s.instructions,
                             voice=s.engine_voice, output_format=s.output_format,
                             conversation_id=responses.state.conversation_id,
                             resolve_voice=responses.state.resolve_voice)
    return responses.request(request)


def test_livekits_generate_reply_gets_its_metadata_back_on_created_and_done():
    """LiveKit's plugin sends response.create with metadata.client_event_id (and instructions null) and
    waits for response.created to carry it; GA also returns it on response.done."""
    from livekit.agents.llm._realtime.openai import RealtimeResponseCreateParams, ResponseCreateEvent
    from openai.types.realtime import ResponseCreatedEvent, ResponseDoneEvent

    sent = ResponseCreateEvent(type="response.create", event_id="response_create_abc", response=RealtimeResponseCreateParams(
        instructions=None, metadata={"client_event_id": "response_create_abc"}))
    wire = sent.model_dump(by_alias=True, exclude_unset=True, exclude_defaults=False)
    responses = stream(SegmenterConfig(end_silence_frames=2, reply_wait_frames=3))
    events = create(responses, wire["response"], event_id=wire["event_id"])
    created = ResponseCreatedEvent.model_validate(events[0])
    assert created.response.metadata == {"client_event_id": "response_create_abc"}
    assert [e["type"] for e in events] == ["response.created", "response.output_item.added",
                                           "conversation.item.added", "response.content_part.added"]
    tail = [e for pcm, text in ((LOUD, " hi"), (SILENCE, ""), (SILENCE, "")) for e in responses.on_frame(pcm, text)]
    done = ResponseDoneEvent.model_validate(tail[-1])
    assert done.response.id == created.response.id and done.response.status == "completed"
    assert done.response.metadata == {"client_event_id": "response_create_abc"}
    nxt = [e for _ in range(3) for e in responses.on_frame(LOUD, " more")]  # the model's own next response
    assert nxt[0]["type"] == "response.created" and nxt[0]["response"]["metadata"] is None


def test_a_requested_response_opens_at_once_and_waits_for_the_model_to_speak():
    responses = stream(SegmenterConfig(end_silence_frames=2, reply_wait_frames=4))
    opened = create(responses, {"metadata": {"turn": "1"}, "output_modalities": ["audio"],
                                "conversation": "auto", "instructions": "You are terse.",
                                "audio": {"output": {"voice": "NATF2", "format": {"type": "audio/pcm"}}},
                                "max_output_tokens": "inf", "tools": [], "tool_choice": "auto"})
    assert opened[0]["type"] == "response.created"  # restating the session is honoured
    steps = [responses.on_frame(SILENCE, "") for _ in range(4)]  # the model stays silent
    assert [bool(s) and s[-1]["type"] for s in steps] == ["response.output_audio.delta"] * 3 + ["response.done"]
    assert steps[-1][-1]["response"]["output"][0]["content"][0]["transcript"] == ""
    assert responses.on_frame(SILENCE, "") == []  # closed: silence is not sent


def test_response_create_while_the_model_speaks_starts_a_new_response_there():
    responses = stream()
    first = responses.on_frame(LOUD, " so")
    first_id = first[0]["response"]["id"]
    events = create(responses, {"metadata": {"k": "v"}})
    kinds = [e["type"] for e in events]
    assert kinds[:7] == ["response.output_audio.done", "response.output_audio_transcript.done",
                         "response.content_part.done", "response.output_item.done", "conversation.item.done",
                         "response.done", "response.created"]
    assert events[5]["response"]["id"] == first_id and events[5]["response"]["status"] == "completed"
    assert events[6]["response"]["metadata"] == {"k": "v"} and events[6]["response"]["id"] != first_id
    again = responses.on_frame(LOUD, " on")  # the model's speech goes on in the new response
    assert again[0]["response_id"] == events[6]["response"]["id"]
    added = [e for e in events if e["type"] == "conversation.item.added"][0]
    assert added["previous_item_id"] == first[1]["item"]["id"]  # the conversation stays in order


@pytest.mark.parametrize("response, param, code", [
    ({"instructions": "Speak like a pirate."}, "response.instructions", "unsupported_parameter"),
    ({"output_modalities": ["text"]}, "response.output_modalities", "unsupported_parameter"),
    ({"modalities": ["text"]}, "response.modalities", "unsupported_parameter"),
    ({"conversation": "none"}, "response.conversation", "unsupported_parameter"),
    ({"input": []}, "response.input", "unsupported_parameter"),
    ({"audio": {"output": {"voice": "cedar"}}}, "response.audio.output.voice", "unsupported_parameter"),
    ({"audio": {"output": {"voice": "NOPE"}}}, "response.audio.output.voice", "invalid_value"),
    ({"audio": {"output": {"format": {"type": "audio/pcmu"}}}}, "response.audio.output.format",
     "unsupported_parameter"),
    ({"max_output_tokens": 40}, "response.max_output_tokens", "unsupported_parameter"),
    ({"tools": [{"type": "function", "name": "f"}]}, "response.tools", "unsupported_parameter"),
    ({"tool_choice": "required"}, "response.tool_choice", "unsupported_parameter"),
    ({"reasoning": {"effort": "low"}}, "response.reasoning", "unsupported_parameter"),
    ({"temperature": 0.8}, "response.temperature", "unknown_parameter"),
    ({"metadata": {"k": 3}}, "response.metadata.k", "invalid_value"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "response.metadata", "invalid_value"),
    ({"metadata": {"k": "v" * 513}}, "response.metadata.k", "invalid_value"),
    ({"max_output_tokens": "40"}, "response.max_output_tokens", "invalid_value"),
    ("go", "response", "invalid_value"),
])
def test_what_cannot_be_honoured_is_refused_with_the_event_id(response, param, code):
    responses = stream()
    speaking = responses.on_frame(LOUD, " so")
    with pytest.raises(RealtimeError) as err:
        create(responses, response, event_id="evt_refused")
    assert (err.value.param, err.value.code, err.value.event_id) == (param, code, "evt_refused")
    assert err.value.event()["error"]["event_id"] == "evt_refused"
    # nothing was opened or closed: the model's response goes on
    assert responses.response_id == speaking[0]["response"]["id"]


def test_a_bare_response_create_is_honoured():
    responses = stream()
    events = create(responses)
    assert events[0]["type"] == "response.created" and events[0]["response"]["metadata"] is None
    kinds = [e["type"] for e in create(responses, None)]  # a second one closes the first, opens another
    assert kinds.index("response.done") < kinds.index("response.created")
