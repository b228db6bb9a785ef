"""/api/chat query parameters as PersonaPlex/moshi clients send them, plus ours."""

from __future__ import annotations

import pytest

from bizra_voice import constants as C
from bizra_voice.session_params import BadParams, SessionParams, normalize_voice

# What the PersonaPlex web client puts in its URL (client/src/pages/Conversation/Conversation.tsx).
PERSONAPLEX_QUERY = {
    "text_temperature": "0.7", "text_topk": "25", "audio_temperature": "0.8", "audio_topk": "250",
    "pad_mult": "0", "text_seed": "123456", "audio_seed": "654321", "repetition_penalty_context": "64",
    "repetition_penalty": "1", "text_prompt": "You are a wise and friendly teacher.", "voice_prompt": "NATF2.pt",
}


def test_personaplex_client_query_is_accepted():
    p = SessionParams.from_query(PERSONAPLEX_QUERY)
    assert p.voice_prompt == "NATF2"
    assert p.text_prompt == "You are a wise and friendly teacher."
    assert (p.text_temperature, p.text_topk, p.audio_temperature, p.audio_topk) == (0.7, 25, 0.8, 250)
    assert p.seed == 123456  # text_seed when no seed
    assert p.mode == "auto" and p.greedy is False and p.record is False


def test_defaults_and_our_params():
    p = SessionParams.from_query({})
    assert p.text_prompt is None and p.voice_prompt is None and p.seed is None
    assert (p.text_temperature, p.text_topk) == (C.TEXT_TEMPERATURE, C.TEXT_TOPK)
    q = SessionParams.from_query({"mode": " Hybrid ", "greedy": "true", "record": "1", "seed": "-1",
                                  "text_seed": "5", "token": "abc", "text_prompt": "   "})
    assert (q.mode, q.greedy, q.record, q.seed, q.token, q.text_prompt) == ("hybrid", True, True, None, "abc", None)
    kw = q.sampling_kwargs()
    assert kw["greedy"] is True and kw["seed"] is None and set(kw) == {
        "text_temperature", "text_topk", "audio_temperature", "audio_topk", "seed", "greedy"}


@pytest.mark.parametrize("value, name", [("NATF2.pt", "NATF2"), ("VARM4.wav", "VARM4"), ("my_voice-2", "my_voice-2"),
                                         (" NATM1 ", "NATM1"), ("x.PT", "x")])
def test_voice_names(value, name):
    assert normalize_voice(value) == name


@pytest.mark.parametrize("query, field", [
    ({"voice_prompt": "../voices/NATF2.pt"}, "voice_prompt"),
    ({"voice_prompt": "/etc/passwd"}, "voice_prompt"),
    ({"voice_prompt": "a\\b"}, "voice_prompt"),
    ({"text_temperature": "nan"}, "text_temperature"),
    ({"audio_temperature": "inf"}, "audio_temperature"),
    ({"text_temperature": "-0.1"}, "text_temperature"),
    ({"text_topk": "0"}, "text_topk"),
    ({"audio_topk": "ten"}, "audio_topk"),
    ({"seed": "-7"}, "seed"),
    ({"mode": "turbo"}, "mode"),
    ({"greedy": "maybe"}, "greedy"),
    ({"text_prompt": "x" * (C.MAX_PROMPT_CHARS + 1)}, "text_prompt"),
    ({"text_prompt": "a\x00b"}, "text_prompt"),
])
def test_rejections_are_one_sentence_naming_the_field(query, field):
    with pytest.raises(BadParams) as info:
        SessionParams.from_query(query)
    message = str(info.value)
    assert message.startswith(f"Invalid query parameter {field} ") and message.endswith(".")
    assert "\n" not in message and len(message) < 300
