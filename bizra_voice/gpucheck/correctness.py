"""Is the engine correct on this device? Greedy tokens, compared frame by frame.

- **CUDA graphs vs eager**: the same greedy session must give the same tokens whether moshi replays its
  captured graphs or runs the kernels one by one (B=1 and B=4). A difference means the graphed step reads a
  stale buffer: a bug, reported as a failure.
- **alone vs inside a batch of 8**: one greedy session's tokens alone and as one row of a full batch whose
  other rows hear other audio. bf16 kernels may pick different reduction orders per batch size, so a greedy
  decode can legitimately diverge after a near-tie; the agreement rate is reported (never hidden), not
  judged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bizra_voice.engine.api import SamplingParams
from bizra_voice.gpucheck.speech import frames_of, speech_like

FRAMES = 60  # >= 50 produced frames after the codec's first ungenerated step


def session_audio(rows: int, frames: int, first_seed: int = 100) -> np.ndarray:
    """Per-row speech-like input [frames, rows, FRAME_SIZE]: row r hears clip ``first_seed + r``."""
    seconds = frames * 0.08 + 1
    clips = [frames_of(speech_like(seconds, seed=first_seed + r, pitch=100.0 + 15 * r), frames) for r in range(rows)]
    return np.stack(clips, axis=1)


def greedy_tokens(bundle: Any, audio: np.ndarray, graphs: bool) -> np.ndarray:
    """Tokens [frames, B, 9] (text + 8 agent codes; -1 where a row produced nothing) of greedy rows fed
    ``audio`` [frames, B, FRAME_SIZE] through a fresh B-row engine, with CUDA graphs on or off."""
    from bizra_voice.engine.batched import BatchedEngine
    from bizra_voice.engine.calibrate import graphs_enabled

    frames, batch, _ = audio.shape
    out = np.full((frames, batch, 9), -1, dtype=np.int64)
    engine = BatchedEngine(bundle, batch)
    try:
        for slot in range(batch):
            engine.set_sampling(slot, SamplingParams(greedy=True, seed=slot))
        active = np.ones(batch, dtype=bool)
        with graphs_enabled(graphs):
            for i in range(frames):
                result = engine.tick(audio[i], active)
                rows = result.produced
                out[i, rows, 0] = result.text[rows]
                out[i, rows, 1:] = result.agent[rows]
    finally:
        engine.close()
    return out


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Frame-by-frame agreement of two token streams [frames, 9] (frames both produced)."""
    both = (a[:, 0] >= 0) & (b[:, 0] >= 0)
    a, b = a[both], b[both]
    same_frame = (a == b).all(axis=1)
    mismatches = np.flatnonzero(~same_frame)
    frames = int(both.sum())
    return {
        "frames": frames,
        "identical_frames": int(same_frame.sum()),
        "agreement": round(float(same_frame.mean()), 4) if frames else None,
        "text_agreement": round(float((a[:, 0] == b[:, 0]).mean()), 4) if frames else None,
        "audio_agreement": round(float((a[:, 1:] == b[:, 1:]).mean()), 4) if frames else None,
        "first_mismatch_frame": int(mismatches[0]) if mismatches.size else None,
    }


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _recover(bundle: Any) -> None:
    """After a failed engine build, leave streaming mode and free what the failed build allocated."""
    import gc

    for module in (bundle.lm, bundle.mimi):
        module._stop_streaming()
    gc.collect()
    if bundle.device.type == "cuda":
        torch.cuda.empty_cache()


def graphs_vs_eager(bundle: Any, batch: int, frames: int = FRAMES) -> dict[str, Any]:
    audio = session_audio(batch, frames)
    graphed = greedy_tokens(bundle, audio, graphs=True)
    eager = greedy_tokens(bundle, audio, graphs=False)
    rows = [compare(graphed[:, r], eager[:, r]) for r in range(batch)]
    passed = all(r["frames"] >= 50 and r["identical_frames"] == r["frames"] for r in rows)
    return {"batch": batch, "passed": passed, "rows": rows}


def alone_vs_batch(bundle: Any, graphs: bool, rows: tuple[int, ...] = (0, 7), batch: int = 8,
                   frames: int = FRAMES) -> dict[str, Any]:
    audio = session_audio(batch, frames)
    batched = greedy_tokens(bundle, audio, graphs)
    results = []
    for r in rows:
        alone = greedy_tokens(bundle, audio[:, r: r + 1], graphs)
        results.append({"row": r, **compare(alone[:, 0], batched[:, r])})
    total = sum(x["frames"] for x in results)
    same = sum(x["identical_frames"] for x in results)
    return {"batch": batch, "graphs": graphs, "rows": results,
            "agreement": round(same / total, 4) if total else None}


def run_correctness(bundle: Any, progress: Any, frames: int = FRAMES, rows: tuple[int, ...] = (0, 7)) -> dict[str, Any]:
    """Both checks (``rows``: the batch rows compared with their session alone); a batch that does not fit in
    memory (16 GiB runs) is reported, not fatal."""
    cuda = bundle.device.type == "cuda"
    report: dict[str, Any] = {"frames_per_run": frames}
    if cuda:
        report["graphs_vs_eager"] = []
        for batch in (1, 4):
            try:
                result = graphs_vs_eager(bundle, batch, frames)
            except Exception as exc:  # an OOM on a small card; anything else is a finding too
                _recover(bundle)
                result = {"batch": batch, "passed": None,
                          "skipped": "out of memory" if _is_oom(exc) else f"{type(exc).__name__}: {exc}"}
            report["graphs_vs_eager"].append(result)
            progress.log(f"  graphs vs eager B={batch}: " + (
                "identical" if result.get("passed") else result.get("skipped") or
                f"DIFFERENT ({[r['identical_frames'] for r in result['rows']]} of "
                f"{[r['frames'] for r in result['rows']]} frames identical)"))
    else:
        report["graphs_vs_eager"] = {"skipped": "no CUDA device: CUDA graphs exist only on NVIDIA GPUs, so this "
                                     "check did not run here"}
        progress.log("  graphs vs eager: SKIPPED (no CUDA)")
    try:
        report["alone_vs_batch"] = alone_vs_batch(bundle, graphs=cuda, rows=rows, frames=frames)
        progress.log(f"  alone vs batch of 8: {report['alone_vs_batch']['agreement']:.1%} of frames agree")
    except Exception as exc:
        _recover(bundle)
        report["alone_vs_batch"] = {"skipped": "out of memory" if _is_oom(exc) else f"{type(exc).__name__}: {exc}"}
        progress.log(f"  alone vs batch of 8: {report['alone_vs_batch']['skipped']}")
    report["graphs_identical"] = graphs_verdict(report["graphs_vs_eager"]) if cuda else None
    return report


def graphs_verdict(checks: list[dict[str, Any]]) -> bool | None:
    """False when any batch differed, True when at least one ran and none differed, None when none ran."""
    outcomes = [c.get("passed") for c in checks]
    if False in outcomes:
        return False
    return True if True in outcomes else None
