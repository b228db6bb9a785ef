"""The tick thread and the asyncio session handles: capacity, framing, release, clear request errors."""

import asyncio

import numpy as np
import pytest

from bizra_voice.engine.api import AtCapacity, BadSessionRequest, SamplingParams, SessionClosed, SessionSpec
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
