"""Long sessions: no time cap; past the context window the persona is re-anchored (tiny model, short context)."""

import asyncio
import json
import shutil

import numpy as np
import pytest
import sphn
import torch

from bizra_voice.engine.api import SamplingParams, SessionSpec
from bizra_voice.engine.batched import BatchedEngine
from bizra_voice.engine.checkpoint import resolve_local
from bizra_voice.engine.config import EngineConfig
from bizra_voice.engine.loading import load_bundle
from bizra_voice.engine.runtime import EngineRuntime, LoadedModels
from tests._tiny import tiny_checkpoint

CONTEXT = 96


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """The tiny checkpoint with a 96-frame context and a 0.5 s voice, so a prompt is ~30 frames."""
    folder = tmp_path_factory.mktemp("short") / "ckpt"
    shutil.copytree(tiny_checkpoint(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["lm_kwargs"]["context"] = CONTEXT
    (folder / "config.json").write_text(json.dumps(config))
    pcm, sr = sphn.read(str(folder / "voices" / "NATF0.wav"))
    sphn.write_wav(str(folder / "voices" / "SHORT.wav"), pcm[0, : sr // 2], sr)
    return folder


def _config(folder, **kw):
    return EngineConfig(checkpoint=str(folder), device="cpu", default_voice="SHORT", reanchor_margin=16, **kw)


def _frames(n, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal((n, 1920))).astype(np.float32)


def test_reanchoring_with_the_whole_history_is_a_no_op(short_context):
    """Re-anchor replays prompt + every frame so far: the continuation must equal the un-anchored one.

    float64, so the prefill-versus-step rounding cannot flip a near-tie of the random model's logits.
    """
    models = LoadedModels.load(_config(short_context, reanchor_history=40, dtype="float64"))
    prompt = models.prepare(SessionSpec(text_prompt="Be calm.", voice="SHORT"))
    pcm = _frames(40)
    streams = []
    for anchor in (False, True):
        engine = BatchedEngine(models.bundle, 2)
        engine.keep_history(40, 16)
        engine.start_slot(1, prompt, SamplingParams(greedy=True))
        out = []
        for t in range(40):
            if anchor and t == 25:
                before = int(engine.positions[1])
                assert engine.reanchor(1) == before
            r = engine.tick(np.stack([pcm[t], pcm[t]]), np.array([False, True]))
            out.append((int(r.text[1]), r.agent[1].tolist()))
        engine.close()
        streams.append(out)
    assert streams[0] == streams[1]


def test_a_chunked_reanchor_with_ticks_in_between_is_a_no_op(short_context):
    """The re-anchor prefills in small chunks while the row keeps ticking; its last step appends the frames
    produced meanwhile. With the whole history replayed the continuation still equals the un-anchored one."""
    models = LoadedModels.load(_config(short_context, reanchor_history=60, dtype="float64"))
    prompt = models.prepare(SessionSpec(text_prompt="Be calm.", voice="SHORT"))
    pcm = _frames(45, seed=4)
    streams, steps_taken = [], 0
    for anchor in (False, True):
        engine = BatchedEngine(models.bundle, 2)
        engine.keep_history(60, 16)
        engine.prefill_chunk = 8  # a ~50-position context takes several steps
        engine.start_slot(1, prompt, SamplingParams(greedy=True))
        steps = None
        out = []
        for t in range(45):
            if anchor and t == 20:
                steps = engine.reanchor_steps(1)
            if steps is not None:
                if next(steps, "done") == "done":
                    steps = None
                else:
                    steps_taken += 1
                    assert not engine.needs_reanchor(1)  # never a second one while this one runs
            r = engine.tick(np.stack([pcm[t], pcm[t]]), np.array([False, True]))
            out.append((int(r.text[1]), r.agent[1].tolist()))
        assert steps is None, "the re-anchor did not finish"
        engine.close()
        streams.append(out)
    assert steps_taken >= 4  # it really was spread over ticks
    assert streams[0] == streams[1]


def test_runs_ten_times_its_context_and_stays_inside_it(short_context):
    config = _config(short_context, slots=2, reanchor_history=20, max_pending_frames=2000)
    runtime = EngineRuntime.create(config)
    frames = 10 * CONTEXT + 40
    pcm = _frames(frames, seed=1)

    async def scenario():
        long = await runtime.open_session(SessionSpec(text_prompt="Be calm.", sampling=SamplingParams(seed=3)))
        got = 0
        max_position = 0
        for t in range(frames):
            long.push_pcm(pcm[t])
            out = await asyncio.wait_for(long.next_output(), 10)
            assert out.frame == got and np.isfinite(out.pcm).all()
            got += 1
            max_position = max(max_position, int(runtime.engine.positions[long.slot]))
        await long.close()
        return got, max_position, long.reanchors

    try:
        got, max_position, reanchors = asyncio.run(scenario())
    finally:
        runtime.shutdown()
    assert got == frames  # no frame lost, no time cap
    assert max_position < CONTEXT  # never slides past the window: the prompt stays in context
    assert max_position <= CONTEXT - 16 + 8  # re-anchors run between ticks: a few frames into the margin
    assert reanchors >= 10


def test_a_neighbour_reanchoring_does_not_disturb_a_session(short_context):
    models = LoadedModels.load(_config(short_context))
    prompt = models.prepare(SessionSpec(text_prompt="Be calm.", voice="SHORT"))
    pcm = _frames(30, seed=2)

    def run(with_neighbour):
        engine = BatchedEngine(models.bundle, 2)
        engine.keep_history(20, 16)
        engine.start_slot(0, prompt, SamplingParams(greedy=True))
        if with_neighbour:
            engine.start_slot(1, prompt, SamplingParams(seed=9))
        out = []
        for t in range(30):
            if with_neighbour and t in (5, 12, 20):
                engine.reanchor(1)
            r = engine.tick(np.stack([pcm[t], pcm[29 - t]]), np.array([True, with_neighbour]))
            out.append((int(r.text[0]), r.agent[0].tolist()))
        engine.close()
        return out

    assert run(True) == run(False)


def test_bundle_context_comes_from_the_checkpoint(short_context):
    bundle = load_bundle(resolve_local(short_context), torch.device("cpu"), torch.float32)
    assert bundle.context == CONTEXT


def test_a_live_prompt_change_puts_the_new_persona_and_voice_at_the_start_of_the_context(short_context):
    """``reprompt_steps`` (a live persona/voice change): afterwards the row's context begins with exactly
    what a fresh session of the new prompt prefills (KV cache equal over the prompt), followed by the
    conversation so far; a neighbour is not disturbed."""
    models = LoadedModels.load(_config(short_context, reanchor_history=40, dtype="float64"))
    old = models.prepare(SessionSpec(text_prompt="Be calm.", voice="SHORT"))
    new = models.prepare(SessionSpec(text_prompt="You are a cheerful baker.", voice="NATM1"))
    pcm = _frames(30, seed=5)

    def kv(engine, slot, length):
        layer = engine._lm_state["transformer.layers.0.self_attn"]
        return layer.kv_cache.cache[:, slot, :, :length].clone()

    fresh = BatchedEngine(models.bundle, 2)
    fresh.start_slot(1, new, SamplingParams(greedy=True))
    expected = kv(fresh, 1, new.length - 1)
    fresh.close()

    neighbour = []
    engine = BatchedEngine(models.bundle, 2)
    engine.keep_history(40, 16)
    engine.prefill_chunk = 8
    engine.start_slot(0, old, SamplingParams(greedy=True))
    engine.start_slot(1, old, SamplingParams(greedy=True))
    steps = None
    for t in range(30):
        if t == 10:
            steps = engine.reprompt_steps(1, new)
        if steps is not None and next(steps, "done") == "done":
            steps = None
            assert engine._prompts[1] is new
            assert torch.allclose(kv(engine, 1, new.length - 1), expected, atol=1e-9)
        r = engine.tick(np.stack([pcm[t], pcm[29 - t]]), np.array([True, True]))
        neighbour.append((int(r.text[0]), r.agent[0].tolist()))
    engine.close()
    assert steps is None, "the change did not finish"

    solo = BatchedEngine(models.bundle, 2)
    solo.keep_history(40, 16)
    solo.start_slot(0, old, SamplingParams(greedy=True))
    alone = []
    for t in range(30):
        r = solo.tick(np.stack([pcm[t], pcm[29 - t]]), np.array([True, False]))
        alone.append((int(r.text[0]), r.agent[0].tolist()))
    solo.close()
    assert neighbour == alone


def test_a_failed_live_change_keeps_the_old_prompt(short_context, monkeypatch):
    models = LoadedModels.load(_config(short_context))
    old = models.prepare(SessionSpec(text_prompt="Be calm.", voice="SHORT"))
    new = models.prepare(SessionSpec(text_prompt="Someone else.", voice="SHORT"))
    engine = BatchedEngine(models.bundle, 1)
    engine.keep_history(20, 16)
    engine.start_slot(0, old, SamplingParams(greedy=True))

    def broken(*_):
        raise RuntimeError("prefill failed")
        yield  # pragma: no cover

    monkeypatch.setattr(engine, "_prefill_steps", broken)
    with pytest.raises(RuntimeError):
        for _ in engine.reprompt_steps(0, new):
            pass
    assert engine._prompts[0] is old and 0 not in engine._reanchoring
    engine.close()
