"""Find PersonaPlex files (Hugging Face hub or a local folder) and say in one sentence what is wrong.

Real file names of ``nvidia/personaplex-7b-v1``: ``model.safetensors`` (LM, dep_q=16), the Mimi codec
``tokenizer-e351c8d8-checkpoint125.safetensors``, the SentencePiece model ``tokenizer_spm_32k_3.model`` and
``voices.tgz``. The repo's ``config.json`` is not in moshi's format, so the LM kwargs below are used unless a
local folder carries a ``config.json`` with an ``lm_kwargs`` key (tiny dev checkpoints, conformance kits).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bizra_voice import constants as C


class CheckpointError(RuntimeError):
    """A checkpoint problem explained in one actionable sentence."""


PERSONAPLEX_LM_KWARGS: dict[str, Any] = {
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 16, "card": 2048,
    "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True, "layer_scale": None,
    "context": 3000, "max_period": 10000, "gating": "silu", "norm": "rms_norm_f32",
    "positional_embedding": "rope", "depformer_dim": 1024, "depformer_dim_feedforward": 4224,
    "depformer_num_heads": 16, "depformer_num_layers": 6, "depformer_layer_scale": None,
    "depformer_multi_linear": True, "depformer_context": 8, "depformer_max_period": 10000,
    "depformer_gating": "silu", "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}


@dataclass(frozen=True)
class CheckpointFiles:
    """Resolved local paths plus the constructor kwargs of the LM and Mimi."""

    lm: Path
    mimi: Path
    tokenizer: Path
    voices_dir: Path | None
    lm_kwargs: dict[str, Any]
    mimi_config: dict[str, Any] | None  # None = moshi's stock Mimi config
    mimi_num_codebooks: int = 8
    source: str = ""


def _read_local_config(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None, int]:
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config_path} is not valid JSON ({exc}); fix or delete it.") from exc
        if isinstance(config, dict) and "lm_kwargs" in config:
            return dict(config["lm_kwargs"]), config.get("mimi_config"), int(config.get("mimi_num_codebooks", 8))
    return dict(PERSONAPLEX_LM_KWARGS), None, 8


def _voices_cache_dir(archive: Path, cache_dir: str | None) -> Path:
    digest = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}"
                            .encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "bizra_voice"
    return base / "voices" / digest


def extract_voices(archive: Path, cache_dir: str | None = None) -> Path:
    """Extract ``voices.tgz`` once into a cache; only plain ``.pt``/``.wav`` files, flattened by name."""
    target = _voices_cache_dir(archive, cache_dir)
    done = target / ".complete"
    if done.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if not member.isfile() or not name.endswith((".pt", ".wav")) or name.startswith("."):
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                tmp = target / f".{name}.tmp"
                tmp.write_bytes(source.read())
                tmp.replace(target / name)
    except (tarfile.TarError, OSError) as exc:
        raise CheckpointError(f"Could not extract the voices from {archive} ({exc}); delete it so it is "
                              "downloaded again.") from exc
    done.touch()
    return target


def resolve_local(folder: Path, cache_dir: str | None = None) -> CheckpointFiles:
    """Use a local folder that holds the real file names."""
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint folder {folder} does not exist.")
    paths = {name: folder / name for name in (C.LM_FILENAME, C.MIMI_FILENAME, C.TOKENIZER_FILENAME)}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise CheckpointError(f"{', '.join(missing)} missing from {folder}; copy the files of "
                              f"{C.PERSONAPLEX_REPO} there (or run `bizra-voice make-tiny DIR` for a dev model).")
    voices_dir: Path | None = None
    if (folder / "voices").is_dir():
        voices_dir = folder / "voices"
    elif (folder / C.VOICES_ARCHIVE).is_file():
        voices_dir = extract_voices(folder / C.VOICES_ARCHIVE, cache_dir)
    lm_kwargs, mimi_config, n_codebooks = _read_local_config(folder)
    return CheckpointFiles(lm=paths[C.LM_FILENAME], mimi=paths[C.MIMI_FILENAME],
                           tokenizer=paths[C.TOKENIZER_FILENAME], voices_dir=voices_dir, lm_kwargs=lm_kwargs,
                           mimi_config=mimi_config, mimi_num_codebooks=n_codebooks, source=str(folder))


def resolve_hub(repo_id: str, token: str | None, revision: str | None = None,
                cache_dir: str | None = None) -> CheckpointFiles:
    """Download (or reuse from the HF cache) the real files, mapping hub errors to one sentence."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    licence = f"https://huggingface.co/{repo_id}"
    names = (C.LM_FILENAME, C.MIMI_FILENAME, C.TOKENIZER_FILENAME, C.VOICES_ARCHIVE)
    cached = _cached_files(repo_id, names, revision, cache_dir)
    if cached is not None:
        return _hub_files(repo_id, cached, cache_dir)
    if not _hub_reachable():
        raise CheckpointError(f"Cannot reach the Hugging Face hub and {repo_id} is not in the local cache: "
                              "connect once, or download the files and set checkpoint to that folder.")
    paths: dict[str, Path] = {}
    for name in names:
        try:
            paths[name] = Path(hf_hub_download(repo_id, name, revision=revision, token=token,
                                               cache_dir=cache_dir))
        except GatedRepoError as exc:
            if token:
                raise CheckpointError(f"{repo_id} is gated and this HF_TOKEN has no access: accept the licence "
                                      f"at {licence} with the token's account.") from exc
            raise CheckpointError(f"{repo_id} is gated: accept the licence at {licence}, then export "
                                  "HF_TOKEN=<your token>.") from exc
        except RepositoryNotFoundError as exc:
            hint = "" if token else " (if it is gated, export HF_TOKEN=<your token>)"
            raise CheckpointError(f"Hugging Face repo {repo_id} was not found{hint}.") from exc
        except RevisionNotFoundError as exc:
            raise CheckpointError(f"Revision {revision!r} does not exist in {repo_id}.") from exc
        except LocalEntryNotFoundError as exc:  # a subclass of EntryNotFoundError: test it first
            raise CheckpointError(f"Cannot reach the Hugging Face hub and {name} of {repo_id} is not cached: "
                                  "connect once, or download the files and set checkpoint to that folder.") from exc
        except EntryNotFoundError as exc:
            raise CheckpointError(f"{name} is missing from {repo_id}; is this a PersonaPlex checkpoint?") from exc
        except HfHubHTTPError as exc:
            raise CheckpointError(f"Downloading {name} from {repo_id} failed: {exc}.") from exc
    return _hub_files(repo_id, paths, cache_dir)


