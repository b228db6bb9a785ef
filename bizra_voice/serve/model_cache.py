"""What the Qwen and Whisper deployments share: picking their device and making dev models once per node."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def pick_device(requested: str, gpu_memory_fraction: float | None) -> str:
    """``auto`` -> cuda when visible; on CUDA cap this process's share (fractional num_gpus only schedules)."""
    import torch

    device = requested
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and gpu_memory_fraction:
        torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction)
    return device


@contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def make_once(directory: str | Path, marker: str, version: int, build: Callable[[Path], None]) -> Path:
    """Run ``build(directory)`` unless a marker of this version says it was done; replicas starting together
    on one node wait on a file lock instead of writing the same files at once."""
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    with _node_lock(path / ".lock"):
        done = path / marker
        if done.exists() and json.loads(done.read_text()).get("version") == version:
            return path
        build(path)
        done.write_text(json.dumps({"version": version, "random_weights": True}))
    return path


def ensure_under_lock(folder: Path, make: Callable[[Path], Path]) -> Path:
    """Call an idempotent generator under the node lock (``bizra_voice.tiny.ensure_tiny`` for the engine)."""
    with _node_lock(folder.parent / f".{folder.name}.lock"):
        return make(folder)
