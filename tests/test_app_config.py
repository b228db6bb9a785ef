"""App config -> deployment options, the shipped profiles, and the fail-fast helpers (no Ray cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bizra_voice.app import build_app, deployment_options, load_config
from bizra_voice.config import AppConfig, RouterConfig
from bizra_voice.config_errors import ConfigError, sentence_for
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
    assert config.engine.slots == "auto"  # measured at replica start; Serve admits up to the bound
    slots = config.engine.max_slots
    assert voice["max_ongoing_requests"] == slots + config.voice_server.reject_margin
    assert voice["autoscaling_config"]["policy"]["policy_function"] == "bizra_voice.serve.autoscaling:session_autoscaling_policy"
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
    assert config.engine.slots == "auto"
    assert opts["VoiceServer"]["max_ongoing_requests"] == config.engine.max_slots + 2


SENTENCES = [
    # unknown keys: the closest spelling among the section's keys, or the section a key belongs to
    ({"transcribr": {}}, "Unknown key `args.transcribr` — did you mean `transcriber`?"),
    ({"voice_server": {"min_replica": 1}}, "Unknown key `args.voice_server.min_replica` — did you mean `min_replicas`?"),
    ({"reanchor_history": 4}, "Unknown key `args.reanchor_history` — did you mean `args.engine.reanchor_history`?"),
    ({"router": {"zzz": 1}}, "Unknown key `args.router.zzz`: remove it (the keys under `args.router` are "
     f"{', '.join(RouterConfig.model_fields)})."),
    # wrong type: expected vs given (as YAML spells it)
    ({"qwen": {"enabled": "maybe"}}, "`args.qwen.enabled` must be a valid boolean, not 'maybe'."),
    ({"reliability": {"drain_notice_s": None}}, "`args.reliability.drain_notice_s` must be a valid number, not null."),
    ({"engine": 5}, "`args.engine` must be a section of keys (a YAML mapping), not 5."),
    ({"access": {"allowed_origins": ["https://voice.lan", 3]}},
     "`args.access.allowed_origins[1]` must be a valid string, not 3."),
    ({"engine": {"device": "cdua"}},
     "`args.engine.device` must be one of 'auto', 'cpu' or 'cuda', not 'cdua' — did you mean 'cuda'?"),
    ({"engine": {"device": "gpu"}}, "`args.engine.device` must be one of 'auto', 'cpu' or 'cuda', not 'gpu'."),
    # out of range
    ({"voice_server": {"num_gpus": -1}}, "`args.voice_server.num_gpus` must be greater than or equal to 0, not -1."),
    ({"qwen": {"system_prompt": "x" * 4001}},
     "`args.qwen.system_prompt` must have at most 4000 characters, not a text of 4001 characters."),
    # a rule across keys, and more than one problem
    ({"profile": "cpu-dev", "voice_server": {"num_gpus": 0.5}},
     "Invalid `args`: the cpu-dev profile must not reserve GPUs (set num_gpus: 0)."),
    ({"router": {"max_load": 0}, "hybrid": {"barge_in": "no way"}, "recording": {"enabled": 2}},
     "`args.router.max_load` must be greater than 0, not 0. (2 more problems after this one.)"),
]


@pytest.mark.parametrize(("args", "sentence"), SENTENCES, ids=[s.split(" ")[0] + "-" + str(i)
                                                              for i, (_, s) in enumerate(SENTENCES)])
def test_config_errors_are_one_sentence_naming_the_key_and_the_fix(args, sentence):
    with pytest.raises(ConfigError) as info:
        build_app(args)
    assert str(info.value) == sentence
    assert info.value.__cause__ is None and "\n" not in str(info.value)


def test_a_union_field_is_one_sentence_with_both_alternatives():
    """pydantic reports one error per union member, each at a tagged location; they are said together."""

    class Section(BaseModel):
        model_config = ConfigDict(extra="forbid")
        slots: int | Literal["auto"] = "auto"

    class Root(BaseModel):
        model_config = ConfigDict(extra="forbid")
        engine: Section = Field(default_factory=Section)

    with pytest.raises(ValidationError) as info:
        Root.model_validate({"engine": {"slots": "four"}})
    assert sentence_for(info.value, Root) == "`args.engine.slots` must be a valid integer or 'auto', not 'four'."
    with pytest.raises(ConfigError, match=r"^`args\.engine\.slots` must be .*, not 'four'\.$"):
        build_app({"engine": {"slots": "four"}})  # the real field, whatever its alternatives are


def test_missing_files_and_folders_are_one_sentence(tmp_path):
    gone = tmp_path / "gone"
    with pytest.raises(ConfigError) as info:
        build_app({"engine": {"custom_voices_dir": str(gone)}})
    assert str(info.value) == (f"`args.engine.custom_voices_dir` is {gone}, which is not there: "
                               "create the folder or fix the path.")
    with pytest.raises(ConfigError, match=r"^`args\.voice_server\.client_dir` .* holds no index\.html"):
        build_app({"voice_server": {"client_dir": str(tmp_path)}})
    (tmp_path / "index.html").write_text("<title>BIZRA</title>")
    load_config({"voice_server": {"client_dir": str(tmp_path)}})  # a folder with a page is fine
    with pytest.raises(ConfigError, match=r"^`args\.engine\.checkpoint` is \./no-such-checkpoint \(.*\), which is "
                       "not there"):
        build_app({"engine": {"checkpoint": "./no-such-checkpoint"}})
    with pytest.raises(ConfigError, match=r"holds no model\.safetensors, tokenizer-e351c8d8"):
        build_app({"engine": {"checkpoint": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"^`args\.cache_dir` .* is a file, not a folder"):
        build_app({"cache_dir": str(tmp_path / "index.html")})
    with pytest.raises(ConfigError, match=r"^`args\.qwen\.model` is /no/such/qwen, which is not there"):
        build_app({"qwen": {"model": "/no/such/qwen"}})
    # repo ids and generated tiny checkpoints are not paths
    load_config({"engine": {"checkpoint": "nvidia/personaplex-7b-v1"}, "qwen": {"model": "Qwen/Qwen2.5-1.5B-Instruct"}})
    load_config({"tiny_engine": True, "engine": {"checkpoint": "./no-such-checkpoint"}})


def test_tls_files_must_exist_and_load_as_a_pair(tmp_path):
    from types import SimpleNamespace

    from bizra_voice.tls import make_self_signed

    one, other = make_self_signed(tmp_path / "one"), make_self_signed(tmp_path / "other")
    preflight.check_tls(SimpleNamespace(ssl_certfile=str(one.cert), ssl_keyfile=str(one.key)))
    preflight.check_tls(SimpleNamespace(ssl_certfile=None, ssl_keyfile=None))
    with pytest.raises(ConfigError, match=r"^`http_options\.ssl_certfile` is \./nope\.pem \(.*\), which does "
                       r"not exist: make a certificate with `bizra-voice make-cert \./tls` or fix the path\.$"):
        preflight.check_tls(SimpleNamespace(ssl_certfile="./nope.pem", ssl_keyfile=str(one.key)))
    with pytest.raises(ConfigError, match=r"do not load as a certificate and its key"):
        preflight.check_tls(SimpleNamespace(ssl_certfile=str(one.cert), ssl_keyfile=str(other.key)))


def test_gpu_profile_without_ray_or_cuda_aborts(monkeypatch):
    monkeypatch.setattr(preflight, "local_cuda", lambda: False)
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as when build_app runs before any cluster
    args = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    with pytest.raises(preflight.ProfileUnavailable) as info:
        build_app(args)
    assert str(info.value) == preflight.NO_GPU_SENTENCE


def test_in_process_a_failure_is_a_plain_exception():
    # Under pytest (a driver, not Serve's build task) nothing is looked up or signalled: the exception is raised.
    assert not preflight.inside_serve_build_task()
    with pytest.raises(ConfigError, match="^the sentence$"):
        preflight.fail(ConfigError("the sentence"), {"engine": {}})


def test_only_the_serve_run_of_this_very_config_is_stopped(tmp_path):
    args = {"profile": "cpu-dev", "engine": {"slots": 2}}
    config = {"applications": [{"name": "bizra", "import_path": "bizra_voice.app:build_app", "args": args}]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    serve = "/venv/bin/serve"
    assert preflight.runs_config_with(["/venv/bin/python", serve, "run", "mine.yaml"], tmp_path, args)
    assert preflight.runs_config_with([serve, "run", "-a", "auto", str(tmp_path / "mine.yaml")], Path("/"), args)
    assert not preflight.runs_config_with([serve, "run", "mine.yaml"], tmp_path, {"profile": "gpu"})
    assert not preflight.runs_config_with([serve, "run", "other.yaml"], tmp_path, args)
    assert not preflight.runs_config_with([serve, "deploy", "mine.yaml"], tmp_path, args)
    assert not preflight.runs_config_with(["python", "mine.py", "run", "mine.yaml"], tmp_path, args)
