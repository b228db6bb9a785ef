"""The pure OpenAI Realtime protocol: event parsing, PCM16 codec, response segmentation, event shapes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from bizra_voice.constants import FRAME_SIZE, PRESET_VOICES
from bizra_voice.realtime import (
    AudioCodec,
    Conversation,
    LiveChange,
    RealtimeError,
    RealtimeSettings,
    ResponseSegmenter,
    ResponseStream,
    SegmenterConfig,
    SessionState,
    decode_pcm16,
    encode_pcm16,
    parse_client_event,
)
from bizra_voice.realtime import server_events as E
from bizra_voice.realtime.voices import DEFAULT_VOICE_TABLE, VoiceMap

SILENCE = np.zeros(FRAME_SIZE, np.float32)
LOUD = (0.3 * np.sin(np.arange(FRAME_SIZE) / 5.0)).astype(np.float32)


def ev(**event) -> str:
    return json.dumps(event)


def session(segmenter: SegmenterConfig | None = None, catalog=PRESET_VOICES, **settings):
    """A session's protocol state as one connection holds it: settings (voices resolved against a catalog
    of the 18 presets), the conversation and the response stream."""
    state = SessionState(RealtimeSettings(**settings), VoiceMap(DEFAULT_VOICE_TABLE, catalog))
    if state.settings.voice:
        state.resolve_initial_voice()
    return state, ResponseStream(state, Conversation(), segmenter)


def apply(state: SessionState, event: str):
    """A session.update that needs no engine work: planned and committed at once."""
    update = state.plan(parse_client_event(event).changes)
    assert update.live is None, update
    state.commit(update)
    return update


def test_pcm16_round_trip_and_validation():
    pcm = np.linspace(-1.0, 1.0, 480, dtype=np.float32)
    back = decode_pcm16(encode_pcm16(pcm))
    assert back.dtype == np.float32 and back.shape == pcm.shape
    assert np.abs(back - pcm).max() < 1e-4
    with pytest.raises(RealtimeError) as err:
        decode_pcm16("not base64!!")
    assert err.value.code == "invalid_value"
    with pytest.raises(RealtimeError):
        decode_pcm16(base64.b64encode(b"\x00\x01\x02").decode())  # odd byte count
    with pytest.raises(RealtimeError):
        decode_pcm16(123)


def test_parse_session_update_maps_instructions_voice_mode():
    event = parse_client_event(ev(type="session.update", event_id="e1", session={
        "type": "realtime", "instructions": "You are a pirate.", "mode": "hybrid", "record": True,
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": "whisper"}},
                  "output": {"voice": "NATF2.pt"}}}))
    assert event.kind == "session.update" and event.event_id == "e1"
    c = event.changes
    assert (c.instructions, c.voice, c.mode, c.record, c.transcription) == (
        "You are a pirate.", "NATF2", "hybrid", True, True)


@pytest.mark.parametrize("session, code", [
    ({"type": "realtime", "audio": {"output": {"voice": "../../etc/passwd"}}}, "invalid_value"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/g729"}}}}, "unsupported_audio_format"),
    ({"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
     "unsupported_audio_format"),
    ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu", "rate": 24000}}}},
     "unsupported_audio_format"),
    ({"type": "realtime", "audio": {"output": {"format": "pcm16"}}}, "unsupported_audio_format"),
    ({"type": "realtime", "mode": "turbo"}, "invalid_value"),
    ({"type": "transcription"}, "invalid_value"),
    ({"type": "realtime", "instructions": "x" * 5000}, "invalid_value"),
])
def test_parse_session_update_rejects(session, code):
    with pytest.raises(RealtimeError) as err:
        parse_client_event(ev(type="session.update", event_id="bad", session=session))
    assert err.value.code == code and err.value.event_id == "bad"


def test_parse_other_events():
    pcm = np.full(960, 0.25, np.float32)
    append = parse_client_event(ev(type="input_audio_buffer.append", audio=encode_pcm16(pcm)))
    assert append.kind == "append" and len(append.audio) == 2 * 960
    decoded = AudioCodec().decode(append.audio)
    assert decoded.size == 960 and abs(float(decoded[0]) - 0.25) < 1e-3
    with pytest.raises(RealtimeError):
        AudioCodec().decode(b"\x00\x01\x02")  # a torn 16-bit sample
    for kind, expected in (("input_audio_buffer.commit", "commit"), ("input_audio_buffer.clear", "clear"),
                           ("response.create", "response.create"), ("response.cancel", "response.cancel")):
        assert parse_client_event(ev(type=kind)).kind == expected
    for raw, code in ((ev(type="conversation.item.retrieve"), "unknown_event"), ("{nope", "invalid_json"),
                      ("[1, 2]", "invalid_json"), (ev(type="conversation.item.delete", item_id="i"),
                                                   "unsupported_event")):
        with pytest.raises(RealtimeError) as err:
            parse_client_event(raw)
        assert err.value.code == code


def user_item(*parts, **extra):
    return ev(type="conversation.item.create", event_id="evt_1", item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": t} for t in parts], **extra})


def test_parse_typed_user_message():
    event = parse_client_event(user_item("What is  the", "capital of France?", id="item_mine"))
    assert event.kind == "item.create" and event.text == "What is the capital of France?"
    assert event.item_id == "item_mine" and event.event_id == "evt_1"
    assert parse_client_event(user_item("Hi")).item_id is None


@pytest.mark.parametrize("item, code, param", [
    (None, "invalid_value", "item"),
    ({"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "x"}]},
     "unsupported_item", "item.type"),
    ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}, "unsupported_item", "item.type"),
    ({"type": "message", "role": "user", "content": []}, "invalid_value", "item.content"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAA"}]},
     "unsupported_content", "item.content"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": 3}]}, "invalid_value",
     "item.content"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "   "}]}, "invalid_value",
     "item.content"),
    ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a " * 1500}]},
     "invalid_value", "item.content"),
    ({"type": "message", "role": "user", "id": "x" * 65, "content": [{"type": "input_text", "text": "a"}]},
     "invalid_value", "item.id"),
])
def test_parse_typed_user_message_rejects(item, code, param):
    with pytest.raises(RealtimeError) as err:
        parse_client_event(ev(type="conversation.item.create", event_id="evt_2", item=item))
    assert (err.value.code, err.value.param, err.value.event_id) == (code, param, "evt_2")


def test_typed_item_and_extension_events_parse_with_the_openai_types():
    from openai.types.realtime import (
        ConversationItemAdded,
        ConversationItemDone,
        RealtimeConversationItemUserMessage,
    )

    conversation = Conversation()
    committed = conversation.committed("item_audio")[0]
    added, done = conversation.user_text_item("item_typed", "What is the capital of France?")
    assert committed["previous_item_id"] is None and added["previous_item_id"] == "item_audio"
    for event, model in ((added, ConversationItemAdded), (done, ConversationItemDone)):
        parsed = model.model_validate(event)
        assert isinstance(parsed.item, RealtimeConversationItemUserMessage)
        assert parsed.item.id == "item_typed" and parsed.item.content[0].text == "What is the capital of France?"
    assert conversation.committed("item_next")[0]["previous_item_id"] == "item_typed"
    ext = E.extension({"type": "router.decision", "mode": "hybrid", "reason": "r"})
    assert ext["type"] == "bizra.router.decision" and ext["mode"] == "hybrid" and ext["event_id"]


def test_segmenter_opens_on_speech_and_closes_after_silence():
    seg = ResponseSegmenter(SegmenterConfig(end_silence_frames=3))
    assert seg.step("", SILENCE).in_response is False
    first = seg.step(" hello", SILENCE)
    assert first.started and first.in_response
    assert seg.step("", LOUD).in_response  # loud audio without text keeps it open
    steps = [seg.step("", SILENCE) for _ in range(3)]
    assert [s.in_response for s in steps] == [True, True, True]
    assert [s.ended for s in steps] == [False, False, True]
    assert seg.step("", SILENCE).in_response is False
    assert seg.step("", LOUD).started  # energy alone also opens one
    assert seg.cancel() is True and seg.cancel() is False


def test_protocol_builds_ga_events_for_one_response():
    state, proto = session(SegmenterConfig(end_silence_frames=2), instructions="Be brief.", voice="NATM1")
    created = state.created()
    assert created["type"] == "session.created"
    assert created["session"]["instructions"] == "Be brief."
    assert created["session"]["audio"]["output"]["voice"] == "NATM1"
    assert created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert proto.on_frame(SILENCE, "") == []
    events = proto.on_frame(LOUD, " Hi")
    assert [e["type"] for e in events] == ["response.created", "response.output_item.added",
                                           "conversation.item.added", "response.content_part.added",
                                           "response.output_audio.delta", "response.output_audio_transcript.delta"]
    response_id = events[0]["response"]["id"]
    assert events[0]["response"]["status"] == "in_progress"
    item_id = events[1]["item"]["id"]
    assert events[1]["item"]["role"] == "assistant" and events[1]["item"]["status"] == "in_progress"
    assert events[2]["item"] == events[1]["item"] and events[2]["previous_item_id"] is None
    delta = events[4]
    assert delta["response_id"] == response_id and delta["output_index"] == 0 and delta["content_index"] == 0
    assert delta["item_id"] == item_id and decode_pcm16(delta["delta"]).size == FRAME_SIZE
    assert events[5]["delta"] == " Hi"
    proto.on_frame(LOUD, " there")
    proto.on_frame(SILENCE, "")
    tail = proto.on_frame(SILENCE, "")
    assert [e["type"] for e in tail] == ["response.output_audio.delta", "response.output_audio.done",
                                         "response.output_audio_transcript.done", "response.content_part.done",
                                         "response.output_item.done", "conversation.item.done", "response.done"]
    assert tail[2]["transcript"] == " Hi there" and tail[3]["part"] == {"type": "audio", "transcript": " Hi there"}
    assert tail[4]["item"]["status"] == "completed" and tail[5]["item"]["id"] == item_id
    done = tail[6]["response"]
    assert done["id"] == response_id and done["status"] == "completed"
    assert done["output"][0]["content"][0] == {"type": "output_audio", "transcript": " Hi there"}
    assert proto.cancel() == []  # nothing open any more
    # the next user turn follows the assistant's item in the conversation
    committed, added, item_done = proto.conversation.committed("item_user")
    assert committed["previous_item_id"] == item_id == added["previous_item_id"]
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}] and item_done["item"] == added["item"]


def test_protocol_events_parse_with_the_openai_types():
    """Our server events construct the openai package's own GA models with their fields intact."""
    from openai.types.realtime import (
        ConversationItemAdded,
        ConversationItemDone,
        ConversationItemInputAudioTranscriptionCompletedEvent,
        InputAudioBufferCommittedEvent,
        RealtimeErrorEvent,
        ResponseAudioDeltaEvent,
        ResponseContentPartAddedEvent,
        ResponseContentPartDoneEvent,
        ResponseDoneEvent,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
        SessionUpdatedEvent,
    )

    from bizra_voice.realtime import error_event

    state, proto = session(SegmenterConfig(end_silence_frames=1), voice="NATF0")
    events = proto.on_frame(LOUD, " a") + proto.on_frame(SILENCE, "")
    by_type = {e["type"]: e for e in events}
    for kind, model in (("response.output_item.added", ResponseOutputItemAddedEvent),
                        ("response.output_item.done", ResponseOutputItemDoneEvent),
                        ("response.content_part.added", ResponseContentPartAddedEvent),
                        ("response.content_part.done", ResponseContentPartDoneEvent),
                        ("conversation.item.added", ConversationItemAdded),
                        ("conversation.item.done", ConversationItemDone)):
        assert model.model_validate(by_type[kind]).type == kind
    assert ResponseOutputItemDoneEvent.model_validate(by_type["response.output_item.done"]).item.content[0].transcript == " a"
    committed, added, _ = proto.conversation.committed("item_u")
    assert InputAudioBufferCommittedEvent.model_validate(committed).previous_item_id == by_type[
        "conversation.item.added"]["item"]["id"]
    assert ConversationItemAdded.model_validate(added).item.role == "user"
    delta = ResponseAudioDeltaEvent.model_validate(by_type["response.output_audio.delta"])
    assert delta.response_id == by_type["response.created"]["response"]["id"]
    done = ResponseDoneEvent.model_validate(by_type["response.done"])
    assert done.response.status == "completed"
    SessionUpdatedEvent.model_validate(state.updated())
    t = ConversationItemInputAudioTranscriptionCompletedEvent.model_validate(
        E.transcription_completed("item_1", "hello", 1.5))
    assert t.transcript == "hello" and t.usage.seconds == 1.5
    err = RealtimeErrorEvent.model_validate(error_event("full", "server_at_capacity", error_type="server_error"))
    assert err.error.code == "server_at_capacity"


