"""The README's commands, run for real: ``serve run serve_config.cpu.yaml`` and the GPU profile's fail-fast.

Each runs ``serve run`` in its own process group (it starts its own local Ray cluster) on a spare port, so
the session-wide cluster of the other serving tests is untouched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests._ports import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def profile_copy(tmp_path: Path, name: str, port: int, **http_options: str) -> Path:
    """The shipped profile with only the HTTP port (and any given ``http_options``) changed."""
    config = yaml.safe_load((REPO / name).read_text())
    config["http_options"].update(port=port, **http_options)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def serve_run(config: Path, tmp_path: Path, cwd: Path = REPO) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled", NO_TORCH_COMPILE="1",
               BIZRA_VOICE_CACHE=str(tmp_path / "cache"))
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(["serve", "run", str(config)], cwd=cwd, env=env, stdout=subprocess.PIPE,
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
    port = free_port()
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


def test_cpu_profile_over_tls_with_a_made_certificate(tmp_path):
    """The README's LAN recipe: ``bizra-voice make-cert`` then ``serve run`` with Serve's ssl_* http_options;
    the page and a session are reached over https/wss with the certificate, plain http is not served."""
    import asyncio
    import ssl

    import websockets

    port = free_port()
    # `bizra-voice make-cert` (the console script runs bizra_voice.cli:main), from the checkout under test
    made = subprocess.run([sys.executable, "-m", "bizra_voice.cli", "make-cert", "./tls", "--host", "localhost"],
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    # relative paths, as in the README, resolved against the directory `serve run` is started from
    config = profile_copy(tmp_path, "serve_config.cpu.yaml", port, ssl_certfile="./tls/cert.pem",
                          ssl_keyfile="./tls/key.pem")
    trusting = ssl.create_default_context(cafile=str(tmp_path / "tls" / "cert.pem"))  # hostname: localhost
    proc = serve_run(config, tmp_path, cwd=tmp_path)
    page = None
    try:
        deadline = time.monotonic() + 90
        while page is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"https://localhost:{port}/", timeout=2, context=trusting) as resp:
                    page = resp.read()
            except Exception:
                time.sleep(0.5)
        assert page is not None and b"BIZRA" in page

        async def session() -> tuple[bytes, int | None]:
            async with websockets.connect(f"wss://localhost:{port}/api/chat", ssl=trusting, compression=None,
                                          open_timeout=30) as ws:
                first = await asyncio.wait_for(ws.recv(), 60)
                await ws.close()
                return first, ws.close_code

        first, code = asyncio.run(session())
        assert first == b"\x00" and code == 1000
        with pytest.raises(OSError):  # a TLS port drops a plain-http request: no HTTP response
            urllib.request.urlopen(f"http://localhost:{port}/", timeout=5).read()
        with pytest.raises(urllib.error.URLError) as refused:  # the system store does not trust it
            urllib.request.urlopen(f"https://localhost:{port}/", timeout=5, context=ssl.create_default_context())
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError), refused.value
    finally:
        out = stop(proc)
    assert page is not None, out[-4000:]


def test_gpu_profile_without_gpu_fails_fast_with_one_sentence(tmp_path):
    from bizra_voice.serve.preflight import NO_GPU_SENTENCE, local_cuda

    if local_cuda():
        pytest.skip("a GPU is present: the GPU profile would start")
    proc = serve_run(profile_copy(tmp_path, "serve_config.yaml", free_port()), tmp_path)
    try:
        proc.wait(timeout=90)
    finally:
        out = stop(proc)
    assert NO_GPU_SENTENCE in out, out[-4000:]
    assert "serve_config.cpu.yaml" in NO_GPU_SENTENCE
    assert "Traceback" not in out, out[-4000:]
