"""App config -> deployment options, the shipped profiles, and the fail-fast helpers (no Ray cluster)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bizra_voice.app import build_app, deployment_options
from bizra_voice.config import AppConfig
from bizra_voice.serve import preflight

REPO = Path(__file__).resolve().parents[1]


def profile(name: str) -> AppConfig:
    config = yaml.safe_load((REPO / name).read_text())
    app = config["applications"][0]
    assert app["import_path"] == "bizra_voice.app:build_app"
    return AppConfig.model_validate(app["args"])


def test_gpu_profile_sizing():
    config = profile("serve_config.yaml")
    assert config.engine.checkpoint == "nvidia/personaplex-7b-v1" and config.qwen.model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert config.needs_gpu and not config.cpu_dev
    opts = deployment_options(config)
    voice = opts["VoiceServer"]
    slots = config.engine.slots
    assert voice["max_ongoing_requests"] == slots + config.voice_server.reject_margin
    assert voice["ray_actor_options"]["num_gpus"] == 0.7
    assert "num_replicas" not in voice
    auto = voice["autoscaling_config"]
    assert auto["max_replicas"] == config.voice_server.max_replicas > auto["min_replicas"]
    assert auto["target_ongoing_requests"] == pytest.approx(0.7 * slots)
    assert auto["upscale_delay_s"] == 5.0 and auto["downscale_delay_s"] == 300.0
    assert opts["QwenKnowledge"]["ray_actor_options"]["num_gpus"] == 0.2
    # One GPU holds one PersonaPlex share + one Qwen share.
    assert voice["ray_actor_options"]["num_gpus"] + opts["QwenKnowledge"]["ray_actor_options"]["num_gpus"] <= 1.0


def test_cpu_profile_is_tiny_and_gpu_free():
    config = profile("serve_config.cpu.yaml")
    assert config.cpu_dev and config.tiny_engine and config.qwen.tiny_random and not config.needs_gpu
    assert config.engine.device == "cpu"
    opts = deployment_options(config)
    assert opts["VoiceServer"]["num_replicas"] == 1
    assert opts["VoiceServer"]["max_ongoing_requests"] == config.engine.slots + 2


def test_config_errors_are_one_sentence():
    with pytest.raises(SystemExit, match=r"^Invalid BIZRA Voice config at args.engine.slots: "):
        build_app({"engine": {"slots": 0}})
    with pytest.raises(SystemExit, match="voice_server.unknown"):
        build_app({"voice_server": {"unknown": 1}})
    with pytest.raises(SystemExit, match="must not reserve GPUs"):
        build_app({"profile": "cpu-dev", "voice_server": {"num_gpus": 0.5}})


def test_gpu_profile_without_ray_or_cuda_aborts(monkeypatch):
    monkeypatch.setattr(preflight, "local_cuda", lambda: False)
    monkeypatch.setattr(preflight, "find_serve_run_ancestor", lambda pid=None: None)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as when build_app runs before any cluster
    args = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    with pytest.raises(preflight.ProfileUnavailable) as info:
        build_app(args)
    assert str(info.value) == preflight.NO_GPU_SENTENCE


def test_no_serve_run_ancestor_under_pytest():
    # The abort path only signals a `serve run` CLI that is an ancestor (covered end to end in
    # test_serve_run.py); under pytest there is none, so nothing is signalled.
    assert preflight.find_serve_run_ancestor(os.getpid()) is None
