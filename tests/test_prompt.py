import numpy as np
import pytest

from bizra_voice import constants as C
from bizra_voice.prompt import (
    PromptError,
    build_timeline,
    delayed_columns,
    resolve_persona,
    wrap_system_prompt,
)


def test_wrap_matches_reference_rule():
    assert wrap_system_prompt("  Be kind. ") == "<system> Be kind. <system>"
    assert wrap_system_prompt("<system> Be kind. <system>") == "<system> Be kind. <system>"
    assert wrap_system_prompt("<system>") == "<system> <system> <system>"


def test_empty_prompt_means_default_persona():
    assert resolve_persona("") == C.DEFAULT_PERSONA
    assert resolve_persona("   \n") == C.DEFAULT_PERSONA
    assert resolve_persona(None) == C.DEFAULT_PERSONA
    assert "الإحسان" in C.DEFAULT_PERSONA


def test_over_long_prompt_is_refused_with_its_length():
    with pytest.raises(PromptError, match="5000 characters long; the limit is 4000"):
        resolve_persona("x" * 5000)
    with pytest.raises(PromptError, match="NUL"):
        resolve_persona("a\x00b")


def test_timeline_layout():
    voice = np.arange(8 * 3).reshape(8, 3)
    tl = build_timeline(voice, [40, 41])
    assert tl.length == 3 + 6 + 2 + 6
    assert tl.text.tolist() == [3] * 9 + [40, 41] + [3] * 6
    assert tl.agent[:3].tolist() == voice.T.tolist()
    assert all(row == list(C.SILENCE_TOKENS) for row in tl.agent[3:].tolist())
    assert all(row == list(C.SINE_TOKENS) for row in tl.user.tolist())


def test_delayed_columns_put_acoustic_codes_one_position_later():
    tl = build_timeline(np.arange(8 * 4).reshape(8, 4) + 100, [7])
    cols = delayed_columns(tl.text, tl.agent, tl.user, 0, None, None, initial_text=384, initial_audio=2048)
    assert cols.shape == (17, tl.length)
    assert (cols[:, 0] == [384] + [2048] * 16).all()  # position 0: all initial
    assert cols[1, 1] == tl.agent[1, 0] and (cols[2:9, 1] == 2048).all()  # position 1: delayed rows initial
    assert (cols[2:9, 3] == tl.agent[2, 1:]).all()  # acoustic of frame 2 at position 3
    assert (cols[10:17, 5] == list(C.SINE_TOKENS[1:])).all()
