"""Side by side on one machine: Kyutai's reference ``moshi.server`` vs BIZRA Voice's CPU profile.

    NO_TORCH_COMPILE=1 python scripts/bench_peer.py --sessions 1,2,4,8 --out-dir docs/bench

Both serve the SAME tiny random checkpoint (``bizra_voice.tiny``; the peer gets a copy cut to dep_q=8, the
only layout stock ``LMGen`` runs) on CPU, bound to 127.0.0.1, one after the other, and are loaded by the same
generator (``bench_sessions``) at the same session counts. The peer needs three harness-only adjustments
(DESIGN §5): its arguments are set before ``runpy`` runs it (it calls ``main()`` at import), its warm-up's
unconditional ``torch.cuda.synchronize()`` is replaced by a no-op on a CPU-only machine, and the files are
given as ``file://`` paths with ``HF_HUB_OFFLINE=1`` so nothing is fetched. Nothing else of it is changed:
it serialises sessions behind a lock, so a second client waits silently for its handshake; that wait is
what its handshake times show.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sessions  # noqa: E402
from _bench_common import REPO, write_json  # noqa: E402

PEER_PORT = 8998
BIZRA_PORT = 8100


def prepare_peer_checkpoint(work: Path) -> dict[str, Path]:
    """The tiny checkpoint cut to dep_q=8 plus a moshi ``--config-path`` JSON (file:// names)."""
    from safetensors.torch import load_file, save_file

    from bizra_voice import constants as C
    from bizra_voice.engine.loading import checkpoint_dep_q, slice_depformer
    from bizra_voice.tiny import TINY_LM_KWARGS, TINY_MIMI_CONFIG, shared_tiny_checkpoint

    tiny = shared_tiny_checkpoint(1234)
    work.mkdir(parents=True, exist_ok=True)
    state = load_file(str(tiny / C.LM_FILENAME))
    sliced = slice_depformer(state, checkpoint_dep_q(state), 8)
    lm_path = work / "moshi-dep8.safetensors"
    save_file({k: v.contiguous() for k, v in sliced.items()}, str(lm_path))
    mimi_cfg = work / "mimi_config.json"
    mimi_cfg.write_text(json.dumps(TINY_MIMI_CONFIG))
    kwargs = {k: v for k, v in TINY_LM_KWARGS.items() if k not in ("depformer_causal",)}
    kwargs["dep_q"] = 8
    tokenizer = work / "tokenizer_full_card.model"
    _write_full_card_tokenizer(tokenizer, kwargs["text_card"])
    config = dict(kwargs, moshi_name=f"file://{lm_path}", mimi_name=f"file://{tiny / C.MIMI_FILENAME}",
                  tokenizer_name=f"file://{tokenizer}", mimi_config_name=f"file://{mimi_cfg}")
    config_path = work / "moshi_config.json"
    config_path.write_text(json.dumps(config, indent=1))
    return {"config": config_path, "lm": lm_path, "tiny": tiny}


def _write_full_card_tokenizer(path: Path, text_card: int) -> None:
    """A SentencePiece model with a piece for every id the LM can sample.

    The tiny tokenizer has fewer pieces than the tiny LM's text_card (the real one has all 32000); our server
    skips ids without a piece, the peer's ``id_to_piece`` raises and drops the connection. Unused
    placeholder pieces fill the gap; the peer only uses the tokenizer to display text.
    """
    import io

    import sentencepiece as spm

    from bizra_voice import constants as C
    from bizra_voice.tiny import _CORPUS

    model = io.BytesIO()
    filler = [f"<unused{i}>" for i in range(text_card)]
    spm.SentencePieceTrainer.train(  # type: ignore[attr-defined]
        sentence_iterator=iter(_CORPUS * 8), model_writer=model, vocab_size=2 * text_card, model_type="unigram",
        pad_id=3, unk_id=0, bos_id=1, eos_id=2, num_threads=1, user_defined_symbols=[C.SYSTEM_TAG, *filler],
        hard_vocab_limit=False, minloglevel=2)
    path.write_bytes(model.getvalue())


def run_peer_server(config: str, port: int) -> None:
    """Runs in the child process: the reference server, unmodified but for the CPU synchronize."""
    import runpy

    import torch

    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None  # the peer's warm-up calls it unconditionally
    sys.argv = ["moshi.server", "--config-path", config, "--hf-repo", "local/none", "--device", "cpu",
                "--host", "127.0.0.1", "--port", str(port), "--static", "none"]
    runpy.run_module("moshi.server", run_name="__main__", alter_sys=True)


def _profile_slots() -> str:
    import yaml

    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    return str(config["applications"][0]["args"]["engine"]["slots"])


def run_bizra_server(port: int, slots: str, cache_dir: str) -> None:
    """Runs in the child process: our own Ray cluster + the CPU dev profile (shipped args, more slots)."""
    import ray
    import yaml
    from ray import serve

    from bizra_voice.app import build_app

    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    args = config["applications"][0]["args"]
    args["engine"]["slots"] = slots if slots == "auto" else int(slots)
    args["cache_dir"] = cache_dir
    env = {"PYTHONPATH": str(REPO), "NO_TORCH_COMPILE": "1", "RAY_AUTH_MODE": "disabled"}
    ray.init(num_cpus=8, include_dashboard=False, namespace="bench", log_to_driver=False,
             runtime_env={"env_vars": env})
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="bizra", route_prefix="/", blocking=False)
    print("bizra server up", flush=True)
    try:
        while not stop["now"]:
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_port(port: int, path: str, proc: subprocess.Popen, timeout_s: float, need_ok: bool = False) -> None:
    """Wait until an HTTP GET answers (with 200 if ``need_ok``; the peer has no HTTP route, any answer)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2)
            return
        except urllib.error.HTTPError:
            if not need_ok:
                return
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s} s")


def _spawn(args: list[str], log: Path, threads: int | None) -> subprocess.Popen:
    # Ray starts its workers at nice 15; the peer runs at the caller's priority. Equal priority for both.
    env = dict(os.environ, NO_TORCH_COMPILE="1", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(REPO), RAY_worker_niceness="0")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, __file__, *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ratio_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per session count: p50/p99 and late frames of both systems side by side."""
    systems = report["systems"]
    rows = []
    for ours in systems.get("bizra", []):
        n = ours["sessions"]
        peer = next((lvl for lvl in systems.get("moshi.server", []) if lvl["sessions"] == n), None)
        row = {"sessions": n}
        for name, lvl in (("bizra", ours), ("peer", peer)):
            if lvl is None:
                continue
            row[f"{name}_p50_ms"] = lvl["round_trip_ms"]["p50"]
            row[f"{name}_p99_ms"] = lvl["round_trip_ms"]["p99"]
            row[f"{name}_steady_p99_ms"] = lvl["steady_round_trip_ms"]["p99"]
            row[f"{name}_late"] = f"{lvl['late_frames']}/{lvl['frames_received']}"
            row[f"{name}_handshake_max_ms"] = lvl["handshake_ms"]["max"]
            row[f"{name}_realtime"] = lvl["realtime"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_sessions.add_arguments(parser)
    parser.add_argument("--systems", default="moshi.server,bizra", help="which to run, in this order")
    parser.add_argument("--slots", default=None, help="our engine slots: a number or 'auto' (default: "
                        "serve_config.cpu.yaml's, i.e. measured at start); sessions beyond them get 1013")
    parser.add_argument("--bizra-mode", default="standalone", choices=("standalone", "auto", "hybrid"))
    parser.add_argument("--peer-threads", type=int, default=None, help="OMP threads of the peer (default: torch's)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "bizra-bench-peer")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.seconds, args.pause_s = "1", args.seconds or 1.5, 0.0
    levels = [int(n) for n in args.sessions.split(",") if n]
    pcm = bench_sessions.load_speech(args.wav, args.seconds)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    files = prepare_peer_checkpoint(args.work_dir)
    results: dict[str, list[dict[str, Any]]] = {}
    urls: dict[str, str] = {}
    server_stats: dict[str, Any] = {}
    for system in args.systems.split(","):
        log = args.out_dir / f"{system}.log"
        if system == "moshi.server":
            proc = _spawn(["peer-server", str(files["config"]), str(PEER_PORT)], log, args.peer_threads)
            url, probe = f"ws://127.0.0.1:{PEER_PORT}/api/chat", (PEER_PORT, "/", False)
        elif system == "bizra":
            slots = args.slots or _profile_slots()
            proc = _spawn(["bizra-server", str(BIZRA_PORT), str(slots), str(args.work_dir / "cache")], log, None)
            # standalone = speech to speech, what the peer does; auto/hybrid adds Whisper + Qwen per user turn
            url = f"ws://127.0.0.1:{BIZRA_PORT}/api/chat?mode={args.bizra_mode}"
            probe = (BIZRA_PORT, "/api/health", True)
        else:
            raise SystemExit(f"unknown system {system!r}")
        try:
            port, path, need_ok = probe
            _wait_port(port, path, proc, 300, need_ok)
            url = bench_sessions.with_query(url, dict(q.split("=", 1) for q in args.query))
            urls[system] = url
            results[system] = bench_sessions.run_levels(url, pcm, levels, args, system)
            if system == "bizra":  # the engine's own statistics and its measured slots
                with urllib.request.urlopen(f"http://127.0.0.1:{BIZRA_PORT}/api/health", timeout=10) as resp:
                    health = json.loads(resp.read())
                server_stats[system] = {**health.get("engine", {}), "slots": health.get("slots", {})}
        finally:
            _stop(proc)
    report = bench_sessions.make_report(results, args, pcm, urls)
    report["benchmark"] = "sessions_side_by_side"
    report["ratio_table"] = ratio_table(report)
    report["server_stats"] = server_stats
    report["peer_threads"] = args.peer_threads or "torch default"
    report["bizra_mode"] = args.bizra_mode
    rt = report["realtime_sessions"]
    if rt.get("moshi.server") is not None and "bizra" in rt:
        report["realtime_ratio"] = None if not rt["moshi.server"] else round(rt["bizra"] / rt["moshi.server"], 2)
    bench_sessions.plot(results, args.out_dir / "peer_cdf.png", args.out_dir / "peer_p99.png",
                        f"tiny checkpoint on CPU, {report['provenance']['cpu_cores']} cores")
    write_json(args.out_dir / "peer.json", report)
    print(json.dumps(report["ratio_table"], indent=1))
    print(f"real-time sessions: {rt}")
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "peer-server":
        run_peer_server(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "bizra-server":
        run_bizra_server(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
