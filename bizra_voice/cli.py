"""``bizra-voice``: offline conversations, conformance runs and tiny dev checkpoints."""

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
        if args.command == "make-cert":
            from bizra_voice.tls import default_names, make_self_signed

            files = make_self_signed(args.folder, (args.hosts or []) + default_names() if args.hosts else None)
            print(f"self-signed certificate for {', '.join(files.names)}: {files.cert} (key {files.key})")
            return 0
    except (CheckpointError, EngineError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
