"""``bizra-voice``: offline conversations, conformance runs, tiny dev checkpoints and the GPU check."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bizra_voice import constants as C


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bizra-voice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    offline = sub.add_parser("offline", help="run a whole conversation from a WAV file")
    offline.add_argument("--input-wav", type=Path, required=True)
    offline.add_argument("--output-wav", type=Path, required=True)
    offline.add_argument("--output-text", type=Path)
    offline.add_argument("--voice", default=C.DEFAULT_VOICE, help="voice name (e.g. NATM1 or NATF2.pt)")
    offline.add_argument("--text-prompt", default="", help="persona (default: BIZRA's)")
    offline.add_argument("--checkpoint", default=C.PERSONAPLEX_REPO, help="HF repo id or local folder")
    offline.add_argument("--greedy", action="store_true", help="argmax decoding (reproducible)")
    offline.add_argument("--seed", type=int)
    offline.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    conformance = sub.add_parser("conformance", help="check the engine against a PersonaPlex golden kit")
    conformance.add_argument("kit", type=Path)
    conformance.add_argument("--device", default="cpu")

    tiny = sub.add_parser("make-tiny", help="write a tiny random checkpoint in the real layout")
    tiny.add_argument("folder", type=Path)
    tiny.add_argument("--seed", type=int, default=1234)

    gpu = sub.add_parser("gpu-check", help="how many real-time sessions this machine holds, and is the engine "
                         "correct here (random weights; JSON + PNG + a one-screen verdict)")
    gpu.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when visible, else cpu")
    gpu.add_argument("--size", choices=("full", "tiny"), default=None,
                     help="full PersonaPlex dimensions or the tiny checkpoint's (default: full on cuda, tiny on cpu)")
    gpu.add_argument("--quick", action="store_true", help="fewer ticks and batch sizes, 4 s real-time runs (CI)")
    gpu.add_argument("--out", type=Path, default=Path("gpu-check"), help="where gpu-check.json/.png/.txt go")
    gpu.add_argument("--memory-gb", type=float, default=None, metavar="N",
                     help="run the laptop profile's engine settings on an N GiB card (allocator capped) next to "
                     "its Qwen and Whisper, and report whether it fits")
    gpu.add_argument("--profile", type=Path, default=None,
                     help="the profile --memory-gb runs (default: serve_config.laptop.yaml)")
    gpu.add_argument("--seconds", type=float, default=None, help="real-time run length per level (default 60, "
                     "--quick 4)")
    gpu.add_argument("--replot", action="store_true", help="only redraw the PNG and summary from --out's JSON")

    cert = sub.add_parser("make-cert", help="write a self-signed TLS certificate (cert.pem, key.pem) for LAN use")
    cert.add_argument("folder", type=Path)
    cert.add_argument("--host", action="append", dest="hosts", metavar="NAME_OR_IP",
                      help="host name or IP the browser will use (repeatable; default: localhost + this host)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    from bizra_voice.engine.api import EngineError
    from bizra_voice.engine.checkpoint import CheckpointError

    try:
        if args.command == "offline":
            from bizra_voice.offline import run_offline

            result = run_offline(args.input_wav, args.output_wav, args.output_text, args.checkpoint, args.voice,
                                 args.text_prompt, args.greedy, args.seed, args.device)
            print(f"{len(result.text_tokens)} frames -> {args.output_wav}; text: {result.transcript!r}")
            return 0
        if args.command == "conformance":
            from bizra_voice.conformance import format_table, run_kit

            if not (args.kit / "cases" / "index.json").is_file():
                print(f"{args.kit} is not a conformance kit (no cases/index.json).", file=sys.stderr)
                return 2
            results = run_kit(args.kit, args.device)
            print(format_table(results))
            return 0 if results and all(r.passed for r in results) else 1
        if args.command == "make-tiny":
            from bizra_voice.tiny import make_tiny

            folder = make_tiny(args.folder, args.seed)
            print(f"tiny random checkpoint written to {folder} (its audio is noise)")
            return 0
        if args.command == "gpu-check":
            return _gpu_check(args)
        if args.command == "make-cert":
            from bizra_voice.tls import default_names, make_self_signed

            files = make_self_signed(args.folder, (args.hosts or []) + default_names() if args.hosts else None)
            print(f"self-signed certificate for {', '.join(files.names)}: {files.cert} (key {files.key})")
            return 0
    except (CheckpointError, EngineError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def _gpu_check(args: argparse.Namespace) -> int:
    import logging

    from bizra_voice.gpucheck.report import replot

    if args.replot:
        print(replot(args.out))
        return 0
    import torch

    from bizra_voice.gpucheck.check import CheckOptions, run_gpu_check

    # Engine warnings (dropped frames, ended sessions) are counted in the report; only errors are printed.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bizra_voice.engine").setLevel(logging.ERROR)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("full" if device == "cuda" else "tiny")
    return run_gpu_check(CheckOptions(device=device, size=size, quick=args.quick, out=args.out,
                                      memory_gb=args.memory_gb, seconds=args.seconds, profile=args.profile))


if __name__ == "__main__":
    sys.exit(main())
