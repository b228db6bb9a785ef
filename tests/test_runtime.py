"""The tick thread and the asyncio session handles: capacity, framing, release, clear request errors."""

import asyncio
import time

import numpy as np
import pytest

from bizra_voice.engine.api import (
    AtCapacity,
    BadSessionRequest,
    EndCause,
    SamplingParams,
    SessionClosed,
    SessionSpec,
)
from bizra_voice.engine.config import EngineConfig
from bizra_voice.engine.runtime import EngineRuntime
from tests._tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def runtime():
    rt = EngineRuntime.create(EngineConfig(checkpoint=str(tiny_checkpoint()), device="cpu", slots=2))
    yield rt
    rt.shutdown()


def test_session_frames_in_any_chunking_and_frees_its_slot(runtime):
    async def scenario():
        session = await runtime.open_session(SessionSpec(sampling=SamplingParams(greedy=True)))
        assert session.voice == "NATM1" and session.prompt_positions > 0
        assert runtime.active_sessions == 1
        pcm = (0.05 * np.random.default_rng(1).standard_normal(1920 * 5)).astype(np.float32)
        for chunk in np.array_split(pcm, 13):  # uneven chunks, like Opus packets
            session.push_pcm(chunk)
        outs = [await asyncio.wait_for(session.next_output(), 10) for _ in range(5)]
        assert [o.frame for o in outs] == [0, 1, 2, 3, 4]
        assert all(o.pcm.shape == (1920,) and o.pcm.dtype == np.float32 for o in outs)
        await session.close()
        assert runtime.active_sessions == 0
        with pytest.raises(SessionClosed):
            await session.next_output()
        with pytest.raises(SessionClosed):
            session.push_pcm(pcm)

    asyncio.run(scenario())


