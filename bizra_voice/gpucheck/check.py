"""The whole check, step by step, inside a time budget; every step's failure is recorded, not fatal.

Order: (laptop cap and companions' reserve) -> models -> correctness -> tick curves and the capacity choice
-> handshake -> real-time runs at the capacity and 25 % above -> (int8 backends side by side, the fit) ->
verdict, JSON, PNG, summary. A run on a lent GPU must come back with a report even if one step breaks
there, so each step is isolated and the report is written at the end whatever happened.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bizra_voice.gpucheck import laptop as lp
from bizra_voice.gpucheck import models as mdl
from bizra_voice.gpucheck import report as rpt
from bizra_voice.gpucheck import timing
from bizra_voice.gpucheck.progress import Progress

TOTAL_BUDGET_S = 450.0  # the check inside 8 minutes on one H100 (imports and wheel install outside it)
QUICK_BUDGET_S = 600.0


@dataclass
class CheckOptions:
    device: str = "cuda"
    size: str = mdl.FULL
    quick: bool = False
    out: Path = Path("gpu-check")
    memory_gb: float | None = None
    seconds: float | None = None  # real-time run length per level (default 60 s; --quick 4 s)
    profile: Path | None = None  # the laptop profile for --memory-gb (default serve_config.laptop.yaml)


@dataclass(frozen=True)
class Plan:
    ticks: int
    warmup: int
    batches: tuple[int, ...]
    refine_probes: int
    attempts: int  # measurements of a batch size that misses the budget (the best counts), as the product does
    seconds: float
    correctness_frames: int
    budgets: dict[str, float]


def make_plan(options: CheckOptions) -> Plan:
    if options.quick:
        # CI's small CPU: fewer frames for the greedy comparison (the CUDA-graph one, which needs >= 50, does
        # not run there); a GPU's quick run keeps them, they cost it little.
        frames = 60 if options.device == "cuda" else 30
        return Plan(ticks=8, warmup=3, batches=(1, 2, 4), refine_probes=2, attempts=1, seconds=options.seconds or 4.0,
                    correctness_frames=frames, budgets={"setup": 90, "models": 90, "correctness": 60, "ticks": 60,
                                                        "handshake": 30, "int8": 60})
    return Plan(ticks=24, warmup=4, batches=timing.BATCHES, refine_probes=5, attempts=2, seconds=options.seconds or 60.0,
                correctness_frames=60, budgets={"setup": 60, "models": 120, "correctness": 60, "ticks": 150,
                                                "handshake": 30, "int8": 60})


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[2])
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device, no_cuda_graph: str | None) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from bizra_voice.engine.calibrate import describe_device

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    info = {"card": describe_device(device), "device": str(device), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
            time.gmtime()), "commit": _git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "moshi": ver("moshi"), "bitsandbytes": ver("bitsandbytes"),
            "torchao": ver("torchao"), "transformers": ver("transformers"), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_1m": round(os.getloadavg()[0], 2),
            "NO_TORCH_COMPILE": os.environ.get("NO_TORCH_COMPILE"), "NO_CUDA_GRAPH_was": no_cuda_graph}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_memory_bytes"] = int(props.total_memory)
        info["multiprocessors"] = props.multi_processor_count
    return info


def serving_work_ms() -> tuple[float, str]:
    """The product's per-session serving work per frame (Ogg/Opus both ways), which its capacity choice adds
    to the tick; 0 with a note where sphn (the Opus codec) is not installed."""
    from bizra_voice.engine.calibrate import session_overhead_ms

    try:
        return session_overhead_ms(), "measured (calibrate.session_overhead_ms: Opus decode + encode, p90)"
    except ImportError as exc:
        return 0.0, f"not measured: {exc}; the capacity below leaves the serving work out"


class Check:
    """One run: holds the options, the plan, the progress clock and the report being filled in."""

    def __init__(self, options: CheckOptions) -> None:
        self.options = options
        self.plan = make_plan(options)
        # --quick has no loan to fit: its budgets only stop a sweep early, the real-time runs keep their length.
        self.progress = Progress(TOTAL_BUDGET_S if not options.quick else QUICK_BUDGET_S)
        self.report: dict[str, Any] = {"check": "bizra-voice gpu-check", "format": 1, "errors": [],
                                       "options": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in dataclasses.asdict(options).items()}}
        self.models: mdl.CheckModels | None = None
        self.cap: lp.AllocatorCap | None = None
        self.app: Any = None
        self.choice: Any = None
        self.workdir = Path(tempfile.mkdtemp(prefix="bizra-gpu-check-"))

    # ---- helpers ------------------------------------------------------------------------------------------
    def fail(self, step: str, exc: BaseException) -> None:
        self.report["errors"].append({"step": step, "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                                      "traceback": traceback.format_exc(limit=6)[-3000:]})
        self.progress.log(f"{step} FAILED: {type(exc).__name__}: {str(exc)[:300]}")

    @property
    def device(self) -> torch.device:
        return torch.device(self.options.device)

    # ---- steps ----------------------------------------------------------------------------------------------
    def setup(self) -> None:
        device = self.device
        no_cuda_graph = None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("--device cuda was requested but no CUDA GPU is visible; use --device cpu")
            no_cuda_graph = os.environ.pop("NO_CUDA_GRAPH", None)  # graphs are what the product serves with
            torch.cuda.init()
            torch.zeros(1, device=device)  # create the CUDA context now, so it can be measured
        self.report["environment"] = environment(device, no_cuda_graph)
        self.progress.log(f"device {self.report['environment']['card']}, torch {torch.__version__}, "
                          f"size {self.options.size}{', quick' if self.options.quick else ''}")
        if self.options.memory_gb:
            self.setup_laptop()

    def setup_laptop(self) -> None:
        device = self.device
        path = lp.find_profile(self.options.profile)
        self.app = lp.load_profile(path)
        settings, notes = lp.engine_settings(self.app, device)
        backend, table = lp.choose_int8(self.app, device)
        card = int(self.options.memory_gb * lp.GIB)
        context = lp.cuda_context_bytes(device)
        processes = lp.gpu_processes(self.app)
        contexts = (context or 0) * len(processes)
        self.cap = lp.AllocatorCap(device, card, contexts)
        laptop: dict[str, Any] = {"memory_gb": self.options.memory_gb, "profile": str(path), "engine_settings": settings,
                                  "notes": notes, "int8_backend": backend, "int8_availability": table,
                                  "gpu_processes": processes, "cuda_context_bytes": context,
                                  "allocator_fraction": self.cap.fraction}
        if self.app.engine.quantize_int8 and backend is None:
            laptop["notes"].append("the profile asks for int8 but no int8 backend can run here: weights stay "
                                   f"{'bf16' if device.type == 'cuda' else 'float32'}")
        elif backend and backend != lp.int8_backends.BITSANDBYTES and self.app.engine.quantize_int8:
            laptop["notes"].append("the profile's bitsandbytes int8 cannot run here "
                                   f"({table[0]['unavailable']}); torchao's weight-only int8 stands in")
        self.progress.log(f"  laptop profile {path.name}: {card / lp.GIB:g} GiB card, {len(processes)} GPU processes, "
                          f"int8 {backend or 'none'}; measuring the companions' memory")
        self.report["laptop"] = laptop
        laptop["companions"] = lp.companion_reserve(self.app, self.options.size, device, card)
        self.cap.hold(laptop["companions"]["total_reserve_bytes"])
        self.progress.log(f"  companions reserve {laptop['companions']['total_reserve_bytes'] / lp.GIB:.2f} GiB held"
                          + (f"; allocator capped at {self.cap.fraction:.3f} of the card" if self.cap.fraction else ""))

    def engine_overrides(self) -> dict[str, Any]:
        if self.app is None:
            return {}
        overrides = dict(self.report["laptop"]["engine_settings"])
        if self.cap is not None and self.cap.fraction is not None:
            overrides["memory_fraction"] = self.cap.fraction
        return overrides

    def voice_seconds(self) -> float:
        quick_cpu = self.options.quick and self.device.type != "cuda"
        return mdl.QUICK_CPU_VOICE_SECONDS if quick_cpu else mdl.VOICE_SECONDS

    def build(self, name: str, int8: str | None) -> tuple[mdl.CheckModels, str]:
        """Build the models; under the laptop cap first beside the companions' reserve and, when that runs
        out of memory, with the reserve taken only after loading (PersonaPlex up before Qwen)."""
        def build() -> mdl.CheckModels:
            return mdl.build_check_models(self.options.size, self.device, self.workdir / name, int8=int8,
                                          engine_overrides=self.engine_overrides(), voice_seconds=self.voice_seconds())

        try:
            return build(), "fits"
        except Exception as exc:
            if not (self.cap and self.cap.reserve is not None and timing.is_out_of_memory(exc)):
                raise
            outcome = f"out of memory: {str(exc)[:200]}"
        gc.collect()
        self.progress.log("  loading beside the companions' reserve ran out of memory; retrying with the reserve "
                          "taken after loading")
        self.cap.release_reserve()
        models = build()
        self.cap.hold(self.report["laptop"]["companions"]["total_reserve_bytes"])
        return models, outcome

    def build_models(self) -> None:
        laptop = self.report.get("laptop")
        self.models, outcome = self.build("models", laptop["int8_backend"] if laptop else None)
        if laptop:
            laptop["load_beside_companions"] = outcome
        offload = self.models.loaded.config.cpu_offload_layers
        if offload and self.device.type == "cuda":
            from bizra_voice.engine.loading import offload_layers

            offload_layers(self.models.bundle.lm, offload, self.device)
        self.report["models"] = self.models.describe()
        self.progress.log(f"  {self.options.size} LM {self.models.lm_params / 1e9:.2f} B params, weights "
                          f"{self.models.weights_bytes / lp.GIB:.2f} GiB, codecs {self.models.codec_bytes / 2**20:.0f} MiB, "
                          f"built in {self.models.build_s:.1f} s" + (f" ({self.models.int8_note})" if self.models.int8 else ""))

    def correctness(self) -> None:
        from bizra_voice.gpucheck.correctness import run_correctness

        rows = (0,) if self.options.quick and self.device.type != "cuda" else (0, 7)  # CI's CPU: one comparison
        self.report["correctness"] = run_correctness(self.models.bundle, self.progress, self.plan.correctness_frames,
                                                     rows)

    def product_mode(self) -> str:
        config = self.models.loaded.config
        return timing.GRAPHS if self.device.type == "cuda" and config.cuda_graphs else timing.EAGER

    def ticks(self) -> None:
        from bizra_voice.engine.capacity import AUTO, CapacityError, choose_slots, memory_bound

        bundle = self.models.bundle
        config = self.models.loaded.config
        product = self.product_mode()
        modes = [product] + ([timing.EAGER] if product == timing.GRAPHS else [])
        plan = self.plan
        session_ms, session_note = serving_work_ms()
        budget = config.tick_budget_ms
        result = timing.sweep(bundle, [product], plan.batches, plan.ticks, plan.warmup, self.progress,
                              budget_ms=budget, session_ms=session_ms, attempts=plan.attempts)
        curve = result.curves[product]
        memory = self.memory_figures(curve) if curve else None
        bound = memory_bound(memory) if memory else None
        if curve:
            timing.refine(bundle, result, product, budget, min(config.max_slots, max(1, bound or 1)),
                          plan.ticks, plan.warmup, self.progress, plan.refine_probes, session_ms, plan.attempts)
        if len(modes) > 1:
            extra = timing.sweep(bundle, modes[1:], plan.batches, plan.ticks, plan.warmup, self.progress, max_batch=bound)
            result.curves.update(extra.curves)
            result.stopped.update(extra.stopped)
            result.out_of_memory_at.update(extra.out_of_memory_at)
            result.seconds.update(extra.seconds)
        self.report["ticks"] = {**result.to_dict(), "product_mode": product, "ticks_per_point": plan.ticks,
                                "warmup_ticks": plan.warmup, "session_overhead_ms": session_ms,
                                "session_overhead_note": session_note}
        if not curve:
            raise RuntimeError(f"no batch size could be measured ({result.stopped.get(product)})")
        requested = self.app.engine.slots if self.app is not None else AUTO
        try:
            self.choice = choose_slots(requested, max_slots=config.max_slots, budget_ms=config.tick_budget_ms,
                                       memory=memory, curve=curve, device=self.report["environment"]["card"],
                                       session_ms=session_ms)
            self.report["capacity"] = self.choice.to_dict()
            self.progress.log(f"  capacity: {self.choice.summary()}")
        except CapacityError as exc:
            self.report["capacity"] = {"chosen": None, "requested": requested, "error": str(exc),
                                       "memory_bound": bound, "tick_budget_ms": config.tick_budget_ms,
                                       "memory": dataclasses.asdict(memory) if memory else None}
            self.progress.log(f"  capacity: {exc}")

    def memory_figures(self, curve: list[Any]) -> Any:
        """The product's memory figures; for the laptop on CPU the card's share and computed use instead."""
        from bizra_voice.engine.calibrate import memory_figures

        one = curve[0]
        two = curve[1] if len(curve) > 1 and curve[1].batch == 2 else curve[0]
        figures = memory_figures(self.models.bundle, one, two, self.models.loaded.config.memory_fraction)
        if self.app is not None and self.device.type != "cuda":
            laptop = self.report["laptop"]
            used = self.models.weights_bytes + self.models.codec_bytes + laptop["companions"]["total_reserve_bytes"]
            figures = dataclasses.replace(figures, share=self.cap.card_bytes - self.cap.contexts_bytes, used=used,
                                          reserve=lp.CUDA_RESERVE_BYTES)
        return figures

    def handshake(self) -> None:
        from bizra_voice.gpucheck.handshake import measure_handshakes

        self.report["handshake"] = measure_handshakes(self.models.loaded, self.models.voices)
        for kind, hs in self.report["handshake"].items():
            self.progress.log(f"  {kind}: " + (hs["skipped"] if hs.get("skipped") else
                                               f"{hs['prompt_frames']} prompt frames, prepare {hs['prepare_first_use_ms']} ms "
                                               f"(first use), prefill {hs['prefill_ms']} ms"))

    def levels(self) -> list[int]:
        if self.choice is None:
            return []
        chosen = self.choice.slots
        return [chosen, max(chosen + 1, math.ceil(chosen * 1.25))]

    def realtime(self) -> None:
        from bizra_voice.gpucheck.realtime_run import run_level

        self.report["realtime"] = []
        levels = self.levels()
        reserve_after = self.plan.budgets["int8"] + 15 if self.app is not None else 15
        for i, sessions in enumerate(levels):
            left = self.progress.remaining() - reserve_after
            per_level = left / (len(levels) - i)
            seconds = self.plan.seconds
            if not self.options.quick and per_level < seconds * 1.2 + 15:
                seconds = max(2.0 if self.options.quick else 10.0, (per_level - 15) / 1.2)
                self.progress.log(f"  behind schedule: {sessions} sessions run for {seconds:.0f} s instead of "
                                  f"{self.plan.seconds:g} s")
            level = run_level(self.models.loaded, sessions, seconds, self.progress)
            level["planned_seconds"] = self.plan.seconds
            self.report["realtime"].append(level)
            ok, reasons = rpt.held_realtime(level)
            self.progress.log(f"  {sessions} sessions: {'held real time' if ok else 'NOT held: ' + '; '.join(reasons)}")

    def int8_backends(self) -> None:
        """The other int8 backend beside the one served with: weights, load peak and the B=1..slots ticks."""
        laptop = self.report["laptop"]
        used = laptop["int8_backend"]
        rows = []
        mode = self.product_mode() if self.models else timing.EAGER
        for entry in laptop["int8_availability"]:
            backend = entry["backend"]
            row: dict[str, Any] = {"backend": backend, "unavailable": entry["unavailable"], "served_with": backend == used}
            if backend == used and self.models is not None:
                curve = (self.report.get("ticks") or {}).get("curves", {}).get(mode, [])
                first = curve[0] if curve else {}
                row.update(weights_bytes=self.models.weights_bytes, load_peak_bytes=self.models.load_peak_bytes,
                           p50_ms=first.get("p50_ms"), p99_ms=first.get("p99_ms"))
            rows.append(row)
        pending = [r for r in rows if r["unavailable"] is None and not r["served_with"]]
        if pending:
            mdl.release(self.models)
            self.models = None
        for row in pending:
            if self.progress.remaining() < 30:
                row["error"] = "skipped: time budget"
                continue
            alt = None
            try:
                alt, outcome = self.build(f"models-{row['backend']}", row["backend"])
                stats = timing.probe(alt.bundle, 1, mode, self.plan.ticks, self.plan.warmup)
                row.update(weights_bytes=alt.weights_bytes, load_peak_bytes=alt.load_peak_bytes, p50_ms=stats.p50_ms,
                           p99_ms=stats.p99_ms, note=alt.int8_note, load_beside_companions=outcome)
                self.progress.log(f"  int8 {row['backend']}: weights {alt.weights_bytes / lp.GIB:.2f} GiB, B=1 p50 "
                                  f"{stats.p50_ms} / p99 {stats.p99_ms} ms")
            except Exception as exc:
                row["error"] = ("out of memory under the cap" if timing.is_out_of_memory(exc)
                                else f"{type(exc).__name__}: {str(exc)[:300]}")
                self.progress.log(f"  int8 {row['backend']}: {row['error']}")
            finally:
                mdl.release(alt)
        ran = [r for r in rows if r.get("p99_ms") is not None]
        laptop["int8_backends"] = rows
        laptop["int8_faster"] = min(ran, key=lambda r: r["p99_ms"])["backend"] if ran else None

    def laptop_fit(self) -> None:
        laptop = self.report["laptop"]
        models = self.report.get("models") or {}
        capacity = self.report.get("capacity") or {}
        memory = capacity.get("memory") or {}
        curve = (self.report.get("ticks") or {}).get("curves", {}).get(self.report.get("ticks", {}).get("product_mode"), [])
        workspace = curve[0]["workspace_bytes"] if curve else 0
        slots = capacity.get("chosen") or (self.app.engine.slots if isinstance(self.app.engine.slots, int) else 1)
        if self.device.type == "cuda" and models.get("load_peak_bytes") is not None:
            load_peak = models["load_peak_bytes"] + models["codec_bytes"]
        else:  # the product loads the LM in its dtype, then quantizes: computed
            bytes_per = 2 if (self.app.engine.dtype in ("bfloat16", "float16", "auto")) else 4
            load_peak = models.get("lm_params", 0) * bytes_per + models.get("codec_bytes", 0)
        fit = lp.fit(self.cap.card_bytes, self.cap.contexts_bytes, laptop["companions"]["total_reserve_bytes"],
                     models.get("weights_bytes", 0) + models.get("codec_bytes", 0), memory.get("per_slot") or 0,
                     workspace, slots, load_peak)
        levels = [lv for lv in self.report.get("realtime") or [] if lv.get("sessions") == slots]
        if levels and levels[0].get("peak_reserved_bytes") is not None:
            fit["measured_serving_peak_bytes"] = levels[0]["peak_reserved_bytes"] + self.cap.contexts_bytes
        # Served under the cap: True (ran), False (out of memory / over the memory bound), None (not run).
        served = None
        if levels and levels[0].get("ran"):
            served = True
        elif levels and levels[0].get("fits_memory") is False:
            served = False
        fit["served_under_cap"] = served if self.device.type == "cuda" else None
        if self.device.type == "cuda":
            fit["fits"] = fit["fits"] and served is not False and capacity.get("chosen") is not None
        laptop["fit"] = fit
        self.progress.log(f"  fit on {self.options.memory_gb:g} GiB: {'yes' if fit['fits'] else 'NO'} (serving "
                          f"{fit['serving_bytes'] / lp.GIB:.2f} GiB, loading peak {fit['loading_peak_bytes'] / lp.GIB:.2f} "
                          f"GiB, headroom {fit['headroom_bytes'] / lp.GIB:.2f} GiB)")

    # ---- the run --------------------------------------------------------------------------------------------
    def run(self) -> int:
        steps = [("setup", self.setup, "setup"), ("models", self.build_models, "models"),
                 ("correctness", self.correctness, "correctness"), ("ticks", self.ticks, "ticks"),
                 ("handshake", self.handshake, "handshake"), ("realtime", self.realtime, None)]
        if self.options.memory_gb:
            steps += [("int8 backends", self.int8_backends, "int8"), ("laptop fit", self.laptop_fit, None)]
        for name, fn, budget_key in steps:
            if name not in ("setup", "models", "int8 backends", "laptop fit") and self.models is None:
                continue
            budget = self.plan.budgets[budget_key] if budget_key else max(10.0, self.progress.remaining())
            try:
                with self.progress.step(name, budget):
                    fn()
            except Exception as exc:
                self.fail(name, exc)
                if name in ("setup", "models"):
                    break
        return self.finish()

    def finish(self) -> int:
        if self.cap is not None:
            self.cap.lift()
        mdl.release(self.models)
        shutil.rmtree(self.workdir, ignore_errors=True)  # the tokenizer and voices made for this run
        capacity = self.report.get("capacity") or {}
        card = (self.report.get("environment") or {}).get("card", self.options.device)
        if self.report.get("laptop"):
            card = f"{card} capped to {self.options.memory_gb:g} GiB (laptop profile)"
        self.report["verdict"] = rpt.verdict(card, capacity.get("chosen"), capacity.get("memory_bound"),
                                             capacity.get("time_bound"), self.report.get("realtime") or [])
        self.report["timings_s"] = self.progress.steps
        self.report["total_s"] = round(self.progress.elapsed(), 1)
        out = self.options.out
        text = rpt.write_all(self.report, out)
        print(text, flush=True)
        if any(e["step"] in ("setup", "models") for e in self.report["errors"]):
            return 2
        graphs_ok = (self.report.get("correctness") or {}).get("graphs_identical")
        return 1 if self.report["errors"] or graphs_ok is False else 0


def run_gpu_check(options: CheckOptions) -> int:
    """Run the check and write ``gpu-check.json``, ``gpu-check.png`` and ``gpu-check.txt`` into ``options.out``.
    Exit status: 0 ran (the verdict says what held), 1 a step failed or CUDA graphs changed the tokens,
    2 the models could not be built."""
    return Check(options).run()
