"""Serve autoscaling on the replicas' MEASURED capacity (serve/autoscaling.py), with Serve's own policy deciding."""

from __future__ import annotations

import pytest

from bizra_voice.serve.autoscaling import (
    POLICY_PATH,
    SESSIONS,
    TARGET_SESSIONS,
    session_autoscaling_policy,
    session_load,
)


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


# ---- voice_server.warm_every_gpu: one replica per GPU share of the cluster, whatever the load ---------------


def test_gpu_shares_pack_fractions_per_device_and_whole_gpus_per_node():
    from bizra_voice.serve.autoscaling import gpu_shares

    assert gpu_shares([0.0, 1.0, 1.0], 0.7) == 2  # a head without GPUs, two 1-GPU nodes
    assert gpu_shares([2.0], 0.7) == 2  # 0.3 + 0.3 left on two devices never make a third share
    assert gpu_shares([1.0], 0.5) == 2 and gpu_shares([1.0], 0.1) == 10 and gpu_shares([1.0], 1 / 3) == 3
    assert gpu_shares([8.0, 3.0], 2.0) == 5  # whole-GPU shares: per node, the odd GPU stays unused
    assert gpu_shares([0.5], 0.3) == 1  # a node declaring part of a device
    assert gpu_shares([4.0], 0.0) == 0 and gpu_shares([], 0.7) == 0


def test_only_alive_nodes_count():
    from bizra_voice.serve.autoscaling import alive_node_gpus

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"GPU": 1.0}},
             {"Alive": False, "Resources": {"GPU": 4.0}}]
    assert alive_node_gpus(nodes) == [0.0, 1.0]


class _Nodes:
    """A scripted stand-in for ``ray.nodes()`` (the cluster's node table), counting its calls."""

    def __init__(self, *gpus_per_node: float) -> None:
        self.gpus = list(gpus_per_node)
        self.calls = 0

    def __call__(self) -> list[dict]:
        self.calls += 1
        return [{"Alive": True, "Resources": {"GPU": g} if g else {"CPU": 1.0}} for g in self.gpus]


def test_warm_policy_keeps_a_replica_per_gpu_share_without_load_and_follows_load_above_it():
    from bizra_voice.serve.autoscaling import SessionAutoscalingPolicy

    nodes = _Nodes(0.0, 1.0, 1.0, 1.0)  # three GPU nodes
    policy = SessionAutoscalingPolicy(0.7, list_nodes=nodes)
    idle = _context({SESSIONS: [0.0], TARGET_SESSIONS: [2.1]}, current=1)
    assert policy(idle)[0] == 3  # no session at all: one replica per GPU share
    busy = _context({SESSIONS: [3.0] * 3, TARGET_SESSIONS: [2.1] * 3}, current=3)
    assert policy(busy)[0] == 5  # load above the shares still asks for more (they stay pending until GPUs join)
    load_only = SessionAutoscalingPolicy(0.7, warm_every_gpu=False, list_nodes=nodes)
    assert load_only(idle)[0] == session_autoscaling_policy(idle)[0] == 1


def test_warm_policy_reads_the_cluster_at_most_every_refresh_and_sees_a_node_join():
    from bizra_voice.serve.autoscaling import SessionAutoscalingPolicy

    nodes = _Nodes(1.0)
    idle = _context({SESSIONS: [0.0], TARGET_SESSIONS: [2.1]}, current=1)
    cached = SessionAutoscalingPolicy(0.7, refresh_s=3600.0, list_nodes=nodes)
    assert [cached(idle)[0] for _ in range(5)] == [1] * 5 and nodes.calls == 1  # every control-loop tick
    fresh = SessionAutoscalingPolicy(0.7, refresh_s=0.0, list_nodes=nodes)
    assert fresh(idle)[0] == 1
    nodes.gpus.append(1.0)  # a GPU node joins
    assert fresh(idle)[0] == 2


def test_warm_every_gpu_option_reaches_serve_as_a_configured_policy_object():
    """The option builds an AutoscalingPolicy whose serialized definition is the configured object; it survives
    Serve's own path to its controller (deployment options -> protobuf -> controller) unchanged."""
    from ray import serve
    from ray.serve._private.config import DeploymentConfig

    from bizra_voice.app import deployment_options
    from bizra_voice.config import AppConfig
    from bizra_voice.serve.autoscaling import WARM_POLICY_PATH, SessionAutoscalingPolicy

    config = AppConfig.model_validate({"voice_server": {"num_gpus": 0.7, "min_replicas": 1, "max_replicas": 8,
                                                        "warm_every_gpu": True}})
    autoscaling = deployment_options(config)["VoiceServer"]["autoscaling_config"]

    @serve.deployment
    class Probe:
        pass

    sent = Probe.options(autoscaling_config=autoscaling)._deployment_config
    received = DeploymentConfig.from_proto_bytes(sent.to_proto_bytes())  # what the controller rebuilds
    assert received.autoscaling_config.policy.policy_function == WARM_POLICY_PATH
    policy = received.autoscaling_config.policy.get_policy()
    assert isinstance(policy, SessionAutoscalingPolicy) and policy.gpu_share == 0.7 and policy.warm_every_gpu
    assert received.autoscaling_config.max_replicas == 8
    policy.list_nodes = _Nodes(0.0, 1.0, 1.0)
    assert policy(_context({SESSIONS: [0.0], TARGET_SESSIONS: [2.1]}, current=1))[0] == 2
    # off (the default): the plain function path, as before
    default = deployment_options(AppConfig.model_validate({"voice_server": {"num_gpus": 0.7, "max_replicas": 8}}))
    assert default["VoiceServer"]["autoscaling_config"]["policy"] == {"policy_function": POLICY_PATH}


def test_warm_every_gpu_needs_a_gpu_share_and_room_to_scale():
    from bizra_voice.app import load_config
    from bizra_voice.config_errors import ConfigError

    for voice_server in ({"warm_every_gpu": True, "num_gpus": 0.0, "max_replicas": 4},
                         {"warm_every_gpu": True, "num_gpus": 0.7, "max_replicas": 1}):
        with pytest.raises(ConfigError, match="warm_every_gpu keeps one replica per GPU share"):
            load_config({"profile": "cpu-dev", "voice_server": voice_server})


def test_warm_policy_keeps_its_last_count_when_the_cluster_cannot_be_read():
    from bizra_voice.serve.autoscaling import SessionAutoscalingPolicy

    nodes = _Nodes(1.0, 1.0)
    policy = SessionAutoscalingPolicy(0.7, refresh_s=0.0, list_nodes=nodes)
    idle = _context({SESSIONS: [0.0], TARGET_SESSIONS: [2.1]}, current=1)
    assert policy(idle)[0] == 2

    def unreachable() -> list[dict]:
        raise ConnectionError("GCS unavailable")

    policy.list_nodes = unreachable
    assert policy(idle)[0] == 2  # the last count stands; the controller's tick does not fail
    assert SessionAutoscalingPolicy(0.7, list_nodes=unreachable)(idle)[0] == 1  # never read: the load decides
