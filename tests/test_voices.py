import numpy as np
import pytest
import torch

from bizra_voice.engine.api import BadSessionRequest
from bizra_voice.voices import VoiceCatalog
from tests._tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def catalog():
    return VoiceCatalog(tiny_checkpoint() / "voices")


def test_listing_and_names(catalog):
    from bizra_voice.constants import PRESET_VOICES

    assert [v["name"] for v in catalog.listing()] == sorted(PRESET_VOICES)  # all 18, as real clients offer
    assert all(v["kind"] == "preset" for v in catalog.listing())
    assert catalog.resolve("NATF2").path.suffix == ".pt"  # LiveKit's PersonaPlex plugin's default
    assert catalog.resolve("NATM1").path.suffix == ".pt"
    assert catalog.resolve("NATM1.pt").name == "NATM1"  # as PersonaPlex clients send it
    assert catalog.resolve("NATF0.wav").path.suffix == ".wav"


@pytest.mark.parametrize("bad", ["../NATM1", "/etc/passwd", "NATM1/../../x", "..", "", "a" * 200, "NAT M1",
                                 "C:\\voices\\x", "%2e%2e%2fNATM1"])
def test_path_like_or_unknown_names_are_refused(catalog, bad):
    with pytest.raises(BadSessionRequest):
        catalog.resolve(bad)


def test_unknown_voice_lists_what_exists(catalog):
    with pytest.raises(BadSessionRequest, match="Unknown voice 'NATF9'; available: NATF0, NATF1, .*, VARM4"):
        catalog.resolve("NATF9")


def test_custom_folder_adds_voices_but_never_shadows_presets(tmp_path, catalog):
    import shutil

    custom = tmp_path / "custom"
    custom.mkdir()
    shutil.copy(tiny_checkpoint() / "voices" / "NATF0.wav", custom / "Grandma.wav")
    shutil.copy(tiny_checkpoint() / "voices" / "NATF0.wav", custom / "NATM1.wav")
    merged = VoiceCatalog(tiny_checkpoint() / "voices", custom)
    assert merged.resolve("Grandma").kind == "custom"
    assert merged.resolve("NATM1").kind == "preset"


def test_pt_voice_replays_exactly_like_the_wav_it_was_made_from(tmp_path):
    """make-tiny's .pt voice (embeddings + ring) gives the same conversation as Mimi-encoding its source WAV."""
    from bizra_voice.engine.api import SamplingParams
    from bizra_voice.engine.batched import BatchedEngine, PreparedPrompt
    from bizra_voice.engine.checkpoint import resolve_local
    from bizra_voice.engine.loading import load_bundle
    from bizra_voice.tiny import _synth_voice
    from bizra_voice.voices import VoiceLibrary, encode_voice_pcm

    bundle = load_bundle(resolve_local(tiny_checkpoint()), torch.device("cpu"), torch.float32)
    library = VoiceLibrary(VoiceCatalog(tiny_checkpoint() / "voices"), bundle.voice_mimi, bundle.lm.dim)
    pt_voice = library.prepare("NATM1")
    from bizra_voice.voices import VoicePrompt

    codes = encode_voice_pcm(bundle.voice_mimi, _synth_voice(2.4, 110.0, 1234))
    wav_voice = VoicePrompt(name="src", frames=codes.shape[1], codes=codes)
    tokens = bundle.tokenizer.encode("<system> You are calm. <system>")
    rng = np.random.default_rng(0)
    user = rng.integers(0, 2048, size=(12, 8))
    outputs = []
    for voice in (pt_voice, wav_voice):
        engine = BatchedEngine(bundle, 1)
        engine.start_slot(0, PreparedPrompt(voice, tokens), SamplingParams(greedy=True))
        outputs.append([engine.step_codes(user[t][None], np.ones(1, bool))[0][0].tolist() for t in range(12)])
        engine.close()
    assert outputs[0] == outputs[1]
