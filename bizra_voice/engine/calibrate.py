"""Measuring the engine on the machine it runs on: tick time per batch size and memory per slot.

``engine.slots: auto`` (``runtime.EngineRuntime.create``) and ``bizra-voice gpu-check`` both use these.
Each probe builds a real :class:`BatchedEngine` of B rows on the loaded models (CUDA graphs captured for
that B when enabled), runs warm-up ticks, then times ``ticks`` full ticks with every row active on speech-
like noise. Tick time does not depend on the weights' values or the rows' positions (attention runs over
the whole ring cache), so a fresh state measures what a full replica will cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from bizra_voice import constants as C
from bizra_voice.engine.capacity import (
    AUTO,
    CapacityError,
    MemoryFigures,
    SlotChoice,
    TickStats,
    choose_slots,
    frame_cost_ms,
    memory_bound,
    next_probe,
    percentile,
)
from bizra_voice.engine.config import EngineConfig

log = logging.getLogger("bizra_voice.engine")

# Kept free beyond the measured needs: allocator fragmentation, the prefill's activations, CUDA context growth.
CUDA_RESERVE_BYTES = 1 << 30
HOST_RESERVE_BYTES = 2 << 30


def streaming_state_bytes(*modules: Any) -> int:
    """Bytes held by the streaming states of ``modules`` (and their submodules): KV caches, codec buffers."""
    from moshi.modules.transformer import RingKVCache

    seen: set[int] = set()
    total = 0

    def add(t: torch.Tensor) -> None:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()

    for module in modules:
        for state in module.get_streaming_state().values():
            if not dataclasses.is_dataclass(state):
                continue
            for f in dataclasses.fields(state):
                value = getattr(state, f.name, None)
                if isinstance(value, torch.Tensor):
                    add(value)
                elif isinstance(value, RingKVCache):
                    add(value.cache)
    return total


@contextlib.contextmanager
def graphs_enabled(enabled: bool) -> Iterator[None]:
    """Run with moshi's CUDA graphs on or off (its ``no_cuda_graph`` context), whatever NO_CUDA_GRAPH says."""
    from moshi.utils.compile import no_cuda_graph

    previous = os.environ.pop("NO_CUDA_GRAPH", None) if enabled else None
    try:
        if enabled:
            yield
        else:
            with no_cuda_graph():
                yield
    finally:
        if previous is not None:
            os.environ["NO_CUDA_GRAPH"] = previous


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _noise_frames(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.05 * rng.standard_normal((batch, C.FRAME_SIZE))).astype(np.float32)


def measure_batch(bundle: Any, batch: int, *, ticks: int = 24, warmup: int = 4, graphs: bool = True,
                  on_engine: Callable[[Any], None] | None = None) -> TickStats:
    """Time ``ticks`` full ticks of a fresh ``batch``-row engine (after ``warmup`` ticks, which capture the
    CUDA graphs when ``graphs``); measure its state and peak workspace. ``on_engine`` may inspect the engine
    before it is closed (gpu-check's correctness runs)."""
    from bizra_voice.engine.batched import BatchedEngine

    device = bundle.device
    graphs = graphs and device.type == "cuda"
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
    engine = BatchedEngine(bundle, batch)
    try:
        state_bytes = (torch.cuda.memory_allocated(device) - before) if cuda else \
            streaming_state_bytes(engine.lm_gen, engine.mimi)
        pcm = _noise_frames(batch)
        active = np.ones(batch, dtype=bool)
        times: list[float] = []
        with graphs_enabled(graphs):
            for _ in range(warmup):
                engine.tick(pcm, active)
            if cuda:
                _synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                steady = torch.cuda.memory_allocated(device)
            for _ in range(ticks):
                started = time.perf_counter()
                engine.tick(pcm, active)  # ends with one device->host transfer: the tick is complete
                times.append((time.perf_counter() - started) * 1000)
            workspace = (torch.cuda.max_memory_allocated(device) - steady) if cuda else 0
        if on_engine is not None:
            on_engine(engine)
    finally:
        engine.close()
        del engine
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return TickStats(batch=batch, graphs=graphs, ticks=len(times), p50_ms=round(percentile(times, 0.5), 3),
                     p99_ms=round(percentile(times, 0.99), 3), max_ms=round(max(times), 3),
                     state_bytes=int(state_bytes), workspace_bytes=int(workspace))


def session_overhead_ms(frames: int = 50) -> float:
    """Per-session serving work of one 80 ms frame: Ogg/Opus decode of the user's frame + encode of the
    reply (sphn; it holds the GIL, so it competes with the tick thread's Python work), p90 over ``frames``
    of a speech-like signal (harmonics with a moving pitch and envelope)."""
    from bizra_voice.audio.opus import OggOpusDecoder, OggOpusEncoder

    t = np.arange(frames * C.FRAME_SIZE) / C.SAMPLE_RATE
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 2.0 * t))
    phase = 2 * np.pi * np.cumsum(f0) / C.SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    signal = (0.2 * signal / np.max(np.abs(signal))).astype(np.float32)
    client, server_in, server_out = OggOpusEncoder(), OggOpusDecoder(), OggOpusEncoder()
    pages = [client.encode(signal[i * C.FRAME_SIZE:(i + 1) * C.FRAME_SIZE]) for i in range(frames)]
    costs = []
    for i, page in enumerate(pages):
        frame = signal[i * C.FRAME_SIZE:(i + 1) * C.FRAME_SIZE]
        started = time.perf_counter()
        if page:
            server_in.decode(page)
        server_out.encode(frame)
        costs.append((time.perf_counter() - started) * 1000)
    return round(percentile(costs[5:], 0.9), 3)


