"""Side models on the CPU must not starve the engine's tick thread (CPU dev profile).

The tiny Whisper (Transcriber) and Qwen (QwenKnowledge) run in their own replica processes next to the
VoiceServer, whose tick thread must finish each 80 ms frame within 80 ms. Left alone, each side model's
torch uses one intra-op thread per core (Ray sets no ``OMP_NUM_THREADS`` for a ``num_cpus: 0`` actor),
so a transcription (up to a few seconds on a busy machine) takes both cores and the engine falls behind.
A side model's answer may be late; the conversation's audio may not. So on the CPU a side model computes
on one thread at a lower scheduling priority (nice +10), and the engine gets the cores when it needs them.
GPU replicas are left as they are (their work is on the GPU).

Measured on the 2-core dev machine with one core kept busy by a nice-0 loop (the CI recipe's stress):
one auto-mode session streaming speech in real time, a typed question every 3.2 s (Whisper + Qwen busy),
375 ticks: 68 deadline misses (p50 42 ms, p99 over 160 ms) as shipped; 3 (p50 27 ms, p99 78 ms) with
this and the engine at nice 0. Ray starts its workers at nice 15 (``RAY_worker_niceness``), engine
included, below every ordinary process (a browser, a test client, the stress); start Ray with
``RAY_worker_niceness=0`` so the engine competes at 0 and these side models sit at 10.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("ray.serve")

SIDE_MODEL_THREADS = 1  # torch intra-op threads of a side model on the CPU
SIDE_MODEL_NICE = 10  # added niceness: CFS weighs nice 0 at 1024 and nice 10 at 110, ~9x the CPU share


def yield_cpu_to_the_engine(device: str, name: str) -> dict[str, int] | None:
    """On ``device == "cpu"``: one torch thread, and this whole process at a lower priority.

    Call it first thing in the replica's ``__init__`` (before the model runs, so torch's thread pools are
    created small; threads started later inherit the lower priority). Returns what was set, for the log.
    """
    if device != "cpu":
        return None
    import torch

    torch.set_num_threads(SIDE_MODEL_THREADS)
    with contextlib.suppress(RuntimeError):  # only settable before any inter-op work ran in this process
        torch.set_num_interop_threads(SIDE_MODEL_THREADS)
    niced = _renice_process(SIDE_MODEL_NICE)
    applied = {"torch_threads": torch.get_num_threads(), "nice": niced}
    log.info("%s on the CPU yields to the engine: %s", name, applied)
    return applied


def _renice_process(increment: int) -> int:
    """Lower the priority of every thread of this process by ``increment`` (Linux: niceness is per thread,
    so each existing thread is set; new threads inherit their creator's). Returns the main thread's nice."""
    try:
        base = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return 0
    target = min(19, base + increment)
    tasks = Path("/proc/self/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended, or a platform without per-thread nice
            os.setpriority(os.PRIO_PROCESS, tid, max(target, os.getpriority(os.PRIO_PROCESS, tid)))
    return os.getpriority(os.PRIO_PROCESS, 0)


ENGINE_NICE = 0  # the engine replica's scheduling priority: that of an ordinary process


def claim_cpu_for_the_engine() -> int | None:
    """Raise this (VoiceServer) replica back to ``ENGINE_NICE`` when Ray started it lower.

    Ray starts every worker at nice 15 (``RAY_worker_niceness``), so without this the engine's tick thread
    loses the CPU to any ordinary process on the machine (a browser, a test client, a build). Raising the
    priority needs CAP_SYS_NICE (root has it); without it the replica keeps Ray's niceness and says so —
    start Ray with ``RAY_worker_niceness=0`` then. Call it before the engine's threads start (they inherit
    it). Returns the niceness now in effect, or None when it could not be read.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError:
        return None
    if current <= ENGINE_NICE:
        return current
    tasks = Path("/proc/self/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    try:
        for tid in tids:
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, ENGINE_NICE)
    except PermissionError:
        log.warning("the engine replica runs at nice %d (Ray's worker niceness) and may not raise it; start "
                    "Ray with RAY_worker_niceness=0 so the tick thread is not starved by other processes",
                    current)
        return current
    log.info("engine replica priority raised from nice %d to %d", current, ENGINE_NICE)
    return os.getpriority(os.PRIO_PROCESS, 0)
