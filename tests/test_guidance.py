"""Guided inner monologue on the conformance model: answer tokens replace the model's words, in order."""

import numpy as np
import pytest
import torch

from bizra_voice.engine.api import SamplingParams
from bizra_voice.engine.batched import BatchedEngine, PreparedPrompt
from bizra_voice.engine.checkpoint import resolve_local
from bizra_voice.engine.loading import load_bundle
from bizra_voice.voices import VoiceCatalog, VoiceLibrary
from tests._tiny import KIT

pytestmark = pytest.mark.skipif(not KIT.exists(), reason="conformance kit not found")
PAD_IDS = (0, 3)


@pytest.fixture(scope="module")
def setup():
    bundle = load_bundle(resolve_local(KIT / "model"), torch.device("cpu"), torch.float32)
    library = VoiceLibrary(VoiceCatalog(KIT / "voices"), bundle.voice_mimi, bundle.lm.dim)
    prompt = PreparedPrompt(library.prepare("TINYF0.pt"),
                            bundle.tokenizer.encode("<system> You answer questions. <system>"))
    pcm = (0.1 * np.random.default_rng(3).standard_normal((60, 1920))).astype(np.float32)
    return bundle, prompt, pcm


def _run(bundle, prompt, pcm, guide_at=None, answer=(), cancel_at=None):
    engine = BatchedEngine(bundle, 2)
    engine.start_slot(1, prompt, SamplingParams(seed=11))
    rows = []
    for t in range(pcm.shape[0]):
        if t == guide_at:
            assert engine.set_guidance(1, list(answer)) == len(answer)
        if t == cancel_at:
            engine.cancel_guidance(1)
        r = engine.tick(np.stack([pcm[t], pcm[t]]), np.array([False, True]))
        rows.append((int(r.text[1]), bool(r.guided[1]), int(r.model_text[1])))
    engine.close()
    return rows


def test_answer_tokens_replace_only_word_tokens_in_order(setup):
    bundle, prompt, pcm = setup
    answer = [int(t) for t in bundle.tokenizer.encode("The capital of France is Paris.")]
    base = _run(bundle, prompt, pcm)
    rows = _run(bundle, prompt, pcm, guide_at=10, answer=answer)
    assert rows[:10] == base[:10]  # nothing changes before the guidance starts
    said = [text for text, guided, _ in rows if guided]
    assert said == answer, "every answer token is said once, in order"
    remaining = len(answer)
    # The token output at frame t was sampled at the step of frame t-1, so guidance set before frame 10
    # shows from frame 11 on.
    assert not rows[10][1]
    for text, guided, model in rows[11:]:
        if remaining == 0:
            assert not guided
            continue
        model_word = model not in PAD_IDS
        assert guided == model_word, "guidance lands exactly where the model chose a word"
        if not guided:
            assert text == model  # pauses stay the model's own
        remaining -= guided


def test_barge_in_cancels_the_rest(setup):
    bundle, prompt, pcm = setup
    answer = [int(t) for t in bundle.tokenizer.encode("one two three four five six seven eight nine ten " * 3)]
    rows = _run(bundle, prompt, pcm, guide_at=5, answer=answer, cancel_at=25)
    said_before = [t for t, g, _ in rows[:26] if g]  # frame 25 shows the token sampled before the cancel
    assert said_before == answer[: len(said_before)]
    assert 0 < len(said_before) < len(answer)
    assert not any(g for _, g, _ in rows[26:])
