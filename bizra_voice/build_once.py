"""Making a generated model folder once per node: replicas (and test processes) that start together wait on
a file lock instead of writing the same files at once."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


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
