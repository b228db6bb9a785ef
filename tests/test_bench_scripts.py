"""The benchmark scripts run in CI in their quick mode (tiny model, CPU, seconds) so they cannot rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_engine  # noqa: E402
import bench_sessions  # noqa: E402


def _provenance_ok(report: dict) -> None:
    prov = report["provenance"]
    for key in ("date", "commit", "cpu", "cpu_cores", "card", "torch"):
        assert prov[key] not in (None, ""), key


def test_bench_engine_quick_writes_json_and_plot(tmp_path):
    report = bench_engine.main(["--quick", "--device", "cpu", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "engine.json").read_text())
    assert saved["benchmark"] == "engine_tick" and saved["size"] == "tiny"
    _provenance_ok(saved)
    assert [r["batch"] for r in saved["results"]] == [1, 2]
    for row in saved["results"]:
        assert row["mode"] == "eager" and row["ticks"] > 0
        assert 0 < row["tick_ms"]["p50"] <= row["tick_ms"]["max"]
        assert row["state_bytes"] > 0
    # One more session adds its KV cache: the state grows with B.
    assert saved["results"][1]["state_bytes"] > saved["results"][0]["state_bytes"]
    assert (tmp_path / "engine.png").stat().st_size > 1000
    assert report["results"] == saved["results"]


def test_round_trips_pair_each_output_with_the_input_that_produced_it():
    res = bench_sessions.SessionResult(0, connect_t=0.0, handshake_t=0.1)
    res.send_t = [1.0 + 0.08 * k for k in range(10)]
    # A server that leaves its first input unanswered and replies 30 ms after each later input.
    res.recv_t = [res.send_t[k] + 0.03 for k in range(1, 10)]
    assert res.lag == 1
    assert res.round_trips_ms() == pytest.approx([30.0] * 9)
    summary = bench_sessions.level_summary([res], handshake_budget_ms=1000)
    assert summary["realtime"] and summary["late_frames"] == 0 and summary["lag_frames"] == [1]
    # 120 ms replies miss the 80 ms deadline on every frame.
    res.recv_t = [t + 0.09 for t in res.recv_t]
    late = bench_sessions.level_summary([res], handshake_budget_ms=1000)
    assert late["late_frames"] == 9 and not late["realtime"]


@pytest.mark.slow
def test_bench_sessions_quick_against_the_cpu_server(cpu_server, tmp_path):
    url = cpu_server.replace("http://", "ws://") + "/api/chat"
    report = bench_sessions.main(["--quick", "--url", url, "--label", "bizra", "--out-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "sessions.json").read_text())
    _provenance_ok(saved)
    (level,) = saved["systems"]["bizra"]
    assert level["sessions"] == 1 and level["frames_sent"] > 10
    assert level["frames_received"] >= level["frames_sent"] - 2
    assert level["round_trip_ms"]["p50"] > 0 and level["handshake_ms"]["max"] > 0
    assert level["per_session"][0]["errors"] == []
    assert set(saved["realtime_sessions"]) == {"bizra"}
    for name in ("sessions_cdf.png", "sessions_p99.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert report["systems"] == saved["systems"]


@pytest.mark.slow
def test_bench_transports_measures_both_transports_against_the_cpu_server(cpu_server, tmp_path):
    import bench_transports

    report = bench_transports.run(["--url", cpu_server, "--seconds", "2", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "transports_cpu.json").read_text())
    _provenance_ok(saved)
    assert set(saved["cpu_s_per_s"]) == {"idle", "websocket", "webrtc"}
    assert all(v >= 0 for v in saved["cpu_s_per_s"].values())
    assert saved["cpu_s_per_s"]["websocket"] > 0 and saved["cpu_s_per_s"]["webrtc"] > 0
    assert report["cpu_s_per_s"] == saved["cpu_s_per_s"]
