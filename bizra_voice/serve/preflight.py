"""Fail-fast checks that run inside ``build_app`` before anything is deployed.

``serve run config.yaml`` builds the application in a Ray task, not in the CLI process, and the CLI keeps
blocking when the build fails (printing the controller's traceback every few seconds). So a profile that
cannot run here prints one sentence and asks the ``serve run`` process that started this local cluster
to shut down, the same way Ctrl-C would.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

NO_GPU_SENTENCE = (
    "This profile needs a CUDA GPU and none is visible to Ray here; "
    "for the CPU dev profile run `serve run serve_config.cpu.yaml`."
)


class ProfileUnavailable(SystemExit):
    """Raised when the requested profile cannot run on this cluster (message = the one sentence)."""


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster declares (0 when Ray is not initialised)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def local_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 4 (ppid) follows the parenthesised command name, which may itself contain spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def find_serve_run_ancestor(pid: int | None = None) -> int | None:
    """The pid of a ``serve run`` CLI among this process's ancestors (Linux /proc), else None."""
    current = _parent(pid or os.getpid())
    while current and current > 1:
        argv = _cmdline(current)
        names = [Path(a).name for a in argv[:3]]
        if "serve" in names and "run" in argv[1:4]:
            return current
        current = _parent(current)
    return None


def abort_profile(sentence: str) -> None:
    """Print ``sentence`` once, stop a local ``serve run`` that started us, and raise ProfileUnavailable."""
    print(sentence, file=sys.stderr, flush=True)
    cli = find_serve_run_ancestor()
    if cli is not None:
        # SIGINT = the CLI's own Ctrl-C path (serve.shutdown + exit). A backgrounded CLI ignores SIGINT,
        # so follow with SIGTERM if it is still there; the local cluster (and this worker) go with it.
        os.kill(cli, signal.SIGINT)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and Path(f"/proc/{cli}").exists():
            time.sleep(0.2)
        if Path(f"/proc/{cli}").exists():
            os.kill(cli, signal.SIGTERM)
            time.sleep(30.0)
    raise ProfileUnavailable(sentence)
