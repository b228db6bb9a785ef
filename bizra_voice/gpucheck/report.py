"""What the check concludes, and where it writes it: the verdict, the one-screen summary, JSON and PNG.

The verdict answers one question: how many sessions does this machine hold in real time? The number is the
engine's own choice (``capacity.choose_slots``: memory bound and time bound) as confirmed by the real-time
run at that capacity; when that run did not hold, the verdict says so and why, instead of the number.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from bizra_voice import constants as C

LATE_FRAME_TOLERANCE = 0.01  # a level holds real time when at most 1 % of its steady-state frames are late
JSON_NAME = "gpu-check.json"
PNG_NAME = "gpu-check.png"
SUMMARY_NAME = "gpu-check.txt"


def held_realtime(level: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether a real-time level held, and the reasons when it did not (pure)."""
    if level.get("error"):
        return False, [str(level["error"])]
    reasons = []
    sessions = level.get("sessions", 0)
    if level.get("refused"):
        reasons.append(f"{level['refused']} of {sessions} sessions refused at admission")
    if level.get("errors"):
        reasons.append(f"session errors: {'; '.join(level['errors'])}")
    if level.get("opened", 0) < sessions and not level.get("refused"):
        reasons.append(f"only {level.get('opened', 0)} of {sessions} sessions opened")
    if level.get("frames_dropped"):
        reasons.append(f"{level['frames_dropped']} input frames dropped to catch up")
    ended = level.get("sessions_ended_by_server") or {}
    if ended:
        reasons.append("sessions ended by the server: " + ", ".join(f"{n} {cause}" for cause, n in ended.items()))
    steady = (level.get("steady_latency_ms") or {}).get("count") or 0
    late = level.get("steady_late_frames", 0)
    if steady == 0:
        reasons.append("no steady-state frames were measured")
    elif late > LATE_FRAME_TOLERANCE * steady:
        reasons.append(f"{late} of {steady} steady-state frames later than {C.FRAME_MS:g} ms "
                       f"(p99 {level['steady_latency_ms']['p99']} ms)")
    return not reasons, reasons


