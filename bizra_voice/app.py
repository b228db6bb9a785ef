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
        "health_check_period_s": 10.0,
        "graceful_shutdown_timeout_s": 20.0,
    }
    autoscaling = vs.autoscaling_config(slots)
    if autoscaling is None:
        voice["num_replicas"] = vs.min_replicas or 1
    else:
        voice["autoscaling_config"] = autoscaling
    qwen = {
        "num_replicas": config.qwen.num_replicas,
        "max_ongoing_requests": config.qwen.max_ongoing_requests,
        "ray_actor_options": {"num_gpus": config.qwen.num_gpus, "num_cpus": config.qwen.num_cpus},
    }
    router = {"num_replicas": 1, "max_ongoing_requests": 1000,
              "ray_actor_options": {"num_cpus": config.router.num_cpus}}
    tr = config.transcriber
    transcriber = {"num_replicas": tr.num_replicas, "max_ongoing_requests": tr.max_ongoing_requests,
                   "ray_actor_options": {"num_gpus": tr.num_gpus, "num_cpus": tr.num_cpus}}
    return {"VoiceServer": voice, "QwenKnowledge": qwen, "ModeRouter": router, "Transcriber": transcriber}


def build_app(args: dict[str, Any]) -> Application:
    """Validate ``args`` as an ``AppConfig`` and bind VoiceServer -> ModeRouter -> QwenKnowledge (+ Transcriber).

    An invalid config raises ``ConfigError`` (or ``ProfileUnavailable``) whose message is one sentence
    naming the key and the fix; see ``serve/preflight.py`` for how ``serve run`` shows it and exits.
    """
    try:
        config = load_config(args)
    except (ConfigError, preflight.ProfileUnavailable) as exc:
        preflight.fail(exc, args)  # from `serve run config.yaml`: told on its console, the CLI stopped
    if config.cpu_dev:
        log.warning(CPU_DEV_WARNING)

    from bizra_voice.serve.mode_router import ModeRouter
    from bizra_voice.serve.qwen import QwenKnowledge
    from bizra_voice.serve.transcriber import Transcriber
    from bizra_voice.serve.voice_server import VoiceServer

    opts = deployment_options(config)
    qwen = None
    if config.qwen.enabled:
        qwen_cfg = config.qwen.model_dump()
        model_dir = str(config.tiny_qwen_dir) if config.qwen.tiny_random else None
        qwen = QwenKnowledge.options(**opts["QwenKnowledge"]).bind(qwen_cfg, model_dir)
    router = ModeRouter.options(**opts["ModeRouter"]).bind(config.router.model_dump(), qwen)
    transcriber = None
    if config.transcriber.enabled:
        model_dir = str(config.tiny_whisper_dir) if config.transcriber.tiny_random else None
        transcriber = Transcriber.options(**opts["Transcriber"]).bind(config.transcriber.model_dump(), model_dir)
    return VoiceServer.options(**opts["VoiceServer"]).bind(config.model_dump(mode="json"), router, qwen,
                                                           transcriber)
