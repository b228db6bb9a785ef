"""Persona text prompt rules and the teacher-forced prompt timeline (pure numpy, no torch).

The timeline follows the PersonaPlex reference exactly (verified on the conformance kit):

| positions            | text          | agent codes | user codes |
|----------------------|---------------|-------------|------------|
| 0 .. N-1             | PAD           | voice frame | SINE       |
| N .. N+5             | PAD           | SILENCE     | SINE       |
| N+6 .. N+5+L         | prompt token  | SILENCE     | SINE       |
| N+6+L .. P-1         | PAD           | SILENCE     | SINE       |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bizra_voice import constants as C


class PromptError(ValueError):
    """The persona prompt cannot be used (too long, not text)."""


def wrap_system_prompt(prompt: str) -> str:
    """Wrap like the reference: ``<system> prompt <system>``, unless the caller already wrapped it."""
    stripped = prompt.strip()
    if stripped.startswith(C.SYSTEM_TAG) and stripped.endswith(C.SYSTEM_TAG) and len(stripped) > len(C.SYSTEM_TAG):
        return stripped
    return f"{C.SYSTEM_TAG} {stripped} {C.SYSTEM_TAG}"


def resolve_persona(prompt: str | None, default: str = C.DEFAULT_PERSONA, max_chars: int = C.MAX_PROMPT_CHARS) -> str:
    """Return the persona to use: the default one when empty (the reference crashes there), else validated."""
    if prompt is None or not prompt.strip():
        return default
    if not isinstance(prompt, str):
        raise PromptError("The text prompt must be a string.")
    if len(prompt) > max_chars:
        raise PromptError(f"The text prompt is {len(prompt)} characters long; the limit is {max_chars}.")
    if "\x00" in prompt:
        raise PromptError("The text prompt contains a NUL character.")
    return prompt


@dataclass(frozen=True)
class PromptTimeline:
    """Un-delayed tokens of every teacher-forced prompt position (text [P], agent [P, 8], user [P, 8])."""

    text: np.ndarray
    agent: np.ndarray
    user: np.ndarray
    voice_frames: int

    @property
    def length(self) -> int:
        return int(self.text.shape[0])


def build_timeline(voice_codes: np.ndarray, prompt_tokens: list[int] | np.ndarray,
                   silence_frames: int = C.SILENCE_FRAMES) -> PromptTimeline:
    """Lay out voice frames, silences and prompt tokens position by position (see module docstring)."""
    voice_codes = np.asarray(voice_codes, dtype=np.int64)
    if voice_codes.ndim != 2 or voice_codes.shape[0] != len(C.SILENCE_TOKENS):
        raise ValueError(f"voice codes must be [8, N], got {voice_codes.shape}")
    n_voice = voice_codes.shape[1]
    tokens = np.asarray(prompt_tokens, dtype=np.int64).reshape(-1)
    total = n_voice + 2 * silence_frames + tokens.shape[0]
    text = np.full(total, C.TEXT_PAD_ID, dtype=np.int64)
    text[n_voice + silence_frames: n_voice + silence_frames + tokens.shape[0]] = tokens
    agent = np.tile(np.asarray(C.SILENCE_TOKENS, dtype=np.int64), (total, 1))
    agent[:n_voice] = voice_codes.T
    user = np.tile(np.asarray(C.SINE_TOKENS, dtype=np.int64), (total, 1))
    return PromptTimeline(text=text, agent=agent, user=user, voice_frames=n_voice)


def delayed_columns(text: np.ndarray, agent: np.ndarray, user: np.ndarray, start: int,
                    prev_agent_acoustic: np.ndarray | None, prev_user_acoustic: np.ndarray | None,
                    initial_text: int, initial_audio: int) -> np.ndarray:
    """Model input columns [17, T] for positions ``start .. start+T-1`` in the delayed layout.

    Codebook 0 of each audio stream has delay 0 and codebooks 1..7 delay 1, so the column of position p
    holds the acoustic codes of frame p-1. Positions at or below a row's delay get the initial token,
    as the model's streaming step does.
    """
    T = text.shape[0]
    cols = np.empty((17, T), dtype=np.int64)
    cols[0] = text
    cols[1] = agent[:, 0]
    cols[9] = user[:, 0]
    prev_a = agent[:-1, 1:].T
    prev_u = user[:-1, 1:].T
    first_a = prev_agent_acoustic if prev_agent_acoustic is not None else np.full(7, initial_audio)
    first_u = prev_user_acoustic if prev_user_acoustic is not None else np.full(7, initial_audio)
    cols[2:9, 0] = first_a
    cols[10:17, 0] = first_u
    cols[2:9, 1:] = prev_a
    cols[10:17, 1:] = prev_u
    positions = start + np.arange(T)
    cols[0, positions <= 0] = initial_text
    cols[1, positions <= 0] = initial_audio
    cols[9, positions <= 0] = initial_audio
    cols[2:9, positions <= 1] = initial_audio
    cols[10:17, positions <= 1] = initial_audio
    return cols


def extend_timeline(timeline: PromptTimeline, frames: np.ndarray) -> PromptTimeline:
    """``timeline`` followed by conversation frames [T, 17] (text, agent 8, user 8)."""
    if not len(frames):
        return timeline
    return type(timeline)(text=np.concatenate([timeline.text, frames[:, 0]]),
                          agent=np.concatenate([timeline.agent, frames[:, 1:9]]),
                          user=np.concatenate([timeline.user, frames[:, 9:17]]), voice_frames=timeline.voice_frames)
