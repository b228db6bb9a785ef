"""Serve autoscaling that follows the sessions each replica says it can hold (its *measured* capacity).

With ``engine.slots: auto`` a replica learns its slot count only when it starts (calibration), so no
number written at deploy time can be the autoscaler's target. Two Ray Serve APIs close the gap:

- each VoiceServer replica reports custom autoscaling metrics from ``record_autoscaling_stats()``:
  ``SESSIONS`` (sessions it holds now) and ``TARGET_SESSIONS`` (``target_session_fraction`` x its
  measured slots);
- ``session_autoscaling_policy`` (``autoscaling_config.policy.policy_function``) turns them into the load
  Serve's own default policy understands — sessions expressed in units of ``target_ongoing_requests`` per
  replica — and lets that policy decide, so Serve's upscale/downscale delays and bounds apply unchanged.

Until the replicas have reported (the first seconds of a deployment) Serve's plain request count is used.
This module imports nothing of ours, so Serve can pickle the policy by value for its controller.
"""

from __future__ import annotations

from typing import Any

POLICY_PATH = "bizra_voice.serve.autoscaling:session_autoscaling_policy"
SESSIONS = "bizra_sessions"
TARGET_SESSIONS = "bizra_target_sessions"


def session_load(sessions: dict[Any, float], targets: dict[Any, float], target_ongoing: float) -> float | None:
    """Total sessions rescaled so that a replica at its own target counts ``target_ongoing`` requests.

    None when no replica has reported a positive target yet.
    """
    load = 0.0
    reported = False
    for replica, target in targets.items():
        if target <= 0:
            continue
        reported = True
        load += sessions.get(replica, 0.0) * target_ongoing / target
    return load if reported else None


def session_autoscaling_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """Ray Serve custom autoscaling policy: Serve's default decision on measured-capacity session load."""
    from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
    from ray.serve.config import AutoscalingContext

    metrics = ctx.aggregated_metrics or {}
    load = session_load(metrics.get(SESSIONS, {}), metrics.get(TARGET_SESSIONS, {}),
                        float(ctx.config.get_target_ongoing_requests()))
    if load is None:
        return replica_queue_length_autoscaling_policy(ctx)
    rescaled = AutoscalingContext(
        deployment_id=ctx.deployment_id, deployment_name=ctx.deployment_name, app_name=ctx.app_name,
        current_num_replicas=ctx.current_num_replicas, target_num_replicas=ctx.target_num_replicas,
        running_replicas=ctx.running_replicas, total_num_requests=load, total_queued_requests=0.0,
        aggregated_metrics=metrics, raw_metrics=None,
        capacity_adjusted_min_replicas=ctx.capacity_adjusted_min_replicas,
        capacity_adjusted_max_replicas=ctx.capacity_adjusted_max_replicas, policy_state=ctx.policy_state,
        last_scale_up_time=ctx.last_scale_up_time, last_scale_down_time=ctx.last_scale_down_time,
        current_time=ctx.current_time, config=ctx.config)
    return replica_queue_length_autoscaling_policy(rescaled)
