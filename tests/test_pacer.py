"""The audio pacer: bursts are played at the audio's own rate, real-time input passes at once, the buffer is
bounded (the excess refused and counted), and a caught-up consumer may drain a backlog early.

Time is a fake clock that the test moves; ``kick`` makes the pacer look at it again, so every assertion is
about what the pacer decided at a given instant, never about how fast this machine is.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bizra_voice.serve.pacer import AudioPacer

FRAME = 10  # samples per frame, at 1000 Hz: a 10 ms frame
RATE = 1000
T = FRAME / RATE


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Harness:
    """A pacer on a fake clock, its sink recording (time, frame)."""

    def __init__(self, **kwargs) -> None:
        self.clock = FakeClock()
        self.pacer = AudioPacer(frame_samples=FRAME, sample_rate=RATE, clock=self.clock, **kwargs)
        self.played: list[tuple[float, np.ndarray]] = []
        self.task: asyncio.Task | None = None

    async def sink(self, frame: np.ndarray) -> None:
        self.played.append((self.clock.t, frame.copy()))

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.pacer.run(self.sink))
        await self.settle()
        return self

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def settle(self) -> None:
        """Let the pacer act on the current fake time until it has nothing more to do now."""
        quiet = 0
        while quiet < 20:
            before = len(self.played)
            self.pacer.kick()
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self.played) == before else 0

    async def at(self, t: float) -> int:
        self.clock.t = t
        await self.settle()
        return len(self.played)


def ramp(frames: float, start: int = 0) -> np.ndarray:
    return (np.arange(int(frames * FRAME)) + start).astype(np.float32)


def test_a_burst_is_played_one_frame_per_period_after_the_slack():
    async def scenario():
        async with Harness(slack_frames=1) as h:
            assert h.pacer.offer(ramp(10)).refused == 0
            counts = [await h.at(k * T) for k in range(10)]
            return counts, h

    counts, h = asyncio.run(scenario())
    assert counts == [2, 3, 4, 5, 6, 7, 8, 9, 10, 10]  # 1 + slack at once, then one per period
    joined = np.concatenate([f for _, f in h.played])
    assert np.array_equal(joined, ramp(10))  # in order, nothing lost or repeated


def test_real_time_input_passes_at_once_and_any_chunking_makes_whole_frames():
    rng = np.random.default_rng(3)

    async def scenario():
        async with Harness(slack_frames=1) as h:
            sent = 0
            for k in range(30):
                jitter = float(rng.uniform(0, 0.5)) * T  # late, never early
                h.clock.t = k * T + jitter
                h.pacer.offer(ramp(1, start=sent))
                sent += FRAME
                assert await h.at(h.clock.t) == k + 1, k  # played on arrival: no added latency
            # uneven chunks: 2.5 + 0.7 + 0.8 frames -> 4 whole frames, in order
            h.pacer.offer(ramp(2.5, start=sent))
            h.pacer.offer(ramp(0.7, start=sent + 25))
            assert h.pacer.buffered_s == pytest.approx(3.2 * T)  # offered, not yet played (a partial frame too)
            h.pacer.offer(ramp(0.8, start=sent + 32))
            for j in range(1, 6):
                await h.at(30 * T + j * T)
            return h

    h = asyncio.run(scenario())
    assert len(h.played) == 34 and h.pacer.frames_early == 0
    assert np.array_equal(np.concatenate([f for _, f in h.played]), ramp(34))


def test_never_faster_than_real_time_plus_the_slack():
    """Random bursts and gaps: in every window, frames played <= window / period + 1 + slack."""
    rng = np.random.default_rng(7)
    slack = 2

    async def scenario():
        async with Harness(slack_frames=slack, max_buffered_s=10.0) as h:
            t = 0.0
            for _ in range(200):
                if rng.random() < 0.2:
                    h.pacer.offer(ramp(float(rng.integers(1, 12))))
                t += float(rng.uniform(0.1, 1.5)) * T
                await h.at(t)
            return h

    h = asyncio.run(scenario())
    times = np.array([t for t, _ in h.played])
    assert len(times) > 50
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            assert j - i <= (times[j] - times[i]) / T + 1e-6 + slack, (i, j)


def test_the_buffer_is_bounded_and_the_excess_refused():
    async def scenario():
        async with Harness(max_buffered_s=5 * T) as h:  # 5 frames may wait
            first = h.pacer.offer(ramp(4))
            second = h.pacer.offer(ramp(3, start=40))  # 2 frames over
            refused_while_full = h.pacer.samples_refused
            for k in range(6):
                await h.at(k * T)
            third = h.pacer.offer(ramp(1, start=70))  # room again once played
            await h.at(6 * T)
            return first, second, refused_while_full, third, h

    first, second, refused_while_full, third, h = asyncio.run(scenario())
    assert (first.accepted, first.refused) == (40, 0)
    assert (second.accepted, second.refused) == (10, 20)
    assert refused_while_full == 20 and third.refused == 0
    assert np.array_equal(np.concatenate([f for _, f in h.played]), np.concatenate([ramp(5), ramp(1, start=70)]))


def test_a_caught_up_consumer_drains_a_backlog_early():
    """The audio that piled up while the consumer was opening goes as fast as the consumer takes it."""
    pending = {"frames": 0}  # given to the consumer, not yet taken by it

    async def scenario():
        h = Harness(slack_frames=1, caught_up=lambda: pending["frames"] == 0)

        async def consumer(frame):
            pending["frames"] += 1
            await h.sink(frame)

        h.pacer.offer(ramp(12))
        task = asyncio.create_task(h.pacer.run(consumer))
        await h.settle()
        given_at_once = len(h.played)
        while pending["frames"]:  # the consumer takes one frame at a time, all at t = 0
            pending["frames"] -= 1
            await h.settle()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return h, given_at_once

    h, given_at_once = asyncio.run(scenario())
    assert given_at_once == 2  # 1 + slack were due; the rest waits for the consumer, never queues at it
    assert len(h.played) == 12 and all(t == 0.0 for t, _ in h.played)
    assert h.pacer.frames_early == 10


def test_a_consumer_that_has_not_caught_up_gets_the_schedule():
    async def scenario():
        async with Harness(slack_frames=0, caught_up=lambda: False) as h:
            h.pacer.offer(ramp(5))
            return [await h.at(k * T) for k in range(6)], h

    counts, h = asyncio.run(scenario())
    assert counts == [1, 2, 3, 4, 5, 5] and h.pacer.frames_early == 0


def test_a_sink_error_ends_the_run():
    async def scenario():
        pacer = AudioPacer(frame_samples=FRAME, sample_rate=RATE)

        async def sink(frame):
            raise RuntimeError("the engine session ended")

        pacer.offer(ramp(1))
        with pytest.raises(RuntimeError, match="ended"):
            await asyncio.wait_for(pacer.run(sink), 10)

    asyncio.run(scenario())
