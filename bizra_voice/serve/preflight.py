"""Fail-fast checks that run inside ``build_app`` before anything is deployed, and how a failure is told.

Called in-process (tests, ``serve.run(build_app(args))``, ``serve run module:build_app``) a failure is a
plain exception whose message is the one sentence. ``serve run config.yaml`` is different: it builds the
application in Ray Serve's ``build_serve_application`` task, and in Ray 2.5x its CLI then only sleeps
(``while True: time.sleep(10)`` in ``ray/serve/scripts.py``): it never reads the application's status, so a
failed build (``DEPLOY_FAILED``) leaves it running for ever, and Ray offers no status the CLI exits on.
So inside that task :func:`fail` finds the ``serve run`` process in Ray's job table (each driver's pid,
node and command line), checks that the config file it runs is the one being built, gets the sentence
onto that process's console (:func:`tell_console`) and stops it with SIGTERM (Ray's driver handler exits non-zero; SIGINT would be
the CLI's Ctrl-C path, which exits 0, and is ignored by a backgrounded CLI). The exception is then raised
so that a cluster that outlives the CLI shows the application as ``DEPLOY_FAILED`` with the sentence.
The exception must be an ``Exception``: a ``SystemExit`` escapes the task's ``except Exception``, kills
the worker (the sentence never printed) and Ray retries the task three times.
"""

from __future__ import annotations

import os
import signal
import ssl
import stat
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import yaml

from bizra_voice import constants as C
from bizra_voice.config import AppConfig
from bizra_voice.config_errors import ConfigError

NO_GPU_SENTENCE = (
    "This profile needs a CUDA GPU and none is visible to Ray here; "
    "for the CPU dev profile run `serve run serve_config.cpu.yaml`."
)
BUILD_TASK = "build_serve_application"  # Ray Serve's task that imports and calls build_app
# Only where the CLI's console can be neither written nor read back: Ray streams a worker's stderr to the
# driver's console (about 30 ms on a quiet machine); give it this long before the CLI is stopped.
LOG_STREAM_GRACE_S = 3.0
CLI_EXIT_WAIT_S = 30.0


class ProfileUnavailable(RuntimeError):
    """The requested profile cannot run on this cluster (message = the one sentence)."""


# ---------------------------------------------------------------- checks


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster declares (0 when Ray is not initialised)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def local_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def looks_local(spec: str) -> bool:
    """The checkpoint rule of ``engine.checkpoint.resolve_checkpoint``: an existing path or one spelt as a path."""
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~"))


def check_paths(config: AppConfig) -> None:
    """Every file or folder the config names exists (relative paths: from where Ray's workers start,
    which for ``serve run`` is the directory it was started in)."""
    engine = config.engine
    if not config.tiny_engine and looks_local(engine.checkpoint):
        folder = _folder("engine.checkpoint", engine.checkpoint)
        needed = (C.LM_FILENAME, C.MIMI_FILENAME, C.TOKENIZER_FILENAME)
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise ConfigError(f"`args.engine.checkpoint` ({folder}) holds no {', '.join(missing)}: copy the "
                              f"files of {C.PERSONAPLEX_REPO} there, or run `bizra-voice make-tiny DIR` "
                              "for a dev model.")
    if engine.custom_voices_dir:
        _folder("engine.custom_voices_dir", engine.custom_voices_dir)
    client_dir = config.voice_server.client_dir
    if client_dir and not (_folder("voice_server.client_dir", client_dir) / "index.html").is_file():
        raise ConfigError(f"`args.voice_server.client_dir` ({_absolute(client_dir)}) holds no index.html: "
                          "point it at the repository's client/ folder or remove the key.")
    for key, section in ((config.knowledge_key, config.qwen), ("transcriber", config.transcriber)):
        if section.enabled and not section.tiny_random and looks_local(section.model):
            _folder(f"{key}.model", section.model)
    for key, value in (("cache_dir", config.cache_dir), ("engine.cache_dir", engine.cache_dir),
                       ("recording.dir", config.recording.dir)):
        if value and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
            raise ConfigError(f"`args.{key}` ({_absolute(value)}) is a file, not a folder: "
                              "name a folder (it is created if missing).")


def check_tls(http_options: Any) -> None:
    """The certificate and key Serve's proxy is given load as a pair (a missing file fails silently there:
    the proxy logs "Starting HTTPS server" and nothing listens)."""
    certfile = getattr(http_options, "ssl_certfile", None)
    keyfile = getattr(http_options, "ssl_keyfile", None)
    for key, value in (("ssl_certfile", certfile), ("ssl_keyfile", keyfile),
                       ("ssl_ca_certs", getattr(http_options, "ssl_ca_certs", None))):
        if value and not Path(value).expanduser().is_file():
            raise ConfigError(f"`http_options.{key}` is {_spelt(value)}, which does not exist: "
                              "make a certificate with `bizra-voice make-cert ./tls` or fix the path.")
    if certfile and keyfile:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                str(Path(certfile).expanduser()), str(Path(keyfile).expanduser()),
                getattr(http_options, "ssl_keyfile_password", None))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"`http_options.ssl_certfile` and `ssl_keyfile` do not load as a certificate "
                              f"and its key ({exc}): use the cert.pem/key.pem pair of one "
                              "`bizra-voice make-cert` run.") from None


