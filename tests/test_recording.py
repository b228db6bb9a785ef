"""Consent-gated recording, retention, session-tagged logs and the metrics pump (pure, no Ray)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

import numpy as np

from bizra_voice.constants import FRAME_SIZE, SAMPLE_RATE
from bizra_voice.recording import SessionRecorder, purge_expired, should_record


def test_consent_and_switch_both_required():
    assert should_record(True, True)
    assert not should_record(True, False)
    assert not should_record(False, True)


def test_recorder_writes_wavs_and_jsonl(tmp_path):
    import sphn

    rec = SessionRecorder(tmp_path, "abc123", {"voice": "NATM1"})
    rec.user(np.full(SAMPLE_RATE, 0.1, np.float32))  # 1.0 s
    for _ in range(5):
        rec.assistant(np.full(FRAME_SIZE, -0.2, np.float32))  # 5 x 80 ms
    rec.event({"type": "assistant.text", "text": "hi"})
    folder = rec.close()
    assert folder.parent == tmp_path and folder.name.endswith("-abc123")
    user, sr = sphn.read(str(folder / "user.wav"))
    assistant, sr2 = sphn.read(str(folder / "assistant.wav"))
    assert sr == sr2 == SAMPLE_RATE
    assert user.shape[-1] == SAMPLE_RATE and assistant.shape[-1] == 5 * FRAME_SIZE
    assert abs(float(user[0, 100]) - 0.1) < 1e-3
    lines = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
    assert [x["type"] for x in lines] == ["recording.started", "assistant.text", "recording.stopped"]
    assert lines[0]["voice"] == "NATM1" and lines[-1]["assistant_audio_s"] == 0.4
    assert rec.close() == folder  # idempotent


def test_purge_deletes_only_expired_recording_folders(tmp_path):
    old = tmp_path / "20200101T000000Z-old"
    new = tmp_path / "20200101T000000Z-new"
    other = tmp_path / "not-a-recording"
    for d in (old, new, other):
        d.mkdir()
    past = time.time() - 10 * 86400
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    removed = purge_expired(tmp_path, retention_days=7)
    assert removed == [old]
    assert not old.exists() and new.exists() and other.exists()
    assert purge_expired(tmp_path, retention_days=0) == []  # 0 = keep forever


def test_session_id_on_log_lines():
    from bizra_voice import logctx

    logger = logging.getLogger("bizra-test-logctx")
    logctx.install((logger.name,))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)

    async def session(sid: str) -> None:
        logctx.bind_session(sid)
        await asyncio.sleep(0)
        await asyncio.create_task(asyncio.to_thread(lambda: None))
        logger.info("tick %d", 1)

    async def main() -> None:
        await asyncio.gather(session("s1"), session("s2"))
        logger.info("outside")

    asyncio.run(main())
    by_msg = sorted(r.getMessage() for r in records)
    assert by_msg == ["[session s1] tick 1", "[session s2] tick 1", "outside"]
    assert {getattr(r, "session_id", None) for r in records} == {"s1", "s2", None}


class _Recorder:
    def __init__(self):
        self.values: list[float] = []
        self.total = 0.0

    def observe(self, v, tags=None):
        self.values.append(v)

    def inc(self, v=1, tags=None):
        self.total += v

    def set(self, v, tags=None):
        self.values.append(v)


class _FakeMetrics:
    def __init__(self):
        self.tick_ms, self.deadline_misses = _Recorder(), _Recorder()
        self.sessions_active, self.slots_total = _Recorder(), _Recorder()
        self.admitting, self.sessions_ended = _Recorder(), _Recorder()


class _FakeRuntime:
    capacity = 4

    def __init__(self):
        import collections

        self.ticks, self.times, self.deadline_misses, self.active_sessions = 0, [], 0, 0
        self.sessions_ended = collections.Counter()
        self.refusal = None

    def admission_refusal(self):
        return self.refusal

    def tick(self, ms):
        self.times.append(ms)
        self.ticks += 1
        self.deadline_misses += ms > 80

    def tick_times_since(self, seen):
        fresh = min(self.ticks - seen, len(self.times))
        return self.ticks, self.times[len(self.times) - fresh:]


def test_metrics_pump_copies_new_ticks_once():
    from bizra_voice.serve.metrics import MetricsPump

    runtime, metrics = _FakeRuntime(), _FakeMetrics()
    pump = MetricsPump(runtime, metrics)
    for ms in (10.0, 95.0, 20.0):
        runtime.tick(ms)
    runtime.active_sessions = 2
    assert pump.pump_once() == 3
    assert metrics.tick_ms.values == [10.0, 95.0, 20.0]
    assert metrics.deadline_misses.total == 1 and metrics.sessions_active.values[-1] == 2
    assert metrics.admitting.values[-1] == 1 and metrics.sessions_ended.total == 0
    runtime.tick(30.0)
    runtime.sessions_ended["fell_behind"] += 2
    runtime.refusal = "full"
    assert pump.pump_once() == 1 and metrics.tick_ms.values[-1] == 30.0
    assert metrics.sessions_ended.total == 2 and metrics.admitting.values[-1] == 0
    assert pump.pump_once() == 0 and metrics.deadline_misses.total == 1
    assert metrics.sessions_ended.total == 2  # counted once


def test_runtime_tick_times_since_uses_the_real_window():
    import collections

    from bizra_voice.engine.runtime import EngineRuntime

    fake = type("R", (), {})()
    fake.ticks = 5
    fake._tick_ms = collections.deque([1.0, 2.0, 3.0, 4.0, 5.0], maxlen=3)
    assert EngineRuntime.tick_times_since(fake, 3) == (5, [4.0, 5.0])
    assert EngineRuntime.tick_times_since(fake, 0) == (5, [3.0, 4.0, 5.0])
    assert EngineRuntime.tick_times_since(fake, 5) == (5, [])
