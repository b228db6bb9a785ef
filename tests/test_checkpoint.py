"""Every checkpoint problem ends in one sentence that says what to do."""

import json
import shutil

import pytest
import torch
from huggingface_hub import errors as hub_errors

from bizra_voice import constants as C
from bizra_voice.engine import checkpoint as ck
from bizra_voice.engine.checkpoint import CheckpointError, resolve_checkpoint, resolve_local
from bizra_voice.engine.loading import build_lm, checkpoint_dep_q, load_bundle, slice_depformer
from tests._tiny import tiny_checkpoint


@pytest.fixture()
def tiny_copy(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(), target)
    return target


def test_missing_file_names_the_file(tiny_copy):
    (tiny_copy / C.MIMI_FILENAME).unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer-e351c8d8-checkpoint125.safetensors missing from"):
        resolve_local(tiny_copy)


def test_missing_folder():
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint("/nonexistent/personaplex")


def test_not_a_repo_id():
    with pytest.raises(CheckpointError, match="neither an existing folder nor a repo id"):
        resolve_checkpoint("just-a-name")


def test_corrupt_weights(tiny_copy):
    (tiny_copy / C.LM_FILENAME).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_bundle(resolve_local(tiny_copy), torch.device("cpu"), torch.float32)


def test_mis_shaped_weights(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["lm_kwargs"]["dim"] = 48
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the PersonaPlex dimensions"):
        build_lm(resolve_local(tiny_copy), torch.device("cpu"), torch.float32)


def test_wrong_tokenizer(tiny_copy):
    (tiny_copy / C.TOKENIZER_FILENAME).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        load_bundle(resolve_local(tiny_copy), torch.device("cpu"), torch.float32)


def test_int8_needs_cuda():
    with pytest.raises(CheckpointError, match="needs a CUDA GPU"):
        load_bundle(resolve_local(tiny_checkpoint()), torch.device("cpu"), torch.float32, int8=True)


def test_slicing_keeps_the_first_eight_steps():
    from safetensors.torch import load_file

    state = load_file(str(tiny_checkpoint() / C.LM_FILENAME))
    assert checkpoint_dep_q(state) == 16
    sliced = slice_depformer(state, 16, 8)
    assert checkpoint_dep_q(sliced) == 8
    assert not any(k.startswith("depformer_emb.7.") for k in sliced)
    key = "depformer.layers.0.self_attn.in_proj_weight"
    assert sliced[key].shape[0] == state[key].shape[0] // 2
    assert torch.equal(sliced[key], state[key][: state[key].shape[0] // 2])


def _hub_error(cls, message="boom"):
    import requests

    response = requests.Response()
    response.status_code = 401
    response.url = "https://huggingface.co/x"
    try:
        return cls(message, response=response)
    except TypeError:
        return cls(message)


@pytest.mark.parametrize(("exc_cls", "token", "expected"), [
    (hub_errors.GatedRepoError, None, "is gated: accept the licence at https://huggingface.co/nvidia/personaplex-7b-v1, then export HF_TOKEN"),
    (hub_errors.GatedRepoError, "hf_x", "this HF_TOKEN has no access"),
    (hub_errors.RepositoryNotFoundError, None, "was not found (if it is gated, export HF_TOKEN"),
    (hub_errors.LocalEntryNotFoundError, "hf_x", "Cannot reach the Hugging Face hub"),
    (hub_errors.EntryNotFoundError, "hf_x", "model.safetensors is missing from nvidia/personaplex-7b-v1"),
])
def test_hub_errors_become_one_sentence(monkeypatch, exc_cls, token, expected):
    import huggingface_hub

    def fail(*_args, **_kwargs):
        raise _hub_error(exc_cls)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setattr(ck, "_cached_files", lambda *a: None)
    monkeypatch.setattr(ck, "_hub_reachable", lambda *a: True)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint(C.PERSONAPLEX_REPO)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_offline_fails_fast_without_retries(monkeypatch):
    monkeypatch.setattr(ck, "_cached_files", lambda *a: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="Cannot reach the Hugging Face hub and nvidia/personaplex-7b-v1 is "
                                              "not in the local cache"):
        resolve_checkpoint(C.PERSONAPLEX_REPO)


def test_voices_archive_is_extracted_once_and_only_audio(tmp_path):
    import io
    import tarfile

    archive = tmp_path / C.VOICES_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("voices/NATF0.pt", b"a"), ("voices/../../evil.pt", b"b"), ("voices/readme.txt", b"c")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    target = ck.extract_voices(archive, str(tmp_path / "cache"))
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == ["NATF0.pt", "evil.pt"]
    assert not (tmp_path / "evil.pt").exists()
    assert ck.extract_voices(archive, str(tmp_path / "cache")) == target