def test_after_start_mode_record_formats_are_locked_and_persona_and_voice_change_live():
    state, proto = session(instructions="A", voice="NATM1")
    apply(state, ev(type="session.update", session={"type": "realtime", "instructions": "B"}))
    assert state.settings.instructions == "B"
    state.start()
    apply(state, ev(type="session.update", session={"type": "realtime", "instructions": "B"}))  # unchanged: fine
    apply(state, ev(type="session.update", session={"type": "realtime", "audio": {"output": {"voice": "cedar"}}}))
    assert (state.settings.voice, state.settings.engine_voice) == ("cedar", "NATM1")  # the same engine voice
    for session_change, param in (({"mode": "standalone"}, "session.mode"), ({"record": True}, "session.record"),
                                  ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
                                   "session.audio.input.format"),
                                  ({"instructions": "C", "mode": "hybrid"}, "session.mode")):
        with pytest.raises(RealtimeError) as err:
            state.plan(parse_client_event(ev(type="session.update", event_id="x", session={
                "type": "realtime", **session_change})).changes)
        assert (err.value.code, err.value.param, err.value.event_id) == ("session_locked", param, "x")
        assert "instructions" in err.value.message  # says what can change live
    assert state.settings.instructions == "B"  # a refused update changes nothing, its live part included

    # a persona and/or voice change is planned as a live change, and nothing is committed before it applies
    for session_change, live in (({"instructions": "C"}, LiveChange(instructions="C", event_id="y")),
                                 ({"audio": {"output": {"voice": "NATF1"}}},
                                  LiveChange(engine_voice="NATF1", event_id="y")),
                                 ({"instructions": "", "audio": {"output": {"voice": "marin"}}},
                                  LiveChange(instructions="", engine_voice="NATF2", event_id="y")),
                                 ({"instructions": "C", "audio": {"output": {"voice": "NATM1"}}},
                                  LiveChange(instructions="C", event_id="y"))):
        update = state.plan(parse_client_event(ev(type="session.update", event_id="y", session={
            "type": "realtime", **session_change})).changes)
        assert update.live == live
        assert (state.settings.instructions, state.settings.engine_voice) == ("B", "NATM1")
    state.commit(update)  # what the connection does once the engine applied it
    assert (state.settings.instructions, state.settings.voice, state.settings.engine_voice) == ("C", "NATM1", "NATM1")
    assert update.live.changed == ["session.instructions"] and update.live.param == "session.instructions"
    voice_only = LiveChange(engine_voice="NATF1", event_id="v")
    assert voice_only.changed == ["session.audio.output.voice"] and voice_only.param == "session.audio.output.voice"
    refused = voice_only.refused("No such voice file.").event()["error"]
    assert (refused["code"], refused["param"], refused["event_id"]) == ("invalid_value", "session.audio.output.voice",
                                                                        "v")
    assert "keeps its current persona and voice" in refused["message"]
    failed = voice_only.failed("the new prompt could not be applied").event()["error"]
    assert (failed["type"], failed["code"]) == ("server_error", "live_update_failed")

    proto.on_frame(LOUD, " yo")
    cancelled = proto.cancel()
    assert cancelled[-1]["type"] == "response.done"
    assert cancelled[-1]["response"]["status"] == "cancelled"
    assert cancelled[-1]["response"]["status_details"]["reason"] == "client_cancelled"