def measure_within_budget(bundle: Any, batch: int, budget_ms: float, *, ticks: int, graphs: bool,
                          attempts: int = 3, session_ms: float = 0.0) -> TickStats:
    """``measure_batch``, repeated (up to ``attempts``) while its p99 misses ``budget_ms``; the best run counts.

    On a shared machine one pause of another process can make a single run's p99 (with a few dozen ticks,
    nearly its maximum) miss; a batch size fails only if it misses in every attempt.
    """
    best = measure_batch(bundle, batch, ticks=ticks, graphs=graphs)
    for _ in range(attempts - 1):
        if frame_cost_ms(best, session_ms) <= budget_ms:
            break
        again = measure_batch(bundle, batch, ticks=ticks, graphs=graphs)
        best = min(best, again, key=lambda s: s.p99_ms)
    return best


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def measure_pair(bundle: Any, measure: Callable[[int], TickStats]) -> list[TickStats]:
    """The B=1 and B=2 probes; on a card where two slots do not fit, only B=1 (the memory bound is then
    computed from one slot's cost and comes out as 1, or as 0 with a clear error)."""
    try:
        one = measure(1)
    except Exception as exc:
        if bundle.device.type == "cuda" and _out_of_memory(exc):
            raise CapacityError("Not even one session fits this replica's GPU memory next to the models: give it "
                                "a larger share (voice_server.num_gpus / engine.memory_fraction), int8 weights "
                                "(engine.quantize_int8) or fewer models on this GPU.") from None
        raise
    try:
        return [one, measure(2)]
    except Exception as exc:
        if bundle.device.type != "cuda" or not _out_of_memory(exc):
            raise
        gc.collect()
        torch.cuda.empty_cache()
        log.warning("engine capacity: a second slot does not fit in memory (%s)", str(exc).splitlines()[0])
        return [one]


def memory_figures(bundle: Any, one: TickStats, two: TickStats | None, fraction: float | None) -> MemoryFigures:
    """This replica's memory share, what the models use, and the measured cost of one more slot
    (``two`` None: only one slot could be built; its own cost is taken)."""
    device = bundle.device
    if two is None:
        per_slot = max(1, one.state_bytes + one.workspace_bytes)
    else:
        per_slot = max(1, (two.state_bytes + two.workspace_bytes) - (one.state_bytes + one.workspace_bytes),
                       one.state_bytes)
    if device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        share = int(total * (fraction if fraction is not None else 1.0))
        used = torch.cuda.memory_allocated(device) + one.workspace_bytes
        return MemoryFigures(share=share, used=used, per_slot=per_slot, reserve=CUDA_RESERVE_BYTES)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    share = int(available * (fraction if fraction is not None else 1.0))
    return MemoryFigures(share=share, used=0, per_slot=per_slot, reserve=HOST_RESERVE_BYTES)


def calibrate_slots(bundle: Any, config: EngineConfig, *, graphs: bool | None = None,
                    ticks: int | None = None) -> SlotChoice:
    """Measure this machine and choose the slot count (``config.slots``: a number or ``"auto"``)."""
    graphs = config.cuda_graphs if graphs is None else graphs
    ticks = ticks or config.calibration_ticks
    device_name = describe_device(bundle.device)
    started = time.perf_counter()
    auto = config.slots == AUTO
    session_ms = session_overhead_ms()
    if auto:
        budget = config.tick_budget_ms
        curve: list[TickStats] = measure_pair(bundle, lambda b: measure_within_budget(
            bundle, b, budget, ticks=ticks, graphs=graphs, session_ms=session_ms))
        memory = memory_figures(bundle, curve[0], curve[1] if len(curve) > 1 else None, config.memory_fraction)
        if len(curve) == 1:  # two slots did not fit: the memory bound is what fits (1 or 0)
            memory = dataclasses.replace(memory, share=min(memory.share, memory.used + memory.reserve
                                                           + memory.per_slot))
        ceiling = min(config.max_slots, max(1, memory_bound(memory)))
        while (probe := next_probe(curve, budget, ceiling, session_ms)) is not None:
            if time.perf_counter() - started > config.calibration_timeout_s:
                log.warning("engine capacity: calibration stopped after %.0f s (engine.calibration_timeout_s); "
                            "deciding on batch sizes up to %d", time.perf_counter() - started,
                            max(s.batch for s in curve))
                break
            curve.append(measure_within_budget(bundle, probe, budget, ticks=ticks, graphs=graphs,
                                               session_ms=session_ms))
        curve.sort(key=lambda s: s.batch)
    else:  # an explicit count is only checked against memory: two short eager probes measure a slot's cost
        probes = measure_pair(bundle, lambda b: measure_batch(bundle, b, ticks=2, warmup=1, graphs=False))
        memory = memory_figures(bundle, probes[0], probes[1] if len(probes) > 1 else None, config.memory_fraction)
        if len(probes) == 1:
            memory = dataclasses.replace(memory, share=min(memory.share, memory.used + memory.reserve
                                                           + memory.per_slot))
        curve = []
    choice = choose_slots(config.slots, max_slots=config.max_slots, budget_ms=config.tick_budget_ms,
                          memory=memory, curve=curve, device=device_name, session_ms=session_ms)
    log.info("engine capacity on %s: %s; serving work %.2f ms per session-frame; calibration %s (%.1f s)",
             device_name, choice.summary(), session_ms,
             ", ".join(f"B={s.batch} p50 {s.p50_ms:.1f}/p99 {s.p99_ms:.1f} ms" for s in curve),
             time.perf_counter() - started)
    if choice.note:
        log.warning("engine capacity: %s", choice.note)
    return choice


def describe_device(device: torch.device) -> str:
    """A human name of the compute device ("NVIDIA H100 80GB HBM3", or the CPU model and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU {model or 'unknown'} ({torch.get_num_threads()} threads)"