def verdict(card: str, chosen: int | None, memory_bound: int | None, time_bound: int | None,
            levels: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict line and what it rests on (pure). ``levels``: the real-time runs, capacity first."""
    bounds = f"memory bound {_or_dash(memory_bound)}, time bound {_or_dash(time_bound)}"
    if chosen is None:
        return {"line": f"real-time sessions on {card}: unknown ({bounds}): the capacity could not be measured",
                "sessions": None, "held": None}
    at_capacity = next((lv for lv in levels if lv.get("sessions") == chosen), None)
    above = [lv for lv in levels if lv.get("sessions", 0) > chosen]
    if at_capacity is None or (not at_capacity.get("ran") and at_capacity.get("fits_memory") is not False):
        why = f": {at_capacity['error']}" if at_capacity and at_capacity.get("error") else ""
        return {"line": f"real-time sessions on {card}: {chosen} ({bounds}; not confirmed by a real-time run{why})",
                "sessions": chosen, "held": None}
    held, reasons = held_realtime(at_capacity)
    if not held:
        count = "0" if chosen <= 1 else f"fewer than {chosen}"
        what = "one session" if chosen <= 1 else f"{chosen} sessions"
        return {"line": f"real-time sessions on {card}: {count} ({bounds}): {what} did not hold real time: "
                        f"{'; '.join(reasons)}", "sessions": 0 if chosen <= 1 else None, "held": False,
                "reasons": reasons}
    line = f"real-time sessions on {card}: {chosen} ({bounds})"
    for level in above:
        ok, why = held_realtime(level)
        line += (f"; {level['sessions']} (+25 %) held too" if ok else
                 f"; {level['sessions']} (+25 %) did not: {why[0]}")
    return {"line": line, "sessions": chosen, "held": True}


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _mib(value: float | int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} MiB"


def _gib(value: float | int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _curve_table(ticks: dict[str, Any]) -> list[str]:
    curves = ticks.get("curves", {})
    batches = sorted({p["batch"] for curve in curves.values() for p in curve})
    if not batches:
        return ["  (no tick measurements)"]
    lines = ["  B          " + "".join(f"{b:>13d}" for b in batches)]
    for mode, curve in curves.items():
        by_batch = {p["batch"]: p for p in curve}
        cells = "".join(f"{by_batch[b]['p50_ms']:>6.1f}/{by_batch[b]['p99_ms']:<6.1f}" if b in by_batch else f"{'-':>13s}"
                        for b in batches)
        lines.append(f"  {mode:6s} p50/p99{cells}")
    for mode, why in ticks.get("stopped", {}).items():
        lines.append(f"  {mode} stopped: {why}")
    return lines


def _correctness_lines(correctness: dict[str, Any]) -> list[str]:
    lines = []
    gve = correctness.get("graphs_vs_eager")
    if isinstance(gve, dict):
        lines.append(f"  CUDA graphs vs eager: SKIPPED - {gve.get('skipped')}")
    elif gve:
        for check in gve:
            if check.get("skipped"):
                lines.append(f"  CUDA graphs vs eager B={check['batch']}: skipped ({check['skipped']})")
                continue
            same = sum(r["identical_frames"] for r in check["rows"])
            total = sum(r["frames"] for r in check["rows"])
            lines.append(f"  CUDA graphs vs eager B={check['batch']}: "
                         f"{'identical' if check['passed'] else 'DIFFERENT'} ({same}/{total} frames)")
    avb = correctness.get("alone_vs_batch") or {}
    if avb.get("skipped"):
        lines.append(f"  greedy alone vs in a batch of 8: skipped ({avb['skipped']})")
    elif avb:
        rows = ", ".join(f"row {r['row']}: {r['identical_frames']}/{r['frames']}" +
                         (f" (first difference at frame {r['first_mismatch_frame']})" if r["first_mismatch_frame"]
                          is not None else "") for r in avb["rows"])
        lines.append(f"  greedy alone vs in a batch of 8: {avb['agreement']:.1%} of frames agree ({rows})")
    return lines


def _level_line(level: dict[str, Any]) -> str:
    if level.get("error"):
        return f"  {level['sessions']} sessions: not run - {level['error']}"
    ok, reasons = held_realtime(level)
    started = f"\n      {level['start_error']}" if level.get("start_error") else ""
    steady = level["steady_latency_ms"]
    events = level["event_latency_ms"]
    return (f"  {level['sessions']} sessions x {level['seconds']:g} s: {'HELD' if ok else 'NOT held'} real time"
            f"{'' if ok else ' (' + '; '.join(reasons) + ')'}\n"
            f"      frame latency steady p50 {steady['p50']} / p99 {steady['p99']} ms; during joins+re-anchors p99 "
            f"{events['p99']} / max {events['max']} ms; worst tick there {level['worst_tick_during_events_ms']} ms\n"
            f"      ticks {level['ticks']} (p50 {level['tick_ms']['p50']} / p99 {level['tick_ms']['p99']} ms), "
            f"deadline misses {level['deadline_misses']}, frames dropped {level['frames_dropped']}, "
            f"sessions ended {sum(level['sessions_ended_by_server'].values())}, refused {level['refused']}, "
            f"re-anchors {level['reanchors']}, join prefill p50 {level['join_prefill_ms']['p50']} / max "
            f"{level['join_prefill_ms']['max']} ms{started}")


def summary_text(report: dict[str, Any]) -> str:
    """The one-screen summary printed at the end (and saved beside the JSON)."""
    env = report.get("environment", {})
    models = report.get("models") or {}
    lines = [f"==== bizra-voice gpu-check on {env.get('card', '?')}: {models.get('size', '?')} PersonaPlex, "
             f"{models.get('dtype', '?')}" + (f", int8 {models['int8']}" if models.get("int8") else "") +
             (f", capped to {report['laptop']['memory_gb']:g} GiB (laptop profile)" if report.get("laptop") else "") +
             " ====", report.get("verdict", {}).get("line", "no verdict"), "correctness:"]
    lines += _correctness_lines(report.get("correctness") or {})
    lines.append("tick ms (every row active; budget "
                 f"{report.get('capacity', {}).get('tick_budget_ms', '-')} ms, frame {C.FRAME_MS:g} ms):")
    lines += _curve_table(report.get("ticks") or {})
    capacity = report.get("capacity") or {}
    memory = capacity.get("memory") or {}
    if capacity:
        lines.append(f"memory: LM weights {_gib(models.get('weights_bytes'))}, codecs {_gib(models.get('codec_bytes'))}, "
                     f"per slot {_mib(memory.get('per_slot'))} (share {_gib(memory.get('share'))}, used "
                     f"{_gib(memory.get('used'))}); chosen {capacity.get('chosen')} by {capacity.get('chosen_by')}")
    for kind, hs in (report.get("handshake") or {}).items():
        if hs.get("skipped"):
            lines.append(f"handshake ({kind} voice): skipped - {hs['skipped']}")
        else:
            lines.append(f"handshake ({kind} voice {hs['voice']}, {hs['prompt_frames']} prompt frames): prepare "
                         f"{hs['prepare_first_use_ms']} ms (first use) + prefill {hs['prefill_ms']} ms")
    if report.get("realtime"):
        lines.append("real-time run (EngineRuntime tick thread, sessions fed on schedule):")
        lines += [_level_line(level) for level in report["realtime"]]
    laptop = report.get("laptop")
    if laptop:
        fit = laptop.get("fit") or {}
        lines.append(f"laptop {laptop['memory_gb']:g} GiB: {'FITS' if fit.get('fits') else 'DOES NOT FIT'} "
                     f"(serving {'fits' if fit.get('fits_serving') else 'does not fit'}, loading beside Qwen "
                     f"{'fits' if fit.get('fits_loading_beside_companions') else 'does not fit'}) - engine weights "
                     f"{_gib(fit.get('engine_weights_bytes'))}, companions {_gib(fit.get('companions_bytes'))}, "
                     f"serving {_gib(fit.get('serving_bytes'))}, loading peak {_gib(fit.get('loading_peak_bytes'))}, "
                     f"headroom {_gib(fit.get('headroom_bytes'))}, memory bound {fit.get('memory_bound')}")
        for note in laptop.get("notes", []):
            lines.append(f"  note: {note}")
        for row in laptop.get("int8_backends", []):
            state = row.get("unavailable") or row.get("error") or (
                f"weights {_gib(row.get('weights_bytes'))}, B=1 tick p50 {row.get('p50_ms')} / p99 {row.get('p99_ms')} ms")
            lines.append(f"  int8 {row['backend']}: {state}")
    for error in report.get("errors", []):
        lines.append(f"ERROR in {error['step']}: {error['error']}")
    files = report.get("files", {})
    lines.append(f"files: {files.get('json', '-')}; plot: {files.get('png', '-')}; total {report.get('total_s', 0):.0f} s")
    return "\n".join(lines)


def write_json(report: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / JSON_NAME
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return path


def write_png(report: dict[str, Any], out: Path) -> tuple[Path | None, str]:
    """Tick vs B (both modes, the frame and the tick budget) and the real-time runs' latency CDFs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return None, f"matplotlib is not installed here ({exc}): redraw it with `bizra-voice gpu-check --replot DIR`"
    fig, (ticks_ax, latency_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for mode, curve in (report.get("ticks") or {}).get("curves", {}).items():
        if not curve:
            continue
        xs = [p["batch"] for p in curve]
        ticks_ax.plot(xs, [p["p50_ms"] for p in curve], marker="o", label=f"{mode} p50")
        ticks_ax.plot(xs, [p["p99_ms"] for p in curve], marker="x", linestyle="--", label=f"{mode} p99")
    ticks_ax.axhline(C.FRAME_MS, color="red", linewidth=1, label=f"{C.FRAME_MS:g} ms frame")
    budget = (report.get("capacity") or {}).get("tick_budget_ms")
    if budget:
        ticks_ax.axhline(budget, color="orange", linewidth=1, linestyle=":", label=f"{budget:g} ms tick budget")
    ticks_ax.set_xscale("log", base=2)
    batches = sorted({p["batch"] for c in (report.get("ticks") or {}).get("curves", {}).values() for p in c})
    if batches:
        ticks_ax.set_xticks(batches, [str(b) for b in batches])
    ticks_ax.set_xlabel("sessions in the batch (B)")
    ticks_ax.set_ylabel("tick (ms)")
    env = report.get("environment") or {}
    models = report.get("models") or {}
    ticks_ax.set_title(f"{env.get('card', '?')}: {models.get('size', '?')} PersonaPlex {models.get('dtype', '')}"
                       + (f" int8 {models['int8']}" if models.get("int8") else ""), fontsize=8)
    fig.suptitle(textwrap.fill((report.get("verdict") or {}).get("line", ""), 150), fontsize=8)
    for level in report.get("realtime") or []:
        cdf = level.get("latency_percentiles_ms") or []
        if cdf:
            latency_ax.plot(cdf, range(len(cdf)), label=f"{level['sessions']} sessions")
    latency_ax.axvline(C.FRAME_MS, color="red", linewidth=1, label=f"{C.FRAME_MS:g} ms")
    latency_ax.set_xlabel("frame latency: input pushed -> output frame (ms)")
    latency_ax.set_ylabel("percentile")
    latency_ax.set_title("real-time run", fontsize=8)
    for ax in (ticks_ax, latency_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / PNG_NAME
    fig.savefig(path)
    plt.close(fig)
    return path, "written"


def write_all(report: dict[str, Any], out: Path) -> str:
    """PNG, then JSON (which names the PNG), then the summary text; returns the summary."""
    png, status = write_png(report, out)
    report.setdefault("files", {})["png"] = str(png) if png else None
    report["files"]["png_status"] = status
    report["files"]["json"] = str(out / JSON_NAME)
    write_json(report, out)
    text = summary_text(report)
    (out / SUMMARY_NAME).write_text(text + "\n")
    return text


def replot(out: Path) -> str:
    """Redraw the PNG and the summary from a JSON written earlier (e.g. fetched from a GPU machine)."""
    report = json.loads((out / JSON_NAME).read_text())
    return write_all(report, out)
