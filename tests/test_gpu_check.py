"""``bizra-voice gpu-check``: the verdict logic, the real-time analysis and the laptop fit (pure), and the whole
command on CPU with the tiny model, run as a GPU machine would run it: without Ray, FastAPI or uvicorn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from bizra_voice import constants as C
from bizra_voice.gpucheck import laptop
from bizra_voice.gpucheck.correctness import compare, graphs_verdict
from bizra_voice.gpucheck.realtime_run import REANCHOR_AT, SessionTrace, analyze, reanchor_settings
from bizra_voice.gpucheck.report import held_realtime, summary_text, verdict
from bizra_voice.gpucheck.speech import frames_of, speech_like, write_wav

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "fastapi", "uvicorn")  # absent on the lent GPU machine: the check must not need them


def _level(**overrides):
    """A real-time level as ``run_level`` reports it, holding real time unless overridden."""
    level = {"sessions": 4, "seconds": 60.0, "ran": True, "fits_memory": True, "opened": 4, "refused": 0,
             "errors": [], "frames_dropped": 0, "sessions_ended_by_server": {},
             "steady_latency_ms": {"count": 1000, "p50": 40.0, "p99": 70.0, "max": 75.0}, "steady_late_frames": 0}
    level["opened"] = overrides.get("sessions", 4)
    level.update(overrides)
    return level


# ---- verdict ---------------------------------------------------------------------------------------------
def test_a_level_holds_real_time_only_without_drops_ends_refusals_or_late_frames():
    assert held_realtime(_level()) == (True, [])
    assert held_realtime(_level(steady_late_frames=10)) == (True, [])  # 1 % of 1000 is tolerated
    for change, words in (({"steady_late_frames": 11}, "11 of 1000 steady-state frames later than 80 ms"),
                          ({"frames_dropped": 3}, "3 input frames dropped"),
                          ({"sessions_ended_by_server": {"fell_behind": 1}}, "1 fell_behind"),
                          ({"refused": 1, "opened": 3}, "1 of 4 sessions refused"),
                          ({"error": "out of memory building a 4-slot engine"}, "out of memory"),
                          ({"steady_latency_ms": {"count": 0}}, "no steady-state frames")):
        held, reasons = held_realtime(_level(**change))
        assert not held and any(words in r for r in reasons), (change, reasons)


def test_verdict_names_the_card_the_capacity_and_both_bounds():
    result = verdict("NVIDIA H100 80GB HBM3", 24, 38, 24, [_level(sessions=24), _level(sessions=30)])
    assert result["line"] == ("real-time sessions on NVIDIA H100 80GB HBM3: 24 (memory bound 38, time bound 24); "
                              "30 (+25 %) held too")
    assert result["sessions"] == 24 and result["held"] is True
    above = verdict("X", 24, 38, 24, [_level(sessions=24), _level(sessions=30, frames_dropped=5)])
    assert above["line"].endswith("30 (+25 %) did not: 5 input frames dropped to catch up")


def test_verdict_says_when_the_capacity_did_not_hold_instead_of_claiming_it():
    failed = verdict("X", 8, 40, 8, [_level(sessions=8, steady_late_frames=200)])
    assert failed["line"].startswith("real-time sessions on X: fewer than 8 (memory bound 40, time bound 8): 8 sessions "
                                     "did not hold real time: 200 of 1000")
    assert failed["held"] is False and failed["sessions"] is None
    one = verdict("CPU", 1, 9000, 0, [_level(sessions=1, steady_late_frames=300)])
    assert one["line"].startswith("real-time sessions on CPU: 0 (memory bound 9000, time bound 0): one session")
    unconfirmed = verdict("X", 2, 5, 2, [_level(sessions=2, ran=False, error="the runtime could not start here")])
    assert "not confirmed by a real-time run: the runtime could not start here" in unconfirmed["line"]
    assert verdict("X", None, None, None, [])["sessions"] is None


def test_graphs_verdict_fails_on_any_difference_and_is_unknown_when_nothing_ran():
    assert graphs_verdict([{"passed": True}, {"passed": None, "skipped": "out of memory"}]) is True
    assert graphs_verdict([{"passed": True}, {"passed": False}]) is False
    assert graphs_verdict([{"passed": None}]) is None


def test_compare_reports_agreement_and_the_first_differing_frame():
    a = np.arange(60 * 9).reshape(60, 9)
    b = a.copy()
    b[0] = -1  # not produced by one side: not compared
    b[40, 3] += 1
    result = compare(a, b)
    assert result["frames"] == 59 and result["identical_frames"] == 58
    assert result["first_mismatch_frame"] == 39  # index among the compared frames
    assert result["text_agreement"] == 1.0 and 0.99 < result["audio_agreement"] < 1.0


# ---- the real-time analysis --------------------------------------------------------------------------------
def _trace(index, start, frames, latency_s, dropped_from=None, reanchor_at=None):
    """A session that joined at ``start`` (handshake 0.1 s) and got each frame back after ``latency_s``."""
    trace = SessionTrace(index, open_t=start, ready_t=start + 0.1, prefill_ms=100.0)
    trace.push_t = [start + 0.1 + k * 0.08 for k in range(frames)]
    dropped = 0
    for f in range(frames):
        if dropped_from is not None and f == dropped_from:
            dropped = 2
        k = f + dropped
        if k >= frames:
            break
        trace.recv.append((trace.push_t[k] + latency_s, f, 30.0, dropped))
    trace.dropped = dropped
    if reanchor_at is not None:
        trace.reanchor_t = [reanchor_at]
        trace.reanchors = 1
    return trace


def test_analyze_measures_push_to_output_latency_apart_from_joins_and_reanchors():
    traces = [_trace(0, 100.0, 100, 0.03), _trace(1, 100.0, 100, 0.03, reanchor_at=104.2)]
    traces[1].recv[50] = (traces[1].recv[50][0] + 0.2, 50, 90.0, 0)  # a slow frame during the re-anchor
    result = analyze(traces)
    assert result["frames_sent"] == 200 and result["frames_received"] == 200
    assert result["steady_latency_ms"]["p50"] == pytest.approx(30.0, abs=0.01)
    assert result["steady_late_frames"] == 0  # the slow frame fell in the re-anchor window
    assert result["event_latency_ms"]["max"] == pytest.approx(230.0, abs=0.01)
    assert result["worst_tick_during_events_ms"] == 90.0
    assert result["event_latency_ms"]["count"] > 0 and result["reanchors"] == 1


def test_analyze_follows_dropped_frames_and_counts_them():
    result = analyze([_trace(0, 0.0, 50, 0.03, dropped_from=20)])
    assert result["frames_dropped"] == 2
    assert result["steady_latency_ms"]["max"] == pytest.approx(30.0, abs=0.01)  # still matched to its input
    assert not held_realtime({**result, "ran": True})[0]


def test_forced_reanchor_comes_once_per_session_inside_the_run():
    settings = reanchor_settings(context=3000, prompt_frames=300, frames=750)
    threshold = 3000 - settings["reanchor_margin"]  # needs_reanchor: position >= context - margin
    assert threshold - 300 == int(REANCHOR_AT * 750)  # after 60 % of the session's frames
    after = 300 + settings["reanchor_history"]  # the position right after the re-anchor
    assert after + (750 - int(REANCHOR_AT * 750)) < threshold  # the rest of the run stays below it: once
    assert reanchor_settings(context=3000, prompt_frames=2990, frames=750) == {"reanchor_margin": 256,
                                                                               "reanchor_history": 250}


# ---- the laptop fit ------------------------------------------------------------------------------------------
def test_laptop_fit_from_given_sizes():
    gib = laptop.GIB
    fit = laptop.fit(card_bytes=16 * gib, contexts_bytes=gib, companions_bytes=int(3.4 * gib),
                     weights_bytes=int(8.9 * gib), per_slot_bytes=int(1.46 * gib), workspace_bytes=0, slots=1,
                     load_peak_bytes=int(8.9 * gib))
    assert fit["memory_bound"] == 1 and fit["fits_serving"] and fit["fits"]
    assert fit["headroom_bytes"] == 15 * gib - gib - (int(3.4 * gib) + int(8.9 * gib) + int(1.46 * gib))
    bf16_first = laptop.fit(16 * gib, gib, int(3.4 * gib), int(8.9 * gib), int(1.46 * gib), 0, 1, int(14.3 * gib))
    assert bf16_first["fits_serving"] and not bf16_first["fits_loading_beside_companions"] and not bf16_first["fits"]
    two = laptop.fit(16 * gib, gib, int(3.4 * gib), int(8.9 * gib), int(1.46 * gib), 0, 2, int(8.9 * gib))
    assert not two["fits_serving"]


def test_the_laptop_profile_is_read_with_its_engine_settings():
    app = laptop.load_profile(laptop.find_profile())
    import torch

    settings, _notes = laptop.engine_settings(app, torch.device("cpu"))
    assert "quantize_int8" not in settings and "checkpoint" not in settings  # the check applies int8 itself
    assert settings["cuda_graphs"] is False  # no CUDA graphs off CUDA
    assert settings["slots"] == app.engine.slots
    assert laptop.gpu_processes(app)[0].startswith("VoiceServer")
    backend, table = laptop.choose_int8(app, torch.device("cpu"))
    assert {row["backend"] for row in table} == {"bitsandbytes", "torchao"}
    assert backend is None or backend in {"bitsandbytes", "torchao"}


# ---- audio -----------------------------------------------------------------------------------------------
def test_speech_like_audio_is_deterministic_speech_shaped_and_writes_a_wav(tmp_path):
    a, b = speech_like(4.0, seed=3), speech_like(4.0, seed=3)
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.size == 4 * C.SAMPLE_RATE
    frames = frames_of(a, 60)  # loops past the end
    energy = (frames ** 2).mean(axis=1)
    assert energy.max() > 100 * np.median(energy[energy > 0]) or (energy < 1e-5).any()  # pauses between words
    path = write_wav(tmp_path / "v.wav", a)
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getnframes()) == (C.SAMPLE_RATE, 1, a.size)


def test_summary_survives_a_report_whose_steps_failed():
    text = summary_text({"environment": {"card": "X"}, "verdict": {"line": "real-time sessions on X: unknown"},
                         "errors": [{"step": "models", "error": "RuntimeError: boom"}]})
    assert "real-time sessions on X: unknown" in text and "ERROR in models: RuntimeError: boom" in text


def test_the_wheel_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_wheels.sh")], check=True)


# ---- the command, end to end -----------------------------------------------------------------------------
def run_gpu_check(out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The CLI in a fresh interpreter with Ray, FastAPI and uvicorn made unimportable."""
    code = ("import sys\n"
            f"for name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
            "from bizra_voice.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    args = ["gpu-check", "--device", "cpu", "--size", "tiny", "--quick", "--out", str(out), *extra]
    env = {**os.environ, "NO_TORCH_COMPILE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert (out / "gpu-check.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "gpu-check.json").read_text())