def test_capacity_is_reported_at_once(runtime):
    async def scenario():
        a = await runtime.open_session(SessionSpec())
        b = await runtime.open_session(SessionSpec(voice="NATF0.wav"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AtCapacity, match="All 2 session slots are in use"):
            await runtime.open_session(SessionSpec())
        assert loop.time() - started < 1.0
        await a.close()
        c = await runtime.open_session(SessionSpec())
        assert c.slot == a.slot
        await b.close()
        await c.close()

    asyncio.run(scenario())
    assert runtime.stats()["sessions_rejected"] >= 1


@pytest.mark.parametrize(("spec", "message"), [
    (SessionSpec(voice="../etc/passwd"), "not valid"),
    (SessionSpec(voice="NOPE"), "Unknown voice"),
    (SessionSpec(text_prompt="x" * 5000), "limit is 4000"),
])
def test_bad_requests_do_not_leak_slots(runtime, spec, message):
    async def scenario():
        with pytest.raises(BadSessionRequest, match=message):
            await runtime.open_session(spec)

    asyncio.run(scenario())
    assert runtime.active_sessions == 0


def test_bad_sampling_values_are_refused():
    for kwargs in ({"text_temperature": float("nan")}, {"audio_temperature": -1.0}, {"text_topk": 0},
                   {"seed": -3}):
        with pytest.raises(BadSessionRequest):
            SamplingParams(**kwargs)


def test_nan_audio_is_refused(runtime):
    async def scenario():
        session = await runtime.open_session(SessionSpec())
        with pytest.raises(BadSessionRequest, match="NaN"):
            session.push_pcm(np.full(1920, np.nan, dtype=np.float32))
        await session.close()

    asyncio.run(scenario())


def _speechless(n, seed=5):
    return (0.05 * np.random.default_rng(seed).standard_normal((n, 1920))).astype(np.float32)


def test_a_burst_is_caught_up_by_dropping_the_oldest_input_and_reported():
    config = EngineConfig(checkpoint=str(tiny_checkpoint()), device="cpu", slots=1, max_pending_frames=8,
                          catchup_frames=2)
    rt = EngineRuntime.create(config)

    async def scenario():
        session = await rt.open_session(SessionSpec(sampling=SamplingParams(greedy=True)))
        reports = []
        session.on_input_dropped = lambda dropped, total: reports.append((dropped, total))
        session.push_pcm(_speechless(20).reshape(-1))  # 1.6 s at once: more than 8 frames may wait
        await asyncio.sleep(0)  # the report is delivered on the loop
        first = [await asyncio.wait_for(session.next_output(), 30) for _ in range(2)]
        assert reports == [(18, 18)] and session.input_frames_dropped == 18
        for frame in _speechless(5, seed=6):  # the session goes on
            session.push_pcm(frame)
        more = [await asyncio.wait_for(session.next_output(), 30) for _ in range(5)]
        assert [o.frame for o in first + more] == list(range(7)) and not session.closed
        await session.close()

    try:
        asyncio.run(scenario())
        assert rt.stats()["input_frames_dropped"] == 18 and rt.stats()["sessions_ended_by_server"] == {}
    finally:
        rt.shutdown()


def test_a_session_that_stays_behind_is_ended_with_its_cause():
    config = EngineConfig(checkpoint=str(tiny_checkpoint()), device="cpu", slots=1, max_pending_frames=500,
                          behind_frames=2, behind_grace_s=0.05)
    rt = EngineRuntime.create(config)

    async def scenario():
        session = await rt.open_session(SessionSpec())
        session.push_pcm(_speechless(300).reshape(-1))  # far more than the engine steps in 50 ms
        with pytest.raises(SessionClosed) as info:
            while True:
                await asyncio.wait_for(session.next_output(), 30)
        assert info.value.cause is EndCause.FELL_BEHIND
        assert "stayed behind" in str(info.value) and session.close_cause is EndCause.FELL_BEHIND
        with pytest.raises(SessionClosed) as again:
            session.push_pcm(_speechless(1).reshape(-1))
        assert again.value.cause is EndCause.FELL_BEHIND
        await session.close()

    try:
        asyncio.run(scenario())
        assert rt.stats()["sessions_ended_by_server"] == {"fell_behind": 1}
        assert rt.active_sessions == 0
    finally:
        rt.shutdown()


def test_admission_refuses_while_the_engine_misses_its_budget(runtime):
    async def scenario():
        first = await runtime.open_session(SessionSpec())
        now = time.monotonic()
        with runtime._tick_log_lock:  # as if the last ticks took 200 ms: the engine is not keeping up
            runtime._tick_log.extend((now, 200.0) for _ in range(20))
        assert "cannot take another session in real time" in runtime.admission_refusal()
        with pytest.raises(AtCapacity, match="real time"):
            await runtime.open_session(SessionSpec())
        with runtime._tick_log_lock:
            runtime._tick_log.clear()
        assert runtime.admission_refusal() is None
        second = await runtime.open_session(SessionSpec())
        await first.close()
        await second.close()

    asyncio.run(scenario())


def test_a_joining_prompt_is_prefilled_between_the_running_sessions_ticks():
    config = EngineConfig(checkpoint=str(tiny_checkpoint()), device="cpu", slots=2, prefill_chunk=4,
                          prefill_slice_ms=0.001, max_pending_frames=1000, behind_grace_s=600)
    rt = EngineRuntime.create(config)

    async def scenario():
        running = await rt.open_session(SessionSpec(sampling=SamplingParams(greedy=True)))
        running.push_pcm(_speechless(300, seed=8).reshape(-1))  # queued: a frame is due at every tick
        await asyncio.wait_for(running.next_output(), 30)
        produced = lambda: rt._live[running.slot].produced  # noqa: E731 - frames ticked for it so far
        steps_before, frames_before = rt.prefill_steps, produced()
        joining = await rt.open_session(SessionSpec(text_prompt="A long persona. " * 20))
        steps, frames_during = rt.prefill_steps - steps_before, produced() - frames_before
        assert steps >= joining.prompt_positions // 4  # one chunk of 4 positions per step
        assert frames_during >= steps // 2  # the running session was ticked between the prefill's steps
        await joining.close()
        await running.close()

    try:
        asyncio.run(scenario())
    finally:
        rt.shutdown()


def test_a_client_that_leaves_during_its_prefill_leaves_no_slot_behind():
    config = EngineConfig(checkpoint=str(tiny_checkpoint()), device="cpu", slots=1, prefill_chunk=2,
                          prefill_slice_ms=0.001)
    rt = EngineRuntime.create(config)

    async def scenario():
        opening = asyncio.create_task(rt.open_session(SessionSpec(text_prompt="A long persona. " * 30)))
        while rt.prefill_steps == 0:  # its prefill has begun
            await asyncio.sleep(0.001)
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        for _ in range(500):  # the tick thread notices the abandoned prefill
            if not rt._prefills:
                break
            await asyncio.sleep(0.01)
        assert rt.active_sessions == 0 and not rt._live and not rt._prefills
        again = await rt.open_session(SessionSpec())  # the slot is usable again
        assert again.slot == 0
        await again.close()

    try:
        asyncio.run(scenario())
    finally:
        rt.shutdown()
