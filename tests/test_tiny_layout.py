"""The tiny checkpoint offers every preset name, and a cache of an older layout is regenerated, not reused."""

from __future__ import annotations

import json

from bizra_voice import tiny
from bizra_voice.constants import PRESET_VOICES
from tests._tiny import tiny_checkpoint


def test_tiny_checkpoint_offers_all_18_presets_in_both_formats():
    voices = tiny_checkpoint() / "voices"
    files = sorted(p.name for p in voices.iterdir())
    assert files == sorted(f"{n}.wav" if n in tiny.WAV_VOICES else f"{n}.pt" for n in PRESET_VOICES)
    assert "NATF0.wav" in files and "NATF2.pt" in files
    assert tiny.is_complete(tiny_checkpoint(), 1234)


def test_an_older_layouts_cache_is_regenerated(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(tiny, "make_tiny", lambda folder, seed: made.append((folder, seed)) or folder)
    for marker in ("ok\n", json.dumps({"layout": tiny.TINY_LAYOUT - 1, "seed": 7}),
                   json.dumps({"layout": tiny.TINY_LAYOUT, "seed": 8}), "{not json"):
        (tmp_path / ".complete").write_text(marker)
        tiny.ensure_tiny(tmp_path, 7)
    assert len(made) == 4
    (tmp_path / ".complete").write_text(json.dumps({"layout": tiny.TINY_LAYOUT, "seed": 7}))
    tiny.ensure_tiny(tmp_path, 7)
    assert len(made) == 4  # the current layout is reused


def test_voice_signals_are_deterministic_and_distinct():
    import numpy as np

    signals = {n: tiny.voice_signal(n, 1234) for n in PRESET_VOICES}
    assert np.array_equal(signals["NATF2"], tiny.voice_signal("NATF2", 1234))
    assert len({s.tobytes() for s in signals.values()}) == len(PRESET_VOICES)
    assert np.array_equal(signals["NATM1"], tiny._synth_voice(2.4, 110.0, 1234))  # layout 1's NATM1