def _assert_common(proc, report, out):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert report["errors"] == []
    line = report["verdict"]["line"]
    assert line.startswith("real-time sessions on CPU") and line in proc.stdout
    assert "memory bound" in line and "time bound" in line
    # CUDA-graph checks cannot run without CUDA, and the report says so.
    assert "no CUDA" in report["correctness"]["graphs_vs_eager"]["skipped"]
    assert report["correctness"]["graphs_identical"] is None
    batch = report["correctness"]["alone_vs_batch"]
    assert batch["batch"] == 8 and 0.0 <= batch["agreement"] <= 1.0
    assert all(row["frames"] >= 25 for row in batch["rows"])
    curve = report["ticks"]["curves"]["eager"]
    assert [p["batch"] for p in curve][:1] == [1] and "graphs" not in report["ticks"]["curves"]
    assert all(0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] for p in curve)
    assert all(p["state_bytes"] > 0 for p in curve)
    capacity = report["capacity"]
    assert capacity["chosen"] >= 1 and capacity["memory_bound"] >= 1 and capacity["time_bound"] is not None
    assert capacity["memory"]["per_slot"] > 0
    pt = report["handshake"]["pt"]
    assert pt["prompt_frames"] > pt["voice_frames"] > 0 and pt["prefill_ms"] > 0
    wav = report["handshake"]["wav"]
    assert wav["voice_frames"] == pt["voice_frames"] and wav["prepare_first_use_ms"] > wav["prepare_cached_ms"]
    levels = report["realtime"]
    assert [lv["sessions"] for lv in levels] == [capacity["chosen"], max(capacity["chosen"] + 1,
                                                                         -(-capacity["chosen"] * 5 // 4))]
    for level in levels:
        assert level["ran"] and level["opened"] + level["refused"] == level["sessions"]
        assert level["frames_sent"] > 0 and level["frames_received"] > 0
        if not level["frames_dropped"]:  # every session reached the shortened context: each re-anchored
            assert level["reanchors"] == level["opened"]
        lat = level["latency_ms"]
        assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    png = out / "gpu-check.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (out / "gpu-check.txt").read_text().startswith("==== bizra-voice gpu-check")


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_without_ray(tmp_path):
    proc, report = run_gpu_check(tmp_path / "check")
    _assert_common(proc, report, tmp_path / "check")
    assert "laptop" not in report and report["models"]["int8"] is None


@pytest.mark.slow
def test_gpu_check_laptop_profile_on_cpu(tmp_path):
    proc, report = run_gpu_check(tmp_path / "laptop", "--memory-gb", "16")
    _assert_common(proc, report, tmp_path / "laptop")
    lap = report["laptop"]
    assert lap["memory_gb"] == 16 and lap["profile"].endswith("serve_config.laptop.yaml")
    qwen = lap["companions"]["qwen"]
    # Qwen may grow to its allocator cap (a fraction of the 16 GiB card): the reserve is the larger of both.
    assert qwen["reserve_bytes"] == max(qwen["peak_bytes"], qwen["allocator_cap_bytes"]) > 0
    assert qwen["full_size_weights_bytes_computed"] == 1_543_714_304 * 2  # Qwen2.5-1.5B in bf16
    whisper = lap["companions"]["whisper"]
    assert (whisper["reserve_bytes"] == 0) == ("note" in whisper)  # zero only when it is off the GPU
    fit = lap["fit"]
    assert fit["card_bytes"] == 16 * 2**30 and isinstance(fit["fits"], bool)
    assert fit["companions_bytes"] == lap["companions"]["total_reserve_bytes"]
    assert report["capacity"]["memory"]["share"] == 16 * 2**30  # sized to the card, not to this host's RAM
    rows = {row["backend"]: row for row in lap["int8_backends"]}
    assert set(rows) == {"bitsandbytes", "torchao"}
    served = lap["int8_backend"]
    assert served in rows and rows[served]["served_with"] and report["models"]["int8"] == served
    for row in rows.values():
        assert row["unavailable"] or row.get("p99_ms") or row.get("error")
