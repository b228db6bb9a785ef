"""``build_app``: the one typed builder behind ``serve_config.yaml`` and ``serve_config.cpu.yaml``.

``import_path: bizra_voice.app:build_app``; the YAML's ``args:`` is an ``AppConfig``. Deployment sizing
(GPU fractions, ``max_ongoing_requests`` from the slot count, autoscaling bounds) follows from it here,
so the YAML holds product settings only.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from bizra_voice.config import CPU_DEV_WARNING, AppConfig
from bizra_voice.config_errors import ConfigError, config_error
from bizra_voice.serve import preflight
from bizra_voice.serve.autoscaling import warm_every_gpu_policy

log = logging.getLogger("ray.serve")


def _check_resources(config: AppConfig) -> None:
    """Fail fast, in one sentence, when a GPU profile is started where no GPU exists.

    The cluster must declare GPUs; and on a single-node cluster whose engine wants CUDA, torch must see
    one too (declared-but-absent GPUs are only valid with ``engine.device: cpu``, as the scaling test uses).
    """
    if not config.needs_gpu:
        return
    import ray

    unavailable = preflight.ProfileUnavailable(preflight.NO_GPU_SENTENCE)
    if not ray.is_initialized():
        if not preflight.local_cuda():
            raise unavailable
        return
    if preflight.cluster_gpus() <= 0:
        raise unavailable
    single_node = len([n for n in ray.nodes() if n.get("Alive")]) <= 1
    if config.engine.device != "cpu" and single_node and not preflight.local_cuda():
        raise unavailable


def load_config(args: dict[str, Any] | None) -> AppConfig:
    """``args`` as a checked ``AppConfig``: valid fields, existing files, loadable TLS files, and the GPUs
    the profile needs; any problem is one ``ConfigError`` / ``ProfileUnavailable`` sentence."""
    try:
        config = AppConfig.model_validate(args if args is not None else {})
    except ValidationError as exc:
        raise config_error(exc, AppConfig) from None
    preflight.check_paths(config)
    if preflight.inside_serve_build_task():  # beside the proxy, in the directory its paths are relative to
        preflight.check_tls(preflight.serve_http_options())
    _check_resources(config)
    return config


def deployment_options(config: AppConfig) -> dict[str, dict[str, Any]]:
    """Ray Serve options of each deployment, derived from the app config (pure; unit-tested)."""
    # With 'auto' the replica measures its slots at start: Serve admits up to the bound, the replica answers
    # 1013 past its measured capacity, and autoscaling follows the capacity it reports (serve/autoscaling.py).
    slots = config.engine.slots if isinstance(config.engine.slots, int) else config.engine.max_slots
    vs = config.voice_server
    voice: dict[str, Any] = {
        "max_ongoing_requests": vs.max_ongoing_requests(slots),
        "ray_actor_options": {"num_gpus": vs.num_gpus, "num_cpus": vs.num_cpus},
        "health_check_period_s": 5.0,  # a retired node's replica is replaced within ~15 s
        "graceful_shutdown_timeout_s": 20.0,
    }
    autoscaling = vs.autoscaling_config(slots)
    if autoscaling is None:
        voice["num_replicas"] = vs.min_replicas or 1
    else:
        if vs.warm_every_gpu:  # one replica per GPU share of the cluster, whatever the load
            autoscaling["policy"] = warm_every_gpu_policy(vs.num_gpus)
        voice["autoscaling_config"] = autoscaling
    kn = config.knowledge
    knowledge = {  # a gateway client holds no model: no GPU share for it, whatever the section says
        "num_replicas": kn.num_replicas,
        "max_ongoing_requests": kn.max_ongoing_requests,
        "ray_actor_options": {"num_gpus": kn.num_gpus if kn.local else 0.0, "num_cpus": kn.num_cpus},
    }
    router = {"num_replicas": 1, "max_ongoing_requests": 1000,
              "ray_actor_options": {"num_cpus": config.router.num_cpus}}
    tr = config.transcriber
    transcriber = {"num_replicas": tr.num_replicas, "max_ongoing_requests": tr.max_ongoing_requests,
                   "ray_actor_options": {"num_gpus": tr.num_gpus, "num_cpus": tr.num_cpus}}
    # One replica: it is the single store every VoiceServer replica consumes tickets from (single use).
    tickets = {"num_replicas": 1, "max_ongoing_requests": 1000,
               "ray_actor_options": {"num_cpus": config.sessions.num_cpus}}
    return {"VoiceServer": voice, kn.deployment_name: knowledge, "ModeRouter": router, "Transcriber": transcriber,
            "SessionTickets": tickets}


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` as an ``AppConfig`` and bind VoiceServer -> ModeRouter -> the knowledge deployment
    (``QwenKnowledge``, or ``GatewayKnowledge`` with ``knowledge.backend: openai``) (+ Transcriber).

    An invalid config raises ``ConfigError`` (or ``ProfileUnavailable``) whose message is one sentence
    naming the key and the fix; see ``serve/preflight.py`` for how ``serve run`` shows it and exits.
    """
    try:
        config = load_config(args)
    except (ConfigError, preflight.ProfileUnavailable) as exc:
        preflight.fail(exc, args)  # from `serve run config.yaml`: told on its console, the CLI stopped
    if config.cpu_dev:
        log.warning(CPU_DEV_WARNING)
    for note in config.deprecations:
        log.warning(note)

    from bizra_voice.serve.mode_router import ModeRouter
    from bizra_voice.serve.qwen import KnowledgeModel
    from bizra_voice.serve.transcriber import Transcriber
    from bizra_voice.serve.voice_server import VoiceServer

    opts = deployment_options(config)
    knowledge = None
    kn = config.knowledge
    if kn.enabled:
        name = kn.deployment_name
        model_dir = str(config.tiny_qwen_dir) if kn.local and kn.tiny_random else None
        knowledge = KnowledgeModel.options(name=name, **opts[name]).bind(
            kn.model_dump(), config.tools.model_dump(), model_dir)
    router = ModeRouter.options(**opts["ModeRouter"]).bind(config.router.model_dump(), knowledge, kn.label)
    transcriber = None
    if config.transcriber.enabled:
        model_dir = str(config.tiny_whisper_dir) if config.transcriber.tiny_random else None
        transcriber = Transcriber.options(**opts["Transcriber"]).bind(config.transcriber.model_dump(), model_dir)
    from bizra_voice.serve.tickets import SessionTickets

    tickets = SessionTickets.options(**opts["SessionTickets"]).bind(config.sessions.ticket_ttl_s,
                                                                    config.sessions.max_pending)
    return VoiceServer.options(**opts["VoiceServer"]).bind(config.model_dump(mode="json"), router, knowledge,
                                                           transcriber, tickets=tickets)
