"""The README's commands, run for real: ``serve run serve_config.cpu.yaml`` and the GPU profile's fail-fast.

Each runs ``serve run`` in its own process group (it starts its own local Ray cluster) on a spare port, so
the session-wide cluster of the other serving tests is untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def profile_copy(tmp_path: Path, name: str, port: int) -> Path:
    """The shipped profile with only the HTTP port changed."""
    config = yaml.safe_load((REPO / name).read_text())
    config["http_options"]["port"] = port
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def serve_run(config: Path, tmp_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", NO_TORCH_COMPILE="1",
               BIZRA_VOICE_CACHE=str(tmp_path / "cache"))
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(["serve", "run", str(config)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM the CLI's process group (a backgrounded ``serve run`` ignores SIGINT); return its output."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


def test_cpu_profile_serves_index_within_60s(tmp_path):
    port = 8011
    proc = serve_run(profile_copy(tmp_path, "serve_config.cpu.yaml", port), tmp_path)
    started = time.monotonic()
    served_after = None
    try:
        while time.monotonic() - started < 60 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status == 200 and b"BIZRA" in resp.read():
                        served_after = time.monotonic() - started
                        break
            except Exception:
                time.sleep(0.5)
    finally:
        out = stop(proc)
    assert served_after is not None, out[-4000:]
    assert served_after < 60
    assert "audio is noise" in out  # the CPU profile says so in its log


def test_gpu_profile_without_gpu_fails_fast_with_one_sentence(tmp_path):
    from bizra_voice.serve.preflight import NO_GPU_SENTENCE, local_cuda

    if local_cuda():
        pytest.skip("a GPU is present: the GPU profile would start")
    proc = serve_run(profile_copy(tmp_path, "serve_config.yaml", 8013), tmp_path)
    try:
        proc.wait(timeout=90)
    finally:
        out = stop(proc)
    assert NO_GPU_SENTENCE in out, out[-4000:]
    assert "serve_config.cpu.yaml" in NO_GPU_SENTENCE
    assert "Traceback" not in out, out[-4000:]