def _hub_files(repo_id: str, paths: dict[str, Path], cache_dir: str | None) -> CheckpointFiles:
    voices_dir = extract_voices(paths[C.VOICES_ARCHIVE], cache_dir)
    return CheckpointFiles(lm=paths[C.LM_FILENAME], mimi=paths[C.MIMI_FILENAME],
                           tokenizer=paths[C.TOKENIZER_FILENAME], voices_dir=voices_dir,
                           lm_kwargs=dict(PERSONAPLEX_LM_KWARGS), mimi_config=None, mimi_num_codebooks=8,
                           source=repo_id)


def _cached_files(repo_id: str, names: tuple[str, ...], revision: str | None,
                  cache_dir: str | None) -> dict[str, Path] | None:
    """All files from the local HF cache, or None if any is missing (then the hub is asked)."""
    from huggingface_hub import try_to_load_from_cache

    found: dict[str, Path] = {}
    for name in names:
        path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        if not isinstance(path, str):
            return None
        found[name] = Path(path)
    return found


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP probe, so an offline machine fails in seconds instead of after HTTP retries."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_checkpoint(spec: str, token_env: str = "HF_TOKEN", revision: str | None = None,
                       cache_dir: str | None = None) -> CheckpointFiles:
    """A local folder if ``spec`` is one (or looks like a path), else a Hugging Face repo id."""
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        return resolve_local(path, cache_dir)
    if spec.count("/") != 1:
        raise CheckpointError(f"checkpoint {spec!r} is neither an existing folder nor a repo id like "
                              f"{C.PERSONAPLEX_REPO}.")
    return resolve_hub(spec, os.environ.get(token_env) or None, revision, cache_dir)
