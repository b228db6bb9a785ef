"""User-turn detection for hybrid mode: an energy VAD with hangover, plus PersonaPlex's own turn-taking.

Pure (numpy only) and fed frame by frame from the PCM the server already decodes:

- ``push_user_pcm(pcm, now)`` runs the VAD on 80 ms frames. Speech starts after ``onset_frames``
  consecutive frames above the threshold (``speech.start``: barge-in while the assistant is guided);
  the user turn ends after ``hangover_ms`` of silence (``turn.end`` with the turn's audio).
- ``push_assistant_token(is_word, now)`` follows the assistant: when PersonaPlex starts speaking (a word
  token, not PAD) while the user has already been silent for ``early_end_ms``, the user turn ends at once
  instead of waiting for the full hangover — the model's own turn-taking is the faster signal.

The threshold adapts to the noise floor: ``max(min_db, noise_floor + margin_db)``, where the floor is
the quietest frame of the last ``floor_window_frames`` (minimum statistics: speech has gaps, steady noise
does not), so a noisy microphone does not count as permanent speech.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

from bizra_voice import constants as C


@dataclass(frozen=True)
class TurnConfig:
    sample_rate: int = C.SAMPLE_RATE
    frame_size: int = C.FRAME_SIZE
    min_db: float = -45.0  # absolute threshold (dBFS of a frame's RMS)
    margin_db: float = 12.0  # speech must be this far above the tracked noise floor
    onset_frames: int = 2  # consecutive loud frames that start speech (160 ms)
    hangover_ms: float = 560.0  # silence that ends a user turn
    early_end_ms: float = 240.0  # shorter silence that ends it when the assistant starts speaking
    min_speech_ms: float = 240.0  # shorter bursts are noise, not a turn
    pre_roll_frames: int = 3  # audio kept before the onset (the start of the first word)
    max_turn_s: float = 30.0  # a turn is cut (and ended) at this length
    floor_window_frames: int = 40  # noise floor = quietest frame of the last 3.2 s


@dataclass
class TurnEvent:
    kind: str  # "speech.start" | "turn.end"
    at: float  # the caller's clock when it was detected
    audio: np.ndarray | None = None  # turn.end: the turn's PCM (float32, sample_rate)
    speech_ms: float = 0.0
    reason: str = ""  # turn.end: "silence" | "assistant" | "max_length"


def frame_db(frame: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64)))) if frame.size else 0.0
    return 20.0 * np.log10(max(rms, 1e-10))


@dataclass
class TurnDetector:
    config: TurnConfig = field(default_factory=TurnConfig)

    def __post_init__(self) -> None:
        self._pending = np.zeros(0, np.float32)
        self._pre_roll: list[np.ndarray] = []
        self._turn: list[np.ndarray] = []
        # seeded with the quiet default so that a session opening with speech is not taken as its floor
        seed = self.config.min_db - self.config.margin_db
        window = max(1, self.config.floor_window_frames)
        self._recent_db: collections.deque = collections.deque([seed] * window, maxlen=window)
        self.loud_run = 0
        self.speaking = False  # the user is in a turn (onset seen, turn not ended)
        self.silence_ms = 0.0
        self.speech_ms = 0.0

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.config.frame_size / self.config.sample_rate

    @property
    def noise_db(self) -> float:
        return min(self._recent_db)

    @property
    def threshold_db(self) -> float:
        return max(self.config.min_db, self.noise_db + self.config.margin_db)

    def push_user_pcm(self, pcm: np.ndarray, now: float) -> list[TurnEvent]:
        pcm = np.asarray(pcm, np.float32).reshape(-1)
        buf = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
        n = buf.size // self.config.frame_size
        self._pending = buf[n * self.config.frame_size:].copy()
        events: list[TurnEvent] = []
        for k in range(n):
            event = self._frame(buf[k * self.config.frame_size:(k + 1) * self.config.frame_size], now)
            if event is not None:
                events.append(event)
        return events

    def push_assistant_token(self, is_word: bool, now: float) -> TurnEvent | None:
        """PersonaPlex's text step: a word while the user has paused ends the user turn early."""
        if is_word and self.speaking and self.loud_run == 0 and self.silence_ms >= self.config.early_end_ms:
            return self._end(now, "assistant")
        return None

    def _frame(self, frame: np.ndarray, now: float) -> TurnEvent | None:
        cfg = self.config
        db = frame_db(frame)
        self._recent_db.append(db)
        loud = db >= self.threshold_db
        if not self.speaking:
            self._pre_roll.append(frame)
            del self._pre_roll[: -max(cfg.pre_roll_frames + cfg.onset_frames, 1)]
            self.loud_run = self.loud_run + 1 if loud else 0
            if self.loud_run >= cfg.onset_frames:
                self.speaking = True
                self._turn = list(self._pre_roll)
                self._pre_roll = []
                self.speech_ms = self.loud_run * self.frame_ms
                self.silence_ms = 0.0
                return TurnEvent("speech.start", now)
            return None
        self._turn.append(frame)
        if loud:
            self.loud_run += 1
            self.silence_ms = 0.0
            self.speech_ms += self.frame_ms
        else:
            self.loud_run = 0
            self.silence_ms += self.frame_ms
        if self.silence_ms >= cfg.hangover_ms:
            return self._end(now, "silence")
        if len(self._turn) * self.frame_ms >= cfg.max_turn_s * 1000.0:
            return self._end(now, "max_length")
        return None

    def _end(self, now: float, reason: str) -> TurnEvent | None:
        audio = np.concatenate(self._turn) if self._turn else np.zeros(0, np.float32)
        speech_ms = self.speech_ms
        self.speaking = False
        self.loud_run = 0
        self.silence_ms = 0.0
        self.speech_ms = 0.0
        self._turn = []
        if speech_ms < self.config.min_speech_ms:
            return None
        return TurnEvent("turn.end", now, audio=audio, speech_ms=speech_ms, reason=reason)
