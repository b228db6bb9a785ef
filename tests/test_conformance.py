"""The engine reproduces the PersonaPlex reference's golden vectors bit for bit."""

import subprocess
import sys

import pytest

from bizra_voice.conformance import run_kit
from tests._tiny import KIT

pytestmark = pytest.mark.skipif(not (KIT / "cases" / "index.json").exists(), reason="conformance kit not found")


def test_every_case_of_the_kit_passes():
    results = run_kit(KIT)
    assert {r.name for r in results} >= {"logits", "prompted_pt", "prompted_wav", "batch2", "audio_roundtrip",
                                         "free_run"}
    failed = [f"{r.name}: {r.detail}" for r in results if not r.passed]
    assert not failed, failed


def test_cli_prints_a_table_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "bizra_voice.cli", "conformance", str(KIT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6/6 cases passed" in proc.stdout


def test_cli_rejects_a_folder_that_is_not_a_kit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bizra_voice.cli", "conformance", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "not a conformance kit" in proc.stderr
