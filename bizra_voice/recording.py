"""Consent-gated session recording (pure: numpy, sphn, the file system).

A session is recorded only when BOTH the user asked for it (``record=1`` on ``/api/chat``, ``record`` on
``/v1/realtime``) AND the operator enabled recording (``recording.enabled`` in the app config). Then its
folder ``<dir>/<UTC time>-<session id>/`` holds ``user.wav`` (what the engine heard), ``assistant.wav``
(what it said, one 80 ms frame per output), both 16-bit, written as the session goes and ``events.jsonl`` (session events and transcripts, one JSON
object per line with ``t`` = seconds since the session started). Folders older than the retention period
are deleted when a replica starts and whenever a new recording begins. Nothing is written otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import wave
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bizra_voice import constants as C

FOLDER = re.compile(r"^\d{8}T\d{6}Z-[0-9a-zA-Z_]{1,64}$")


def should_record(requested: bool, enabled: bool) -> bool:
    """Consent (the user's request) and the operator's switch must both be on."""
    return bool(requested) and bool(enabled)


def purge_expired(root: Path, retention_days: float, now: float | None = None) -> list[Path]:
    """Delete recording folders (and only those: the name must match) not modified within the retention."""
    root = Path(root)
    if retention_days <= 0 or not root.is_dir():
        return []
    cutoff = (time.time() if now is None else now) - retention_days * 86400.0
    removed = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink() and FOLDER.match(entry.name) and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class SessionRecorder:
    """Streams one session's audio to 16-bit WAV files as it happens (memory stays flat however long the
    session); events go out line by line."""

    def __init__(self, root: Path, session_id: str, meta: dict[str, Any] | None = None) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        safe_id = re.sub(r"[^0-9a-zA-Z_]", "_", session_id)[:64] or "session"
        self.folder = Path(root) / f"{stamp}-{safe_id}"
        self.folder.mkdir(parents=True, exist_ok=False)
        self.session_id = session_id
        self.started = time.monotonic()
        self._wavs = {name: self._open_wav(self.folder / f"{name}.wav") for name in ("user", "assistant")}
        self._samples = {"user": 0, "assistant": 0}
        self._events = open(self.folder / "events.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.closed = False
        self.event({"type": "recording.started", "session_id": session_id, **(meta or {})})

    @staticmethod
    def _open_wav(path: Path) -> wave.Wave_write:
        writer = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(C.SAMPLE_RATE)
        return writer

    @property
    def user_seconds(self) -> float:
        return self._samples["user"] / C.SAMPLE_RATE

    @property
    def assistant_seconds(self) -> float:
        return self._samples["assistant"] / C.SAMPLE_RATE

    def _write(self, name: str, pcm: np.ndarray) -> None:
        if self.closed:
            return
        samples = np.asarray(pcm, np.float32).reshape(-1)
        self._wavs[name].writeframes((np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
        self._samples[name] += samples.size

    def user(self, pcm: np.ndarray) -> None:
        self._write("user", pcm)

    def assistant(self, pcm: np.ndarray) -> None:
        self._write("assistant", pcm)

    def event(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        line = {"t": round(time.monotonic() - self.started, 3), **event}
        self._events.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        self._events.flush()

    def close(self) -> Path:
        """Finish the WAV headers and write the closing event (idempotent); returns the folder."""
        if self.closed:
            return self.folder
        for writer in self._wavs.values():
            writer.close()
        self.event({"type": "recording.stopped", "user_audio_s": round(self.user_seconds, 3),
                    "assistant_audio_s": round(self.assistant_seconds, 3)})
        self.closed = True  # later events (a stats tick racing the close) are not recorded
        self._events.close()
        return self.folder