def test_a_live_change_is_answered_by_a_ga_session_updated_with_the_bizra_report():
    from openai.types.realtime import SessionUpdatedEvent

    state, _ = session(instructions="A", voice="NATM1")
    state.start()
    update = state.plan(parse_client_event(ev(type="session.update", event_id="evt_p", session={
        "type": "realtime", "instructions": "You are a baker.", "audio": {"output": {"voice": "coral"}}})).changes)
    state.commit(update)
    result = {"changed": ["text_prompt", "voice"], "voice": "NATF1", "prompt_positions": 57, "prefill_ms": 812.4}
    event = state.updated(update.live.report(result))
    parsed = SessionUpdatedEvent.model_validate(event)
    assert parsed.session.instructions == "You are a baker." and parsed.session.audio.output.voice == "coral"
    assert parsed.model_extra["bizra"] == {
        "changed": ["session.instructions", "session.audio.output.voice"], "engine_voice": "NATF1",
        "prompt_positions": 57, "prefill_ms": 812.4, "event_id": "evt_p"}
    assert "bizra" not in state.updated()  # a plain update carries no report


@pytest.mark.parametrize("name, preset", sorted(DEFAULT_VOICE_TABLE.items()))
def test_openai_voices_map_to_presets_at_session_update(name, preset):
    state, _ = session()
    apply(state, ev(type="session.update", session={"type": "realtime", "audio": {"output": {"voice": name}}}))
    assert (state.settings.voice, state.settings.engine_voice) == (name, preset)
    assert state.session_object()["audio"]["output"]["voice"] == name  # reported as the client named it


