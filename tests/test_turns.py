"""User-turn detection (pure): energy VAD with hangover, plus PersonaPlex's own turn-taking."""

from pathlib import Path

import numpy as np
import pytest

from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from bizra_voice.turns import TurnConfig, TurnDetector, frame_db

WAV = Path(__file__).resolve().parents[2] / "shared" / "audio" / "user_turn_en.wav"


def tone(frames: int, amp: float = 0.2) -> np.ndarray:
    t = np.arange(frames * FRAME_SIZE) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(frames: int) -> np.ndarray:
    return np.zeros(frames * FRAME_SIZE, np.float32)


def feed(det: TurnDetector, pcm: np.ndarray, chunk: int = 960) -> list:
    events = []
    for i in range(0, pcm.size, chunk):  # odd chunking on purpose: frames are re-assembled
        events += [(e, i) for e in det.push_user_pcm(pcm[i:i + chunk], now=i / SAMPLE_RATE)]
    return events


def test_frame_db():
    assert frame_db(np.zeros(FRAME_SIZE, np.float32)) == pytest.approx(-200.0)
    assert frame_db(np.ones(FRAME_SIZE, np.float32)) == pytest.approx(0.0)


def test_speech_then_hangover_ends_the_turn():
    det = TurnDetector()
    pcm = np.concatenate([silence(5), tone(10), silence(4), tone(5), silence(10)])
    events = feed(det, pcm)
    kinds = [e.kind for e, _ in events]
    assert kinds == ["speech.start", "turn.end"], kinds  # the 320 ms pause is inside the turn
    start, end = events[0][0], events[1][0]
    assert end.reason == "silence"
    # onset on the 2nd loud frame (frame 6, done at 0.56 s); end on the 7th silent frame after frame 23 (frame 30)
    assert start.at == pytest.approx(7 * FRAME_SIZE / SAMPLE_RATE, abs=0.05)
    assert end.at == pytest.approx(31 * FRAME_SIZE / SAMPLE_RATE, abs=0.05)
    assert end.speech_ms == pytest.approx(15 * 80.0)
    # the audio handed to the transcriber holds the whole turn including a pre-roll before the onset
    assert end.audio.size >= 19 * FRAME_SIZE and np.abs(end.audio).max() > 0.1


def test_short_bursts_are_not_turns():
    det = TurnDetector()
    events = feed(det, np.concatenate([silence(3), tone(2), silence(12)]))
    assert [e.kind for e, _ in events] == ["speech.start"]  # onset, but 160 ms is under min_speech_ms


def test_assistant_word_ends_the_turn_early():
    det = TurnDetector()
    feed(det, np.concatenate([tone(6), silence(2)]))
    assert det.push_assistant_token(True, 1.0) is None  # 160 ms of silence: too early
    feed(det, silence(1))
    assert det.push_assistant_token(False, 1.1) is None  # PAD is not speaking
    end = det.push_assistant_token(True, 1.2)
    assert end is not None and end.kind == "turn.end" and end.reason == "assistant"
    assert det.push_assistant_token(True, 1.3) is None  # the turn is over


def test_steady_noise_is_not_speech_but_speech_over_it_is():
    det = TurnDetector(TurnConfig(min_db=-60.0))
    noise = (0.01 * np.random.default_rng(0).standard_normal(40 * FRAME_SIZE)).astype(np.float32)  # ~-40 dBFS
    first = feed(det, np.concatenate([noise, noise]))
    assert [e.kind for e, _ in first] == ["speech.start", "turn.end"]  # until the window has learnt the floor
    assert -45.0 < det.noise_db < -38.0 and det.threshold_db > -35.0
    assert feed(det, noise) == []  # from then on steady noise is the floor, not speech
    events = feed(det, np.concatenate([noise[:10 * FRAME_SIZE] + tone(10, 0.3), noise[:10 * FRAME_SIZE]]))
    assert [e.kind for e, _ in events] == ["speech.start", "turn.end"]


def test_real_speech_is_one_turn():
    import sphn

    pcm, sr = sphn.read(str(WAV))
    assert sr == SAMPLE_RATE
    det = TurnDetector()
    events = feed(det, np.concatenate([silence(4), np.asarray(pcm[0], np.float32), silence(10)]), chunk=1920)
    assert [e.kind for e, _ in events] == ["speech.start", "turn.end"]
    assert events[1][0].audio.size / SAMPLE_RATE > 6.0
