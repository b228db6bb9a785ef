"""Batched slots: each session's stream is exactly its solo stream, whoever shares the batch and when."""

import numpy as np
import pytest
import torch

from bizra_voice.engine.api import SamplingParams
from bizra_voice.engine.batched import BatchedEngine, PreparedPrompt
from bizra_voice.engine.checkpoint import resolve_local
from bizra_voice.engine.loading import load_bundle
from bizra_voice.voices import VoiceCatalog, VoiceLibrary
from tests._tiny import tiny_checkpoint

FRAMES = 14


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(resolve_local(tiny_checkpoint()), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def sessions(bundle):
    library = VoiceLibrary(VoiceCatalog(tiny_checkpoint() / "voices"), bundle.voice_mimi, bundle.lm.dim)
    prompts = ["You are a calm guide.", "You sell bread.", "Answer with numbers.", "You are BIZRA."]
    voices = ["NATM1", "NATF0", "NATF0", "NATM1"]
    rng = np.random.default_rng(42)
    out = []
    for i, (text, voice) in enumerate(zip(prompts, voices, strict=True)):
        tokens = bundle.tokenizer.encode(f"<system> {text} <system>")
        pcm = (0.1 * rng.standard_normal((FRAMES, 1920))).astype(np.float32)
        # Sessions 0-1 greedy, 2-3 sampled with their own seeds and parameters.
        sampling = SamplingParams(greedy=True) if i < 2 else SamplingParams(seed=1000 + i, text_temperature=0.9,
                                                                           audio_topk=50 + i)
        out.append((PreparedPrompt(library.prepare(voice), tokens), sampling, pcm))
    return out


def _solo(bundle, session):
    prompt, sampling, pcm = session
    engine = BatchedEngine(bundle, 1)
    engine.start_slot(0, prompt, sampling)
    texts, agents, audio = [], [], []
    for t in range(FRAMES):
        r = engine.tick(pcm[t][None], np.ones(1, bool))
        texts.append(int(r.text[0]))
        agents.append(r.agent[0].tolist())
        audio.append(r.pcm[0])
    engine.close()
    return texts, agents, np.concatenate(audio)


def test_batch_of_four_with_joins_and_leaves_matches_solo_runs(bundle, sessions):
    solo = [_solo(bundle, s) for s in sessions]
    engine = BatchedEngine(bundle, 4)
    # Session i joins at global tick join[i] in slot slot_of[i]; session 0 leaves early and its slot is reused.
    join = {0: 0, 1: 3, 2: 7, 3: 16}
    slot_of = {0: 0, 1: 2, 2: 1, 3: 0}
    progress = {i: 0 for i in range(len(sessions))}
    got = {i: ([], [], []) for i in progress}
    live: dict[int, int] = {}
    for tick in range(60):
        for i, at in join.items():
            if at == tick:
                engine.start_slot(slot_of[i], sessions[i][0], sessions[i][1])
                live[slot_of[i]] = i
        pcm = np.zeros((4, 1920), dtype=np.float32)
        active = np.zeros(4, dtype=bool)
        for slot, i in live.items():
            # Session 1 skips every third tick (a late network frame): its row must simply pause.
            if i == 1 and tick % 3 == 0:
                continue
            pcm[slot] = sessions[i][2][progress[i]]
            active[slot] = True
        if not active.any() and not live:
            if all(p == FRAMES for p in progress.values()):
                break
            continue
        r = engine.tick(pcm, active)
        for slot, i in list(live.items()):
            if active[slot]:
                got[i][0].append(int(r.text[slot]))
                got[i][1].append(r.agent[slot].tolist())
                got[i][2].append(r.pcm[slot].copy())
                progress[i] += 1
                if progress[i] == FRAMES:
                    engine.reset_slot(slot)
                    del live[slot]
    engine.close()
    for i in progress:
        assert progress[i] == FRAMES
        assert got[i][0] == solo[i][0], f"session {i} text differs"
        assert got[i][1] == solo[i][1], f"session {i} audio codes differ"
        np.testing.assert_allclose(np.concatenate(got[i][2]), solo[i][2], atol=1e-5)


def test_seeded_sampling_is_reproducible_and_seed_dependent(bundle, sessions):
    prompt, _, pcm = sessions[2]
    runs = [_solo(bundle, (prompt, SamplingParams(seed=s), pcm))[:2] for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_idle_warm_up_ticks_at_every_prefix_size_change_nothing(bundle, sessions):
    """``warm_buckets`` (run on GPUs to capture each bucket's CUDA graphs) must leave live rows untouched."""
    prompt, sampling, pcm = sessions[0]
    streams = []
    for warm in (False, True):
        engine = BatchedEngine(bundle, 4)
        engine.start_slot(2, prompt, sampling)  # row 2: stepped in the 4-row bucket
        out = []
        for t in range(FRAMES):
            if warm and t in (0, 5):
                assert engine.warm_buckets() == [1, 2, 4]
            active = np.zeros(4, dtype=bool)
            active[2] = True
            frame = np.zeros((4, 1920), dtype=np.float32)
            frame[2] = pcm[t]
            r = engine.tick(frame, active)
            out.append((int(r.text[2]), r.agent[2].tolist()))
            assert not r.produced[[0, 1, 3]].any()
        engine.close()
        streams.append(out)
    assert streams[0] == streams[1] == list(zip(*_solo(bundle, sessions[0])[:2], strict=True))
