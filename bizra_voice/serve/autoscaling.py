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

``voice_server.warm_every_gpu`` adds a floor: one replica per GPU share the cluster's alive nodes hold,
whatever the load (``SessionAutoscalingPolicy``, a policy *object*). The policy runs in Serve's controller,
a Ray actor, so ``ray.nodes()`` there reads every node's declared GPUs; the per-replica GPU share, which
no ``AutoscalingContext`` carries, travels inside the object. Ray 2.53's ``AutoscalingPolicy`` takes only an
import path (no ``policy_kwargs``), so :func:`warm_every_gpu_policy` ships the configured object the way
Serve ships every policy to its controller: pickled by value into the policy's serialized definition.

This module imports nothing of ours, so Serve can pickle the policy by value for its controller.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

POLICY_PATH = "bizra_voice.serve.autoscaling:session_autoscaling_policy"
WARM_POLICY_PATH = "bizra_voice.serve.autoscaling:SessionAutoscalingPolicy"
NODES_REFRESH_S = 2.0  # how stale the controller's view of the cluster's GPUs may be (one GCS call per refresh)
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


def gpu_shares(node_gpus: Iterable[float], share: float) -> int:
    """How many replicas asking ``share`` GPUs nodes with these GPU counts hold.

    Ray places a fractional GPU request on ONE device, so below one GPU each device holds
    ``floor(1 / share)`` of them (0.7 -> 1, 0.5 -> 2) and leftovers of different devices never combine; a
    whole-GPU share takes ``floor(gpus / share)`` per node (GPUs of different nodes never combine either).
    Amounts are compared at Ray's resource precision (1e-4), so 0.1 x 10 fills a device exactly.
    """
    if share <= 0:
        return 0
    total = 0
    for gpus in node_gpus:
        if share >= 1:
            total += math.floor(round(gpus / share, 4))
        else:
            devices, part = divmod(round(gpus, 4), 1.0)  # a node may declare part of a device
            total += int(devices) * math.floor(round(1.0 / share, 4)) + math.floor(round(part / share, 4))
    return total


def alive_node_gpus(nodes: Iterable[dict]) -> list[float]:
    """Declared GPUs of each alive node in ``ray.nodes()`` (a draining node still counts until it is gone:
    Serve 2.53 would stop any replica to meet a lower count, not the draining node's)."""
    return [float((n.get("Resources") or {}).get("GPU", 0.0)) for n in nodes if n.get("Alive")]


class SessionAutoscalingPolicy:
    """Serve custom autoscaling policy object: ``session_autoscaling_policy``'s decision, raised to one
    replica per GPU share in the cluster when ``warm_every_gpu`` (Serve then clips to min/max_replicas).

    ``list_nodes`` (default ``ray.nodes``, called in Serve's controller) is read at most every
    ``refresh_s``: the policy runs on every control-loop tick. Replicas that the count includes but the
    cluster cannot place (a side model taking room on a device) stay pending, as any replica that does
    not fit.
    """

    def __init__(self, gpu_share: float, *, warm_every_gpu: bool = True, refresh_s: float = NODES_REFRESH_S,
                 list_nodes: Callable[[], list[dict]] | None = None) -> None:
        if gpu_share <= 0:
            raise ValueError("warm_every_gpu needs a GPU share per replica (voice_server.num_gpus > 0)")
        self.gpu_share = float(gpu_share)
        self.warm_every_gpu = warm_every_gpu
        self.refresh_s = refresh_s
        self.list_nodes = list_nodes
        self._shares: tuple[float, int] | None = None  # (monotonic time read, shares)

    def shares(self) -> int:
        """GPU shares of the alive nodes, re-read from the cluster at most every ``refresh_s``; when the
        cluster cannot be read the last count stands (none yet: 0, the load alone decides)."""
        now = time.monotonic()
        if self._shares is None or now - self._shares[0] >= self.refresh_s:
            known = self._shares[1] if self._shares is not None else 0
            try:
                nodes = self.list_nodes() if self.list_nodes is not None else _ray_nodes()
                known = gpu_shares(alive_node_gpus(nodes), self.gpu_share)
            except Exception as exc:  # a GCS hiccup must not fail the controller's autoscaling tick
                logging.getLogger("ray.serve").warning("warm_every_gpu: cannot read the cluster's nodes (%s); "
                                                       "keeping %d GPU shares", exc, known)
            self._shares = (now, known)
        return self._shares[1]

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        replicas, state = session_autoscaling_policy(ctx)
        if self.warm_every_gpu:
            replicas = max(replicas, self.shares())
        return replicas, state


def _ray_nodes() -> list[dict]:
    import ray

    return ray.nodes()


def warm_every_gpu_policy(gpu_share: float) -> Any:
    """The ``autoscaling_config.policy`` that keeps one replica per GPU share warm: Serve's
    ``AutoscalingPolicy`` whose serialized definition is a configured ``SessionAutoscalingPolicy``
    (pickled by value like any Serve policy, so the controller needs none of our code installed)."""
    import sys

    from ray import cloudpickle
    from ray.serve.config import AutoscalingPolicy

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        definition = cloudpickle.dumps(SessionAutoscalingPolicy(gpu_share))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    return AutoscalingPolicy.from_serialized_policy_def({"policy_function": WARM_POLICY_PATH}, definition)
