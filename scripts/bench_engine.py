"""Engine tick time vs batch size (eager vs CUDA graphs) and memory per session, without a server.

    # GPU, full PersonaPlex dimensions with random weights (speed does not depend on the weight values)
    python scripts/bench_engine.py --size full --batch-sizes 1,2,4,8,16,32,64
    # CPU, the tiny checkpoint (default off GPU); --quick is the CI mode (a few seconds)
    NO_TORCH_COMPILE=1 python scripts/bench_engine.py --size tiny --batch-sizes 1,2,4,8

One tick = Mimi encode -> LM step (main transformer + depformer + per-slot sampling) -> Mimi decode for every
row, with the results copied to the host: exactly what the serving tick thread pays per 80 ms frame.
Writes ``engine.json`` and ``engine.png`` (tick ms vs B with the 80 ms budget line) into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bench_common import (  # noqa: E402
    BUDGET_MS,
    percentiles,
    provenance,
    pyplot,
    rss_bytes,
    save_plot,
    write_json,
)

from bizra_voice.constants import FRAME_SIZE  # noqa: E402


def tiny_bundle(device: torch.device) -> Any:
    """The tiny random checkpoint in the real layout (generated once, like the tests do)."""
    from bizra_voice.engine.checkpoint import resolve_local
    from bizra_voice.engine.loading import load_bundle
    from bizra_voice.tiny import shared_tiny_checkpoint

    folder = shared_tiny_checkpoint(1234)
    return load_bundle(resolve_local(folder), device, torch.float32 if device.type == "cpu" else torch.bfloat16)


def _randomise_mimi(mimi: Any) -> None:
    """Mimi built without a file has empty codebooks; give them values so the quantizer behaves normally."""
    with torch.no_grad():
        for name, buf in mimi.named_buffers():
            if name.endswith("embedding_sum"):
                buf.normal_()
            elif name.endswith("cluster_usage"):
                buf.fill_(1.0)
            elif name.endswith("_initialized"):
                buf.fill_(1)


def full_bundle(device: torch.device, dtype: torch.dtype) -> Any:
    """Full PersonaPlex dimensions (dep_q=8 after slicing) with random weights; stock Mimi config."""
    from moshi.models import loaders
    from moshi.models.lm import LMModel

    from bizra_voice.engine.checkpoint import PERSONAPLEX_LM_KWARGS, CheckpointFiles
    from bizra_voice.engine.loading import ModelBundle

    kwargs = dict(PERSONAPLEX_LM_KWARGS)
    kwargs.pop("depformer_context", None)
    kwargs["dep_q"] = 8
    torch.manual_seed(0)
    lm = LMModel(device=device, dtype=dtype, **kwargs).eval()
    mimi = loaders.get_mimi(None, device=device)
    _randomise_mimi(mimi)
    none = Path(os.devnull)
    files = CheckpointFiles(lm=none, mimi=none, tokenizer=none, voices_dir=None, lm_kwargs=kwargs,
                            mimi_config=None, source="random full-size PersonaPlex")
    return ModelBundle(lm=lm, mimi=mimi, voice_mimi=mimi, tokenizer=None, files=files, device=device, dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory_now(device: torch.device) -> int:
    return torch.cuda.memory_allocated() if device.type == "cuda" else rss_bytes()


def state_bytes(engine: Any) -> int:
    """Bytes held by the engine's batched streaming state (KV caches, Mimi buffers, token rings)."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for module in (engine.lm_gen, engine.lm, engine.mimi):
        for _, child in module._cached_children or []:
            state = child._streaming_state
            if state is None:
                continue
            for value in vars(state).values():
                add(value)
                add(getattr(value, "cache", None))
                add(getattr(value, "end_offset", None))
    return total


def measure(bundle: Any, batch: int, ticks: int, warmup: int, graphs: bool, greedy: bool = False,
            static_topk: bool = False) -> dict[str, Any]:
    """Tick times of a B-slot engine with every row active and sampling as a default session samples."""
    from moshi.utils.compile import no_cuda_graph

    from bizra_voice.engine.api import SamplingParams
    from bizra_voice.engine.batched import BatchedEngine

    device = bundle.device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = _memory_now(device)
    rng = np.random.default_rng(batch)
    engine = BatchedEngine(bundle, batch)
    for slot in range(batch):
        engine.set_sampling(slot, SamplingParams(greedy=greedy, seed=slot))
    if static_topk:  # the ceiling the CUDA path keeps for graph capture, to compare on CPU
        engine.topk_bound_text, engine.topk_bound_audio = engine.max_topk_text, engine.max_topk_audio
    active = np.ones(batch, dtype=bool)
    times: list[float] = []
    guard = contextlib.nullcontext() if graphs else no_cuda_graph()
    try:
        with guard:
            for i in range(warmup + ticks):
                pcm = (0.05 * rng.standard_normal((batch, FRAME_SIZE))).astype(np.float32)
                _sync(device)
                start = time.perf_counter()
                engine.tick(pcm, active)  # ends with the device->host copy of the results
                elapsed = (time.perf_counter() - start) * 1000
                if i >= warmup:
                    times.append(elapsed)
        after = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_bytes()
        held = state_bytes(engine)
        bounds = [engine.topk_bound_text, engine.topk_bound_audio]
    finally:
        engine.close()
        del engine
    mode = ("graphs" if graphs else "eager") + ("+static-topk" if static_topk and bundle.device.type != "cuda" else "")
    row: dict[str, Any] = {"batch": batch, "mode": mode, "ticks": len(times)}
    row["tick_ms"] = percentiles(times)
    row["ms_per_session"] = round(row["tick_ms"]["p50"] / batch, 3)
    row["memory_delta_bytes"] = int(after - before)
    row["state_bytes"] = held
    row["topk_bounds"] = bounds
    row["realtime"] = row["tick_ms"]["p99"] < BUDGET_MS
    return row


