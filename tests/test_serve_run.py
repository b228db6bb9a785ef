"""The README's commands, run for real: ``serve run serve_config.cpu.yaml``, and the one-sentence exits of
the GPU profile without a GPU and of a config with a misspelt key.

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
# Generous on purpose: a busy 2-core machine has taken 80 s to start Ray alone (its dashboard timing out).
STARTUP_BOUND_S = 300


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


def run_to_exit(proc: subprocess.Popen) -> tuple[float | None, str]:
    """(seconds until ``serve run`` exited by itself, or None if it still ran after STARTUP_BOUND_S; its
    output). The output is read meanwhile, so a full pipe never stalls the CLI."""
    started = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=STARTUP_BOUND_S)
    except subprocess.TimeoutExpired:
        return None, stop(proc)
    return time.monotonic() - started, out


def assert_no_traceback_of_ours(out: str) -> None:
    """The failure is the sentence, not a Python traceback through bizra_voice (Ray may log its own)."""
    assert "bizra_voice" + os.sep not in "".join(line for line in out.splitlines(keepends=True)
                                                  if line.lstrip().startswith("File ")), out[-4000:]
    assert "ConfigError" not in out and "ProfileUnavailable" not in out, out[-4000:]


def test_cpu_profile_serves_index(tmp_path):
    port = free_port()
    proc = serve_run(profile_copy(tmp_path, "serve_config.cpu.yaml", port), tmp_path)
    started = time.monotonic()
    served_after = None
    try:
        while time.monotonic() - started < STARTUP_BOUND_S and proc.poll() is None:
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
    print(f"cold start: `serve run serve_config.cpu.yaml` served / after {served_after:.1f} s")
    assert "audio is noise" in out  # the CPU profile says so in its log


def test_misspelt_key_is_one_sentence_on_the_console_and_a_non_zero_exit(tmp_path):
    """A user's copy of the CPU profile with a typo under ``args:``: ``serve run`` prints the sentence
    naming the key and its right spelling, and exits by itself with a failure status."""
    from bizra_voice.app import load_config
    from bizra_voice.config_errors import ConfigError

    path = profile_copy(tmp_path, "serve_config.cpu.yaml", free_port())
    config = yaml.safe_load(path.read_text())
    args = config["applications"][0]["args"]
    args["transcribr"] = args.pop("transcriber")
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as expected:  # the same sentence in-process
        load_config(args)
    sentence = str(expected.value)
    assert sentence == "Unknown key `args.transcribr` — did you mean `transcriber`?"

    proc = serve_run(path, tmp_path)
    exited_after, out = run_to_exit(proc)
    assert exited_after is not None, f"serve run still running after {STARTUP_BOUND_S} s:\n{out[-4000:]}"
    print(f"`serve run` of a misspelt key exited (status {proc.returncode}) after {exited_after:.1f} s")
    assert proc.returncode != 0
    assert sentence in out, out[-4000:]
    assert out.count(sentence) == 1, out[-4000:]
    assert "WorkerCrashedError" not in out and "worker died" not in out.lower(), out[-4000:]
    assert_no_traceback_of_ours(out)


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
        deadline = time.monotonic() + STARTUP_BOUND_S
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
    exited_after, out = run_to_exit(proc)
    assert exited_after is not None, out[-4000:]
    assert proc.returncode != 0
    assert NO_GPU_SENTENCE in out, out[-4000:]
    assert "serve_config.cpu.yaml" in NO_GPU_SENTENCE
    assert_no_traceback_of_ours(out)
