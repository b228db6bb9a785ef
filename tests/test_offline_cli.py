import json
import subprocess
import sys

import numpy as np
import sphn

from tests._tiny import SPEECH_WAV, tiny_checkpoint


def _offline(tmp_path, *extra):
    out_wav, out_json = tmp_path / "out.wav", tmp_path / "out.json"
    cmd = [sys.executable, "-m", "bizra_voice.cli", "offline", "--input-wav", str(SPEECH_WAV), "--output-wav",
           str(out_wav), "--output-text", str(out_json), "--checkpoint", str(tiny_checkpoint()), "--device", "cpu",
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return proc, out_wav, out_json


def test_offline_turns_a_wav_into_a_wav(tmp_path):
    proc, out_wav, out_json = _offline(tmp_path, "--greedy", "--voice", "NATF0.wav")
    assert proc.returncode == 0, proc.stderr
    pcm, sr = sphn.read(str(out_wav))
    data_in, _ = sphn.read(str(SPEECH_WAV))
    frames = -(-data_in.shape[-1] // 1920)
    assert sr == 24000 and pcm.shape[-1] == frames * 1920
    assert np.isfinite(pcm).all() and np.abs(pcm).max() > 0
    info = json.loads(out_json.read_text())
    assert info["frames"] == frames and info["voice"] == "NATF0"
    assert info["transcript"] == "".join(p["text"] for p in info["pieces"])
    # Greedy is deterministic: a second run gives the same tokens.
    proc2, _, out_json2 = _offline(tmp_path / "again" if (tmp_path / "again").mkdir() is None else tmp_path,
                                   "--greedy", "--voice", "NATF0.wav")
    assert json.loads(out_json2.read_text())["text_tokens"] == info["text_tokens"]


def test_offline_bad_checkpoint_is_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bizra_voice.cli", "offline", "--input-wav", str(SPEECH_WAV),
                           "--output-wav", str(tmp_path / "o.wav"), "--checkpoint", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
