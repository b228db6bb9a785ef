"""Shared fixtures: one Ray cluster per pytest session and the CPU dev profile deployed on it.

Ray Serve is started for real (a WebSocket must go through the Serve proxy; Starlette's TestClient would
bypass Ray), on a free port (or ``BIZRA_TEST_PORT``) so a stray server or a second checkout never answers. ``cpu_server`` is used by the serving tests and the browser tests.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_TORCH_COMPILE", "1")
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests._ports import serve_test_port  # noqa: E402

SERVE_PORT = serve_test_port()
BASE_URL = f"http://127.0.0.1:{SERVE_PORT}"


def cpu_profile_args() -> dict:
    """The ``args:`` of serve_config.cpu.yaml (the profile under test is the shipped one)."""
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    return config["applications"][0]["args"]


def wait_http(url: str, timeout_s: float) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout_s:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s (last error: {last})")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole pytest session (reused if the process already has one)."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=8, include_dashboard=False, namespace="serve", log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "NO_TORCH_COMPILE": "1",
                                      "RAY_AUTH_MODE": "disabled"}},
        )
        started = True
    yield ray
    if started:
        from ray import serve

        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def cpu_record_dir(tmp_path_factory) -> Path:
    """Where the CPU server writes each session's decoded input PCM and text tokens (test hook)."""
    return tmp_path_factory.mktemp("session-records")


@pytest.fixture(scope="session")
def cpu_recordings_dir(tmp_path_factory) -> Path:
    """Where the CPU server stores consented recordings (recording enabled; sessions opt in with record=1)."""
    return tmp_path_factory.mktemp("recordings")


@pytest.fixture(scope="session")
def cpu_args(cpu_record_dir, cpu_recordings_dir, tmp_path_factory) -> dict:
    """The CPU profile's app args as deployed by ``cpu_server`` (record hook on, per-session cache)."""
    args = cpu_profile_args()
    args["voice_server"]["debug_record_dir"] = str(cpu_record_dir)
    args["recording"] = {"enabled": True, "dir": str(cpu_recordings_dir), "retention_days": 1}
    args.setdefault("cache_dir", os.environ.get("BIZRA_VOICE_CACHE", str(tmp_path_factory.mktemp("cache"))))
    return args


@pytest.fixture(scope="session")
def cpu_server(ray_session, cpu_args) -> str:
    """Deploy the CPU dev profile (serve_config.cpu.yaml's args) and yield its base URL."""
    from ray import serve

    from bizra_voice.app import build_app

    args = cpu_args
    serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
    started = time.monotonic()
    serve.run(build_app(args), name="bizra", route_prefix="/", blocking=False)
    wait_http(BASE_URL + "/api/health", timeout_s=120)
    os.environ["BIZRA_TEST_CPU_SERVER_START_S"] = f"{time.monotonic() - started:.2f}"
    yield BASE_URL
    serve.delete("bizra")