def serve_http_options() -> Any:
    """The HTTP options Serve's proxies run with, when a Serve controller is reachable (else None)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return ray.get(controller.get_http_config.remote(), timeout=30)
    except Exception:  # private API or no controller: the proxy's own error stands
        return None


def _absolute(value: str) -> Path:
    return Path(value).expanduser().absolute()


def _spelt(value: str) -> str:
    """The path as written, and where that is when it was relative."""
    absolute = str(_absolute(value))
    return value if absolute == value else f"{value} ({absolute})"


def _folder(key: str, value: str) -> Path:
    path = _absolute(value)
    if not path.is_dir():
        what = "a file, not a folder" if path.exists() else "not there"
        raise ConfigError(f"`args.{key}` is {_spelt(value)}, which is {what}: create the folder or fix "
                          "the path.")
    return path


# ---------------------------------------------------------------- telling the person who ran serve run


def inside_serve_build_task() -> bool:
    """True in Ray Serve's build task (``serve run config.yaml``, ``serve deploy``), not in a driver."""
    import ray

    if not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().get_task_name() == BUILD_TASK
    except Exception:
        return False


def fail(exc: Exception, args: dict[str, Any] | None) -> NoReturn:
    """Raise ``exc`` (its message is the one sentence); from Serve's build task, first tell and stop the
    ``serve run`` CLI that deployed ``args``."""
    if inside_serve_build_task():
        sentence = str(exc)
        cli = serve_run_driver(args or {})
        if cli is None:
            print(sentence, file=sys.stderr, flush=True)  # Ray streams it to whichever driver listens
        else:
            tell_console(cli, sentence)
            stop_cli(cli)
    raise exc from None


def serve_run_driver(args: dict[str, Any]) -> int | None:
    """The pid of a live ``serve run`` on this node whose config file deploys an application with ``args``.

    Ray's job table lists every driver with its pid, node and start time; the newest matching one is the
    CLI that just submitted this config (a ``serve run`` of another config is never touched).
    """
    import psutil  # vendored by Ray (ray/thirdparty_files), importable once ray is
    import ray
    from ray._private.state import jobs

    try:
        here = ray.util.get_node_ip_address()
        drivers = [job for job in jobs() if not job["IsDead"] and job["DriverIPAddress"] == here]
    except Exception:
        return None
    for job in sorted(drivers, key=lambda job: job["StartTime"], reverse=True):
        try:
            process = psutil.Process(job["DriverPid"])
            argv, cwd = process.cmdline(), process.cwd()
        except (psutil.Error, OSError):
            continue
        if runs_config_with(argv, Path(cwd), args):
            return process.pid
    return None


def runs_config_with(argv: list[str], cwd: Path, args: dict[str, Any]) -> bool:
    """Whether ``argv`` is ``serve run FILE …`` and FILE (relative to ``cwd``) has an application with ``args``."""
    names = [Path(a).name for a in argv]
    starts = [i for i in range(len(argv) - 1) if names[i] == "serve" and argv[i + 1] == "run"]
    if not starts:
        return False
    for word in argv[starts[0] + 2:]:
        path = cwd / Path(word).expanduser()
        if word.startswith("-") or not path.is_file():
            continue
        try:
            config = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        apps = config.get("applications") if isinstance(config, dict) else None
        if any(isinstance(app, dict) and (app.get("args") or {}) == args for app in apps or []):
            return True
    return False


def tell_console(pid: int, sentence: str) -> None:
    """Get ``sentence`` onto the console of process ``pid`` before it is stopped.

    A terminal or a pipe is written directly (one line, in order, at once). A log file is not: the CLI
    writes it at its own offset and would overwrite the line; there the sentence goes the ordinary way
    (this worker's stderr, which Ray streams to the CLI) and is read back from the file before returning.
    Without /proc, Ray's stream gets ``LOG_STREAM_GRACE_S``.
    """
    console = Path(f"/proc/{pid}/fd/2")
    try:
        regular = stat.S_ISREG(console.stat().st_mode)
    except OSError:
        regular = None
    if regular is False:
        try:
            with console.open("a", encoding="utf-8") as out:
                out.write(sentence + "\n")
            return
        except OSError:
            pass
    print(sentence, file=sys.stderr, flush=True)
    if not regular:
        time.sleep(LOG_STREAM_GRACE_S)
        return
    wanted = sentence.encode()
    deadline = time.monotonic() + CLI_EXIT_WAIT_S
    while time.monotonic() < deadline:
        try:
            with console.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 65536))
                if wanted in log.read():
                    return
        except OSError:
            return
        time.sleep(0.1)


def stop_cli(pid: int) -> None:
    """SIGTERM the CLI and wait for it to go (a local cluster it started, this worker included, goes with it)."""
    import psutil

    try:
        os.kill(pid, signal.SIGTERM)
        psutil.Process(pid).wait(timeout=CLI_EXIT_WAIT_S)
    except (OSError, psutil.Error):
        pass