def plot(results: list[dict[str, Any]], title: str, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for mode in sorted({r["mode"] for r in results}):
        rows = [r for r in results if r["mode"] == mode and "tick_ms" in r]
        if not rows:
            continue
        xs = [r["batch"] for r in rows]
        ax.plot(xs, [r["tick_ms"]["p50"] for r in rows], marker="o", label=f"{mode} p50")
        ax.plot(xs, [r["tick_ms"]["p99"] for r in rows], marker="x", linestyle="--", label=f"{mode} p99")
    ax.axhline(BUDGET_MS, color="red", linewidth=1, label="80 ms budget")
    ax.set_xscale("log", base=2)
    return save_plot(fig, ax, path, xlabel="sessions in the batch (B)", ylabel="tick (ms)", title=title)


def per_session_bytes(results: list[dict[str, Any]], mode: str, key: str) -> float | None:
    """Slope of memory vs B (least squares): what one more session costs."""
    rows = [r for r in results if r["mode"] == mode and key in r]
    if len(rows) < 2:
        return None
    xs = np.array([r["batch"] for r in rows], dtype=np.float64)
    ys = np.array([r[key] for r in rows], dtype=np.float64)
    return round(float(np.polyfit(xs, ys, 1)[0]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "full"), default=None,
                        help="tiny checkpoint (default without CUDA) or full dimensions, random weights")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-sizes", default=None, help="comma list, e.g. 1,2,4,8,16,32,64")
    parser.add_argument("--ticks", type=int, default=40, help="timed ticks per point")
    parser.add_argument("--warmup", type=int, default=5, help="untimed ticks first (graph capture happens here)")
    parser.add_argument("--modes", default=None, help="eager,graphs (default: both on CUDA, eager on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--greedy", action="store_true", help="argmax rows (default: sampled, as a session)")
    parser.add_argument("--compare-static-topk", action="store_true",
                        help="CPU: also time the fixed 2048-wide top-k that CUDA graphs need")
    parser.add_argument("--out-dir", default="bench_out", help="where engine.json / engine.png go")
    parser.add_argument("--quick", action="store_true", help="CI mode: tiny, B=1,2, a few ticks")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("full" if device.type == "cuda" else "tiny")
    if args.quick:
        size, args.ticks, args.warmup = "tiny", min(args.ticks, 5), min(args.warmup, 2)
    default_bs = "1,2" if args.quick else ("1,2,4,8,16,32,64" if device.type == "cuda" else "1,2,4,8,16")
    batch_sizes = [int(b) for b in (args.batch_sizes or default_bs).split(",") if b]
    modes = (args.modes or ("eager,graphs" if device.type == "cuda" else "eager")).split(",")
    if device.type != "cuda":
        modes = [m for m in modes if m == "eager"]

    base = _memory_now(device)
    bundle = full_bundle(device, torch.bfloat16) if size == "full" else tiny_bundle(device)
    weights = _memory_now(device) - base
    results: list[dict[str, Any]] = []
    plan = [(m, False) for m in modes]
    if args.compare_static_topk and device.type != "cuda":
        plan.append(("eager", True))
    for mode, static_topk in plan:
        for batch in batch_sizes:
            try:
                row = measure(bundle, batch, args.ticks, args.warmup, graphs=(mode == "graphs"),
                              greedy=args.greedy, static_topk=static_topk)
            except torch.OutOfMemoryError:
                row = {"batch": batch, "mode": mode, "error": "out of memory"}
                torch.cuda.empty_cache()
            results.append(row)
            tick = row.get("tick_ms", {})
            print(f"{row['mode']:18s} B={batch:3d}  p50 {tick.get('p50')} ms  p99 {tick.get('p99')} ms  "
                  f"mem +{row.get('memory_delta_bytes', 0) / 2**20:.1f} MiB {row.get('error', '')}", flush=True)

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "engine_tick",
        "provenance": provenance(str(device)),
        "size": size,
        "device": str(device),
        "dtype": str(bundle.dtype).replace("torch.", ""),
        "no_cuda_graph_env": os.environ.get("NO_CUDA_GRAPH", ""),  # set: "graphs" rows ran eager
        "memory_kind": "cuda max_memory_allocated delta" if device.type == "cuda" else "process RSS delta",
        "weights_bytes": int(weights),
        "greedy": args.greedy,
        "state_bytes_per_session": {m: per_session_bytes(results, m, "state_bytes") for m in modes},
        "memory_delta_per_session": {m: per_session_bytes(results, m, "memory_delta_bytes") for m in modes},
        "budget_ms": BUDGET_MS,
        "results": results,
    }
    title = f"{size} PersonaPlex on {report['provenance']['card'] if device.type == 'cuda' else 'CPU'}" \
            f" ({report['provenance']['cpu_cores']} cores, {torch.get_num_threads()} threads)"
    report["plot"] = str(plot(results, title, out / "engine.png"))
    write_json(out / "engine.json", report)
    print(f"wrote {out / 'engine.json'} and {out / 'engine.png'}")
    return report


if __name__ == "__main__":
    main()
