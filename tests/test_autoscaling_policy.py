"""Serve autoscaling on the replicas' MEASURED capacity (serve/autoscaling.py), with Serve's own policy deciding."""

from __future__ import annotations

import pytest

from bizra_voice.serve.autoscaling import SESSIONS, TARGET_SESSIONS, session_autoscaling_policy, session_load


def test_session_load_is_in_units_of_the_configured_target():
    # replica a holds 3 sessions of a measured target 1.5; b holds 1 of 3: with 2 requests per replica as the
    # unit, a counts 4 and b counts 2/3
    assert session_load({"a": 3.0, "b": 1.0}, {"a": 1.5, "b": 3.0}, 2.0) == pytest.approx(4 + 2 / 3)
    assert session_load({}, {}, 2.0) is None  # nobody reported yet
    assert session_load({"a": 2.0}, {"a": 0.0}, 2.0) is None


def _context(metrics: dict | None, current: int, *, total_requests: float = 0.0):
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    deployment = DeploymentID(name="VoiceServer", app_name="bizra")
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=deployment) for i in range(current)]
    named = None
    if metrics is not None:
        named = {name: {replicas[i]: value for i, value in enumerate(values)} for name, values in metrics.items()}
    config = AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=7.0, upscale_delay_s=0,
                               downscale_delay_s=0)
    return AutoscalingContext(
        deployment_id=deployment, deployment_name="VoiceServer", app_name="bizra", current_num_replicas=current,
        target_num_replicas=current, running_replicas=replicas, total_num_requests=total_requests,
        total_queued_requests=0.0, aggregated_metrics=named, raw_metrics=None, capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
        current_time=0.0, config=config)


def test_replicas_full_by_their_measured_capacity_scale_up_whatever_the_deploy_time_target():
    # 2 replicas that measured 3 slots each (target 0.7 x 3 = 2.1) hold 3 sessions each: the deploy-time
    # target (7 requests) would see 6 requests and scale DOWN; the measured capacity says up to 3 replicas
    ctx = _context({SESSIONS: [3.0, 3.0], TARGET_SESSIONS: [2.1, 2.1]}, current=2, total_requests=6.0)
    replicas, _ = session_autoscaling_policy(ctx)
    assert replicas == 3


def test_idle_replicas_scale_down_and_missing_metrics_fall_back_to_serve():
    quiet = _context({SESSIONS: [0.0, 1.0], TARGET_SESSIONS: [2.1, 2.1]}, current=2)
    assert session_autoscaling_policy(quiet)[0] == 1
    unreported = _context(None, current=2, total_requests=30.0)  # Serve's own request count: 30 / 7 -> 5
    assert session_autoscaling_policy(unreported)[0] == 5
