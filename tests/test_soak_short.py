"""CI's short soak (about 40 s): sessions opened and closed repeatedly at capacity, no leaks."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


def test_short_soak_no_errors_no_leaked_slots(cpu_server):
    spec = importlib.util.spec_from_file_location("bizra_soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    sys.modules["bizra_soak"] = soak  # dataclasses look their module up
    spec.loader.exec_module(soak)
    report = asyncio.run(soak.run_soak(cpu_server, sessions=4, seconds=35, session_s=8, sample_s=3))
    print(report.summary())
    assert not report.errors, report.errors[:3]
    assert report.sessions_run >= 8
    assert report.leaked_slots == 0
    assert report.frames_received >= 0.8 * report.frames_sent
    assert len(report.rss_mb) >= 5 and report.growth_mb < 150, report.summary()
