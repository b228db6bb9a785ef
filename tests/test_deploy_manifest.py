"""deploy/rayservice.yaml cannot drift from the code (fast, no cluster).

Its ``serveConfigV2`` is the shipped GPU profile (serve_config.yaml) but for the pod network's
``http_options.host``, it is a valid Ray Serve config (Serve's own schema) and a valid ``AppConfig`` whose
deployment options build; and the Ray cluster it describes fits that profile: a head without GPUs, an
autoscaling GPU group whose every GPU share the profile may use, the HF and access tokens from a Secret
under the names the config reads, the model cache on a volume, one Ray version everywhere.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "rayservice.yaml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


@pytest.fixture(scope="module")
def service(documents) -> dict:
    services = [doc for doc in documents if doc.get("kind") == "RayService"]
    assert len(services) == 1 and services[0]["apiVersion"] == "ray.io/v1"
    return services[0]


@pytest.fixture(scope="module")
def serve_config(service) -> dict:
    return yaml.safe_load(service["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def app_config(serve_config):
    from bizra_voice.config import AppConfig

    (app,) = serve_config["applications"]
    assert app["import_path"] == "bizra_voice.app:build_app"
    return AppConfig.model_validate(app["args"])


def test_serve_config_is_the_shipped_gpu_profile_but_for_the_pod_network_host(serve_config):
    shipped = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    expected = copy.deepcopy(shipped)
    expected["http_options"]["host"] = "0.0.0.0"  # reached through the Service/Ingress, not loopback
    if serve_config != expected:
        differ = sorted(k for k in set(serve_config) | set(expected) if serve_config.get(k) != expected.get(k))
        ours, theirs = serve_config["applications"][0]["args"], expected["applications"][0]["args"]
        args = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        pytest.fail(f"deploy/rayservice.yaml's serveConfigV2 drifted from serve_config.yaml: top-level {differ}, "
                    f"args sections {args}")


def test_serve_config_passes_serves_own_schema(serve_config):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.parse_obj(serve_config)
    assert [app.import_path for app in schema.applications] == ["bizra_voice.app:build_app"]


def test_app_args_are_our_config_and_its_deployment_options_build(app_config):
    from bizra_voice.app import deployment_options
    from bizra_voice.serve import preflight

    preflight.check_paths(app_config)  # nothing local is named that a pod would lack
    options = deployment_options(app_config)
    assert options["VoiceServer"]["ray_actor_options"]["num_gpus"] == app_config.voice_server.num_gpus > 0


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _gpus(container: dict) -> float:
    return float((container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def _cpus(container: dict) -> float:
    value = str(container["resources"]["limits"]["cpu"])
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def test_the_head_has_no_gpu_and_the_gpu_group_autoscales_over_every_share(service, app_config):
    from bizra_voice.serve.autoscaling import gpu_shares

    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0" and not any(_gpus(c) for c in _containers(head))
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = _containers(group)
    gpus_per_pod = _gpus(worker)
    vs, kn, tr = app_config.voice_server, app_config.knowledge, app_config.transcriber
    assert cluster["enableInTreeAutoscaling"] is True and group["maxReplicas"] > group["minReplicas"]
    # the profile checks at deploy time that the cluster has a GPU: a GPU pod exists from the start
    assert group["minReplicas"] >= 1 and group["replicas"] >= group["minReplicas"]
    # every GPU share the group may ever add is usable, and autoscaling asks for no replica beyond them
    assert vs.max_replicas == gpu_shares([gpus_per_pod] * group["maxReplicas"], vs.num_gpus) > 0
    # the side models fit beside a VoiceServer share on one GPU, and one pod has the CPUs for all three
    assert vs.num_gpus + kn.num_gpus + tr.num_gpus <= 1.0
    assert _cpus(worker) >= vs.num_cpus + kn.num_cpus + tr.num_cpus


def test_tokens_come_from_a_secret_under_the_names_the_config_reads(service, app_config):
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    (worker,) = _containers(group)
    env = {e["name"]: e for e in worker["env"]}
    for name in (app_config.engine.hf_token_env, app_config.access.token_env):
        assert name in env and "secretKeyRef" in env[name]["valueFrom"], f"{name} is not taken from a Secret"
        assert "value" not in env[name]


def test_the_model_cache_is_on_a_volume_claim_of_the_manifest(documents, service):
    claims = {doc["metadata"]["name"] for doc in documents if doc.get("kind") == "PersistentVolumeClaim"}
    (group,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    spec = group["template"]["spec"]
    (worker,) = spec["containers"]
    hf_home = next(e["value"] for e in worker["env"] if e["name"] == "HF_HOME")
    claimed = {v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") in claims}
    mounts = [m for m in worker["volumeMounts"] if m["name"] in claimed]
    assert any(hf_home == m["mountPath"] or hf_home.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts)


def test_one_ray_version_and_image_everywhere_and_the_serve_port_exposed(service, serve_config):
    import ray

    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray.__version__)}-py3\d+-(gpu|cu\d+)", base), base
    (group,) = cluster["workerGroupSpecs"]
    images = {c["image"] for g in (cluster["headGroupSpec"], group) for c in _containers(g)}
    assert len(images) == 1, images  # the head builds the app (bizra_voice imported there too)
    (head,) = _containers(cluster["headGroupSpec"])
    assert {"containerPort": serve_config["http_options"]["port"], "name": "serve"} in head["ports"]
