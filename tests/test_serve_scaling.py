"""Scaling: replicas with fractional GPUs land on both GPUs of a 2-GPU cluster and sessions spread.

Runs in a subprocess with its own Ray cluster (``num_gpus=2`` declared, no real GPU), so it does not
disturb the session-wide cluster of the other serving tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._ports import free_port

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "_scaling_cluster.py"


def test_fractional_replicas_on_two_gpus_and_sessions_spread(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, BIZRA_SCALING_PORT=str(free_port())))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SCALING_REPORT ")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(line.split(" ", 1)[1])
    assert report["cluster_gpus"] == 2.0
    # Two VoiceServer replicas at num_gpus 0.7 cannot share a GPU: one on GPU 0, one on GPU 1.
    gpu_sets = sorted(tuple(ids) for ids in report["replica_gpu_ids"].values())
    assert gpu_sets == [("0",), ("1",)], report
    sessions = report["sessions"]
    assert all(s["replica"] for s in sessions), sessions
    per_replica = {}
    for s in sessions:
        per_replica[s["replica"]] = per_replica.get(s["replica"], 0) + 1
    assert sorted(per_replica.values()) == [2, 2], per_replica