def test_unknown_voices_are_refused_at_session_update_not_later():
    state, _ = session(voice="NATM1", catalog=("NATM1", "NATF0"))
    for voice, words in (("NOPE", "Unknown voice 'NOPE'"), ("marin", "maps to 'NATF2'")):
        with pytest.raises(RealtimeError) as err:
            state.plan(parse_client_event(ev(type="session.update", event_id="v", session={
                "type": "realtime", "audio": {"output": {"voice": voice}}})).changes)
        assert (err.value.code, err.value.param, err.value.event_id) == (
            "invalid_value", "session.audio.output.voice", "v")
        assert words in err.value.message and "NATF0" in err.value.message
    assert state.settings.engine_voice == "NATM1"  # unchanged
    custom = SessionState(RealtimeSettings(), VoiceMap({"marin": "NATF0"}, ("NATF0",)))
    apply(custom, ev(type="session.update", session={"type": "realtime", "audio": {"output": {"voice": "marin"}}}))
    assert custom.settings.engine_voice == "NATF0"  # the table is configurable
    installed = ["NATF0"]
    growing = SessionState(RealtimeSettings(voice="NATF0"), VoiceMap({}, lambda: installed))
    growing.resolve_initial_voice()
    with pytest.raises(RealtimeError):
        growing.resolve_voice("mine")
    installed.append("mine")  # a custom voice added while the session runs can be chosen
    assert growing.resolve_voice("mine") == "mine"
    with pytest.raises(RealtimeError) as err:
        SessionState(RealtimeSettings(voice="NOPE"), VoiceMap({}, ("NATF0",))).resolve_initial_voice()
    assert err.value.param == "voice_prompt"


