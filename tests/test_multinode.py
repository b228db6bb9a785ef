"""A real multi-node Ray cluster grows and shrinks under live sessions (Ray's own harness, one machine).

``tests/_multinode_cluster.py`` runs in a subprocess with a cluster of its own (a head without GPUs and
worker raylets declaring one GPU each, none real: ``engine.device: cpu``), so it never mixes with the
pytest session's cluster (conftest ``ray_session``). It runs once for this module; each test asserts one
behaviour of its report. The measured times (node joined -> replica ready -> first session served there)
are printed for docs/deploy.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._ports import free_port
from tests.test_reliability_serve import client_reconnect_codes

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent / "_multinode_cluster.py"
SCRIPT_TIMEOUT_S = 600  # the script bounds every wait itself (120 s each); this only catches a hang


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    cache = os.environ.get("BIZRA_VOICE_CACHE") or str(tmp_path_factory.mktemp("multinode-cache"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster, never another
    env["BIZRA_MULTINODE_PORT"] = str(free_port())
    proc = subprocess.Popen([sys.executable, str(SCRIPT), cache], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # SIGTERM: Ray's harness then stops the raylets it started (SIGKILL would orphan them)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
    line = next((ln for ln in stdout.splitlines() if ln.startswith("MULTINODE_REPORT ")), None)
    assert line is not None, stdout[-3000:] + stderr[-3000:]
    out = json.loads(line.split(" ", 1)[1])
    assert "error" not in out, out["error"]
    print_times(out)
    return out


def print_times(report: dict) -> None:
    phases = report["phases"]
    for name, key in (("grow", "join_2"), ("kill", "join_3"), ("warm", "join")):
        at = phases.get(name, {}).get(key)
        if at and "ready" in at:
            first = f", first session served there +{at['first_session'] - at['ready']:.1f} s" \
                if "first_session" in at else ""
            print(f"[{name}] node joined in {at['joined'] - at['called']:.1f} s, replica ready "
                  f"+{at['ready'] - at['joined']:.1f} s{first}")
    print(f"multi-node scenario: {report['seconds']:.0f} s (cluster up after {report['cluster_started']:.0f} s)")


def phase(report: dict, name: str) -> dict:
    out = report["phases"][name]
    assert "error" not in out, f"{out['error']}\n{out.get('traceback', '')}"
    return out


def test_a_gpu_node_joins_and_the_pending_replica_serves_new_sessions_there(report):
    grow = phase(report, "grow")
    assert grow["r1"]["node_is_n1"] and len(set(grow["r1"]["sessions"])) == 1, grow["r1"]
    # load past the replica's target asked for a second replica, which no node could hold
    pending = grow["pending"]
    assert pending["actor_state"] == "PENDING_CREATION" and pending["states"].get("RUNNING") == 1, pending
    assert pending["gpu_available"] < 0.7, pending
    # the second GPU node took that very replica, and a new session was served there
    assert grow["r2"]["pending_one_placed"], grow["r2"]
    assert grow["r2"]["s3_replica"] == grow["r2"]["replica"], grow["r2"]
    at = grow["join_2"]
    assert at["called"] <= at["joined"] <= at["ready"] <= at["first_session"], at


def test_the_first_nodes_sessions_stream_on_untouched_while_the_cluster_grows(report):
    sessions = phase(report, "grow")["first_node_sessions"]
    assert sessions["draining_events"] == 0 and all(sessions["open"]), sessions
    for name, (_, after) in sessions["frames_after"].items():
        assert after > sessions["frames_at_join"][name] + 10, sessions  # frames kept coming through the join


def test_a_node_retired_gracefully_its_sessions_reconnect_to_the_survivor(report):
    remove = phase(report, "remove")
    assert remove["drain_request"]["accepted"][0], remove["drain_request"]
    survivor = remove["keeper"]["replica"]
    for victim in remove["victims_after"]:
        assert victim["close"][0] in client_reconnect_codes(), victim  # the bundled client reconnects by itself
    assert [r["replica"] for r in remove["reconnected"]] == [survivor, survivor], remove["reconnected"]
    keeper = remove["keeper"]  # the survivor's own session never noticed
    assert keeper["open"] and keeper["draining_events"] == 0, keeper
    assert keeper["frames"]["s3"][1] > keeper["frames_at_removal"] + 5, keeper


def test_a_node_retired_gracefully_tells_its_sessions_before_it_stops(report):
    remove = phase(report, "remove")
    for victim in remove["after_grace"]["victims"]:  # within the grace between the drain request and the stop
        assert victim["draining"] and victim["close"][0] == 1001, victim


def test_a_killed_nodes_sessions_see_1006_and_reconnect_to_the_replacement(report):
    kill = phase(report, "kill")
    at = kill["join_3"]
    assert at["called"] <= at["joined"] <= at["ready"], at
    assert kill["victims_on_n2"] and all(kill["victims_on_n2"]), kill["victims_on_n2"]
    for victim in kill["victims_after"]:
        # nothing is left to send a close frame: the proxy drops the connection, a reconnect code
        assert victim["close"][0] == 1006 and 1006 in client_reconnect_codes(), victim
    assert {r["replica"] for r in kill["reconnected"]} == {kill["r3"]}, kill["reconnected"]


def test_warm_every_gpu_a_node_joins_and_a_replica_follows_without_load(report):
    warm = phase(report, "warm")
    before = warm["gpu_nodes_before"]
    assert warm["deployed"]["states"].get("RUNNING") == before, warm["deployed"]  # one per GPU, no session
    assert warm["join"]["replica"], warm["join"]
    settled = warm["settled"]  # one replica per GPU share, and no more asked for (nothing pending)
    assert settled["states"] == {"RUNNING": before + 1} and settled["gpu_nodes"] == before + 1, settled
    nodes = [r["node"] for r in settled["replicas"].values()]
    assert len(set(nodes)) == len(nodes) == before + 1, settled