def test_the_voice_table_in_the_app_config():
    from bizra_voice.config import AppConfig

    default = AppConfig().realtime
    assert default.voices == DEFAULT_VOICE_TABLE and default.max_buffered_audio_s == 30
    assert set(default.voices) == {"alloy", "ash", "ballad", "cedar", "coral", "echo", "marin", "sage",
                                   "shimmer", "verse"}
    assert set(default.voices.values()) <= set(PRESET_VOICES)
    custom = AppConfig.model_validate({"realtime": {"voices": {"Marin": "NATF0.wav"}}}).realtime
    assert custom.voices == {"marin": "NATF0"}
    with pytest.raises(ValueError):
        AppConfig.model_validate({"realtime": {"voices": {"marin": "../etc/passwd"}}})


def chirp(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * (200 * t + 700 * t * t))).astype(np.float32)  # 200 Hz -> 3 kHz in 2 s


@pytest.mark.parametrize("kind", ["audio/pcmu", "audio/pcma"])
def test_g711_session_formats_round_trip(kind):
    """A telephony session: formats negotiated by session.update, reported back in the GA shape, output
    frames encoded as 8 kHz G.711 that a G.711 decoder turns back into the same signal."""
    from openai.types.realtime import ResponseAudioDeltaEvent, SessionUpdatedEvent

    from bizra_voice.audio.g711 import G711Decoder

    state, proto = session(SegmenterConfig(end_silence_frames=100))
    apply(state, ev(type="session.update", session={
        "type": "realtime", "audio": {"input": {"format": {"type": kind}}, "output": {"format": {"type": kind}}}}))
    updated = SessionUpdatedEvent.model_validate(state.updated())
    assert updated.session.audio.input.format.type == kind and updated.session.audio.output.format.type == kind
    signal = chirp(2.0)
    payload = b""
    for k in range(0, signal.size, FRAME_SIZE):
        for event in proto.on_frame(signal[k:k + FRAME_SIZE], " a"):
            if event["type"] == "response.output_audio.delta":
                ResponseAudioDeltaEvent.model_validate(event)
                payload += base64.b64decode(event["delta"])
    assert 0 <= signal.size // 3 - len(payload) <= 100  # a byte per 8 kHz sample, less the resampler's 12.5 ms
    back = G711Decoder("ulaw" if kind == "audio/pcmu" else "alaw").decode(payload)
    ref, got = signal[2400:40000], back[2400:40000]
    snr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2))
    assert snr > 30, snr  # G.711 is ~38 dB on a band-limited signal; no misalignment or seams
    assert state.started  # frames flowed: the formats (and the codec's state) are fixed
    with pytest.raises(RealtimeError) as err:
        state.plan(parse_client_event(ev(type="session.update", session={
            "type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}})).changes)
    assert err.value.code == "session_locked"


def test_g711_input_is_decoded_chunk_by_chunk_without_seams():
    from bizra_voice.audio.g711 import G711Encoder

    signal = chirp(2.0)
    g711 = G711Encoder("ulaw").encode(signal)
    codec = AudioCodec(input_format="audio/pcmu")
    chunks = [codec.decode(g711[k:k + 123]) for k in range(0, len(g711), 123)]  # odd sizes on purpose
    whole = AudioCodec(input_format="audio/pcmu").decode(g711)
    joined = np.concatenate(chunks)
    n = min(joined.size, whole.size)
    assert n > 40000 and np.array_equal(joined[:n], whole[:n])
    ref, got = signal[2400:40000], joined[2400:40000]
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 30


def test_g711_matches_the_itu_reference_values():
    """Spot values of ITU-T G.711: digital silence is 0xFF (μ-law) / 0xD5 (A-law); full scale saturates."""
    from bizra_voice.audio.g711 import G711Decoder, G711Encoder

    assert set(G711Encoder("ulaw").encode(np.zeros(2400, np.float32))) == {0xFF}
    assert set(G711Encoder("alaw").encode(np.zeros(2400, np.float32))) == {0xD5}
    loud = G711Decoder("ulaw").decode(bytes([0x80]) * 800)  # μ-law 0x80 = +32124 (the largest positive code)
    assert 0.95 < float(np.median(loud[300:-300])) < 0.99


def test_truncate_acknowledges_what_the_user_heard():
    from openai.types.realtime import ConversationItemTruncatedEvent

    _, proto = session(SegmenterConfig(end_silence_frames=2))
    events = [e for _ in range(5) for e in proto.on_frame(LOUD, " a")]
    item_id = next(e for e in events if e["type"] == "response.output_item.added")["item"]["id"]
    event = parse_client_event(ev(type="conversation.item.truncate", event_id="t1", item_id=item_id,
                                  content_index=0, audio_end_ms=240))
    assert (event.kind, event.item_id, event.audio_end_ms) == ("item.truncate", item_id, 240)
    ack = ConversationItemTruncatedEvent.model_validate(proto.conversation.truncated(item_id, 240))
    assert ack.item_id == item_id and ack.audio_end_ms == 240
    with pytest.raises(RealtimeError) as err:  # 5 frames = 400 ms were sent
        proto.conversation.truncated(item_id, 480, "t2")
    assert err.value.code == "invalid_value" and err.value.event_id == "t2"
    with pytest.raises(RealtimeError) as err:
        proto.conversation.truncated("item_nope", 0)
    assert err.value.code == "item_not_found"
    for bad, param in (({"audio_end_ms": 10}, "item_id"), ({"item_id": "i", "audio_end_ms": -1}, "audio_end_ms"),
                       ({"item_id": "i", "audio_end_ms": True}, "audio_end_ms"),
                       ({"item_id": "i", "audio_end_ms": 5, "content_index": 1}, "content_index")):
        with pytest.raises(RealtimeError) as err:
            parse_client_event(ev(type="conversation.item.truncate", **bad))
        assert err.value.param == param
