"""The GPU benchmark: operating points P, S, I, C of the DreamLite engine, plus peers, in one run.

Every fps figure is sustained wall clock over at least `--frames` frames after warm-up, host uint8
frames in to host uint8 frames out (`StreamEngine.step` called in a closed loop; the latency of a
frame is the time from handing its batch to `step` until its output is in host memory). The
per-component breakdown replays each compiled piece as its own CUDA graph, timed with CUDA events.

    python -m bench.run --model synthetic:paper --frames 480 --out bench/results --docs docs/BENCHMARKS.md

Points (512x512, bf16, 1 step): P = batch 8, encoder on every batch; S = batch 8, encoder only on
prompt change; I = batch 1, static prompt; C = point I with a new prompt every 100 ms; L = the
paper's champion: point P with a temporal ControlNet-LLLite on the down blocks, its conditioning
(optical flow + conditioning CNNs) refreshed every 8 batches (`--lllite FILE`, else a random
adapter in dreamlite-lllite's format over every target, written to a file and loaded like one;
`--unet mobile` gives it DreamLite-mobile's published U-Net: 108 modules, 38 hooked).

Variants (each a comma list; every combination runs the points): `--compile` modes (a `+cl`
suffix: channels-last U-Net and VAE), `--encoder-size`, `--encoder-device` (`same` = the engine's
GPU, or e.g. `cuda:1`), `--encoder-sms` (the encoder on a green context of N multiprocessors;
`all` = no partition), `--attention` (pad, fold: engine/dreamlite/attention.py), `--fp8` (off, on:
engine/fp8.py). Single levers: `--unet-compile-mode`, `--channels-last`,
`--cudnn-benchmark`, `--inductor KEY=VALUE`. `--profile-unet` adds the compiled U-Net step's
kernel profile to points I and S. The Inductor cache lives in `--inductor-cache` (default: the
results folder's `inductor-cache`), so a later run of the same shapes skips most compilation.
The results file is rewritten after every point (a run cut short keeps what it measured), and the
run ends with one line per point against the newest earlier result of the same GPU, model and
frame size (bench/compare.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from bench.compare import earlier_results, summary_lines
from bench.cuda_timing import cuda_ms
from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params
from node_server.models import load_model

PROMPT = "turn it into an oil painting"


def _clip(size: int, count: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Random frames (never zeros: they hide bugs and can run faster than real data)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(count)]


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device) -> float:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.device(device).type == "cuda" else 0.0


def churn_prompt(k: int) -> str:
    """Point C's k-th new prompt (never seen before in the run)."""
    return f"style number {k}: a painting in the manner of artist {k * 7919 % 1000}"


def measure(engine: StreamEngine, clip: list[np.ndarray], *, batch: int, frames: int, warmup: int = 5,
            churn_s: float | None = None) -> dict:
    """Closed-loop run of `engine.step`; returns fps, latency and interval percentiles (ms)."""
    for w in range(warmup):
        engine.step([clip[(w + k) % len(clip)] for k in range(batch)], list(range(batch)))
    _sync(engine.device)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    encodes0 = engine.encode_count
    stop = threading.Event()
    changes: list[tuple[float, str]] = []
    churner = None
    if churn_s:
        def churn() -> None:
            k = 0
            while not stop.wait(churn_s):
                k += 1
                prompt = churn_prompt(k)
                changes.append((time.perf_counter(), prompt))
                engine.set_params(prompt=prompt)
        churner = threading.Thread(target=churn, daemon=True)
    lat, outs_t, prompts = [], [], []
    done = 0
    start = time.perf_counter()
    if churner:
        churner.start()
    while done < frames:
        t0 = time.perf_counter()
        outs = engine.step([clip[(done + k) % len(clip)] for k in range(batch)], list(range(done, done + batch)))
        t1 = time.perf_counter()
        lat.extend([(t1 - t0) * 1e3] * len(outs))
        outs_t.extend([t1] * len(outs))
        prompts.extend(o.prompt for o in outs)
        done += len(outs)
    wall = time.perf_counter() - start
    stop.set()
    if churner:
        churner.join()
    result = dict(
        batch=batch, frames=done, seconds=round(wall, 3), fps=round(done / wall, 2),
        latency_p50_ms=round(_pct(lat, 50), 2), latency_p95_ms=round(_pct(lat, 95), 2),
        latency_p99_ms=round(_pct(lat, 99), 2),
        encodes=engine.encode_count - encodes0, batches=done // batch,
        peak_gib=_peak_gib(engine.device),
    )
    if batch == 1:  # frame-to-frame output interval
        iv = np.diff(np.asarray(outs_t)) * 1e3
        result.update(interval_p50_ms=round(_pct(iv, 50), 2), interval_p99_ms=round(_pct(iv, 99), 2),
                      interval_max_ms=round(float(iv.max()), 2))
        result["interval_p99_over_median"] = round(result["interval_p99_ms"] / result["interval_p50_ms"], 3)
    if churn_s:
        # Frames output after each change (by time) until the first frame made with its prompt.
        # A prompt replaced before any frame showed it counts as not shown.
        lags = []
        times = np.asarray(outs_t)
        for when, prompt in changes:
            first = int(np.searchsorted(times, when, side="right"))
            hit = next((i for i in range(first, len(prompts)) if prompts[i] == prompt), None)
            if hit is not None:
                lags.append(hit - first + 1)
        result.update(prompt_changes=len(changes), prompts_shown=len(lags),
                      frames_to_active_p50=_pct(lags, 50), frames_to_active_max=max(lags) if lags else None)
    return result


def breakdown(engine: StreamEngine, clip: list[np.ndarray], batch: int, repeats: int = 50,
              profile: bool = False) -> dict:
    """Per-component device time (ms per batch): each piece captured as its own CUDA graph and
    replayed, timed with CUDA events; ingest and output copies timed the same way. The encoder
    is timed as the engine runs it (its CUDA graph for this batch and the prompt's bucket) on the
    worker's stream and device. With `profile`, the U-Net step's kernels and FLOPs too."""
    from node_server.engine.frames import to_device_batch

    g = engine.graphed
    enc, step, dec = g.pieces if g is not None else (engine.denoiser.encode_source, engine.denoiser.unet_step,
                                                      engine.denoiser.decode_uint8)
    dev = engine.device
    cond = engine.worker.latest()
    x = to_device_batch(clip[:batch], engine.size, dev)
    embeds = engine._fit(cond.embeds, batch).contiguous()
    mask = engine._fit(cond.mask, batch).contiguous()
    sig = engine._on_device("sigmas", engine._schedule.sigmas_cpu)
    ts = engine._on_device("timesteps", engine._schedule.timesteps_cpu)
    time_ids = engine.denoiser.time_ids(batch, dev)
    source = enc(x)
    latents = engine.denoiser.start_latents(source, engine._on_device("noise", engine._noise), sig[0])
    dt = sig[1] - sig[0]
    t0 = ts[0]

    def timed(fn, graph: bool = True) -> float:
        return round(cuda_ms(fn, repeats=repeats, graph=graph), 3)

    out_u8 = dec(latents)
    pinned = torch.empty(out_u8.shape, dtype=torch.uint8, pin_memory=True)
    stage = torch.empty((batch, *engine.size, 3), dtype=torch.uint8, pin_memory=True)
    unet = lambda: step(latents, source, embeds, mask, time_ids, t0, dt)  # noqa: E731
    result = {
        "ingest_h2d": timed(lambda: stage.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255), graph=False),
        "vae_encode": timed(lambda: enc(x)),
        "unet_step": timed(unet),
        "vae_decode": timed(lambda: dec(latents)),
        "output_d2h": timed(lambda: pinned.copy_(out_u8, non_blocking=True), graph=False),
    }
    tokens = engine._tokens
    encoder = engine.encoder
    x_enc = x.to(encoder.device)
    with torch.cuda.device(encoder.device), torch.cuda.stream(engine.worker.stream):  # as the worker runs it
        result["encoder"] = timed(lambda: encoder.encode(tokens, x_enc), graph=False)
    result["encoder_tokens"] = (tokens.run_length or encoder.length) - encoder.prefix_length
    if profile:
        from bench.kernel_profile import format_profile, gflop, profile_kernels

        flops = gflop(lambda: engine.denoiser.unet_step(latents, source, embeds, mask, time_ids, t0, dt))
        result["unet_gflop"] = flops
        result["unet_tflops"] = round(flops / result["unet_step"], 1)  # GFLOP per ms = TFLOP/s
        result["unet_profile"] = profile_kernels(unet)
        print(format_profile(f"U-Net step, batch {batch}", result["unet_profile"]), flush=True)
    return result


@dataclass(frozen=True)
class Variant:
    """One engine configuration the points run under."""

    compile: str  # engine compile mode
    channels_last: bool = False
    encoder_size: int = 512
    encoder_device: Optional[str] = None  # None: the engine's device
    encoder_sms: Optional[int] = None  # None: no SM partition
    unet_mode: Optional[str] = None  # Inductor mode for the U-Net step alone
    attention: str = "fold"  # the engine's attention mode (engine/dreamlite/attention.py)
    fp8: bool = False  # the U-Net's matrix products in float8 (engine/fp8.py)

    @property
    def label(self) -> str:
        """The results' `compile` column: what distinguishes this variant (not the encoder size,
        which has its own field)."""
        text = self.compile + ("+cl" if self.channels_last else "")
        if self.unet_mode:
            text += f" unet={self.unet_mode}"
        if self.encoder_device:
            text += f" encdev={self.encoder_device}"
        if self.encoder_sms:
            text += f" sms={self.encoder_sms}"
        if self.attention != "fold":
            text += f" attn={self.attention}"
        if self.fp8:
            text += " fp8"
        return text

    def engine_options(self) -> dict:
        """The StreamEngine keywords of this variant (the default ones are left out, so an SD
        engine, which has no attention or fp8 option, takes the rest)."""
        extra = {k: v for k, v in (("attention", self.attention), ("fp8", self.fp8))
                 if v != Variant.__dataclass_fields__[k].default}
        return dict(compile=self.compile, encoder_image_size=self.encoder_size, encoder_device=self.encoder_device,
                    unet_compile_mode=self.unet_mode, **extra)


def _list(text, convert=str) -> list:
    return [convert(v.strip()) for v in str(text).split(",") if v.strip()]


def variants(args) -> list[Variant]:
    devices = [None if d in ("same", "") else d for d in _list(args.encoder_device)] or [None]
    sms = [None if v in ("all", "0") else int(v) for v in _list(args.encoder_sms)] or [None]
    attentions = _list(getattr(args, "attention", "fold")) or ["fold"]
    fp8s = [v == "on" for v in _list(getattr(args, "fp8", "off"))] or [False]
    out = []
    for mode in _list(args.compile):
        cl = mode.endswith("+cl") or args.channels_last
        mode = mode[:-3] if mode.endswith("+cl") else mode
        for size in _list(args.encoder_size, int):
            for device in devices:
                for n in sms:
                    for attention in attentions:
                        for fp8 in fp8s:
                            out.append(Variant(mode, cl, size, device, n, args.unet_compile_mode, attention, fp8))
    return out


class Deadline:
    """`--time-limit`: no new point starts after it (what was measured is kept)."""

    def __init__(self, seconds: Optional[float]):
        self.end = None if not seconds else time.monotonic() + seconds

    def passed(self, what: str) -> bool:
        if self.end is not None and time.monotonic() > self.end:
            print(f"time limit reached: {what} not run", flush=True)
            return True
        return False


def _engine(args, bundle, variant: Variant, params: Params, dtype, **extra) -> StreamEngine:
    engine = StreamEngine(bundle, params, size=args.size, device=args.device, dtype=dtype, progress=True,
                          **variant.engine_options(), **extra)
    if variant.encoder_sms:
        reason = engine.worker.limit_sms(variant.encoder_sms)
        engine.sm_partition = reason or f"{variant.encoder_sms} SMs"
        print(f"[{variant.label}] encoder SM partition: {engine.sm_partition}", flush=True)
    return engine


def _channels_last(bundle) -> None:
    """Channels-last U-Net and VAE weights (in place: the bench owns its bundle; engines built
    after this share the new layout)."""
    bundle.unet.to(memory_format=torch.channels_last)
    bundle.vae.to(memory_format=torch.channels_last)


def run_dreamlite(args, emit, deadline: Deadline) -> None:
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    t = time.perf_counter()
    bundle = load_model(args.model, device=args.device, dtype=dtype, progress=False)
    if args.unet == "mobile":  # DreamLite-mobile's published U-Net layout (bench/mobile_unet.py)
        from bench.mobile_unet import mobile_unet

        bundle.unet = mobile_unet(bundle, args.device, dtype)
    print(f"loaded {args.model} in {time.perf_counter() - t:.1f} s", flush=True)
    clip = _clip(args.size)
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    champion = "L" in points
    points = [p for p in points if p != "L"]
    spec = {"I": (1, "on-change", None), "C": (1, "on-change", 0.1), "S": (8, "on-change", None),
            "P": (8, "every-batch", None)}
    spec = {k: (min(b, args.max_batch), r, c) for k, (b, r, c) in spec.items()}
    for variant in variants(args):
        label = variant.label
        if variant.channels_last:  # stays for the variants after it
            _channels_last(bundle)
        if points and not deadline.passed(f"[{label}] enc{variant.encoder_size} {','.join(points)}"):
            # warm up at the first point's batch size (each batch size compiles its own graphs)
            params = Params().replace(prompt=PROMPT, batch_size=spec[points[0]][0])
            t = time.perf_counter()
            engine = _engine(args, bundle, variant, params, dtype)
            engine.warmup(progress=True)
            print(f"[{label}] engine ready in {time.perf_counter() - t:.1f} s", flush=True)
            for point in points:
                if deadline.passed(f"point {point} [{label}]"):
                    break
                batch, refresh, churn = spec[point]
                engine.set_params(batch_size=batch, refresh=refresh, prompt=PROMPT)
                t = time.perf_counter()
                engine.step(clip[:batch], list(range(batch)))  # captures (and compiles) this batch size
                if refresh == "every-batch":  # the encoder compiles for this batch size on its thread
                    target = engine.encode_count + 3
                    while engine.encode_count < target and time.perf_counter() - t < 300:
                        engine.step(clip[:batch], list(range(batch)))
                capture_s = time.perf_counter() - t
                r = measure(engine, clip, batch=batch, frames=args.frames, churn_s=churn)
                r.update(point=point, engine="dreamlite", compile=label, refresh=refresh, steps=1,
                         encoder_size=variant.encoder_size, first_step_s=round(capture_s, 1))
                if getattr(engine, "sm_partition", None):
                    r["encoder_sm_partition"] = engine.sm_partition
                if point in ("I", "S") and cuda and not args.no_breakdown:
                    try:
                        r["breakdown_ms_per_batch"] = breakdown(engine, clip, batch, profile=args.profile_unet)
                    except Exception as exc:  # the breakdown must not lose the point's numbers
                        r["breakdown_error"] = repr(exc)
                emit(r)
            engine.close()
            del engine
            if cuda:
                torch.cuda.empty_cache()
        if champion and not deadline.passed(f"point L [{label}] enc{variant.encoder_size}"):
            emit(run_champion(args, bundle, clip, dtype, variant))


def run_champion(args, bundle, clip, dtype, variant: Variant) -> dict:
    """Point L: point P plus a temporal LLLite on the down blocks, refreshed every 8 batches."""
    from node_server.models.lllite_file import read_lllite, synth_hooks, write_lllite

    path = args.lllite  # else a paper-format file: every target, as dreamlite-lllite trains (narrowed at load)
    if path is None:
        import tempfile

        path = write_lllite(Path(tempfile.mkdtemp()) / "lllite.safetensors", synth_hooks(bundle.unet, blocks="all"))
    modules = len(read_lllite(path, bundle.unet))
    batch = min(8, args.max_batch)
    params = Params().replace(prompt=PROMPT, batch_size=batch, refresh="every-batch", lllite_refresh=8)
    t = time.perf_counter()
    engine = _engine(args, bundle, variant, params, dtype, lllite=str(path), lllite_blocks="down",
                     lllite_source="temporal")
    if args.lllite is None:
        import shutil

        shutil.rmtree(Path(path).parent)
    engine.warmup(progress=True)
    target = engine.encode_count + 3
    while engine.encode_count < target and time.perf_counter() - t < 400:
        engine.step(clip[:batch], list(range(batch)))
    first_s = time.perf_counter() - t
    runner = engine.lllite
    refreshes0 = runner.refreshes
    r = measure(engine, clip, batch=batch, frames=args.frames)
    r.update(point="L", engine="dreamlite+lllite", compile=variant.label, refresh="every-batch", steps=1,
             encoder_size=variant.encoder_size, first_step_s=round(first_s, 1), lllite_modules=modules,
             lllite_hooks=len(runner.lllite.modules), unet=args.unet,
             lllite_refresh_every=8, lllite_refreshes=runner.refreshes - refreshes0)
    if getattr(engine, "sm_partition", None):
        r["encoder_sm_partition"] = engine.sm_partition
    if engine.device.type == "cuda" and runner.prev_in is not None:
        from node_server.engine.frames import to_device_batch

        x = to_device_batch(clip[:batch], engine.size, engine.device)
        def refresh():
            runner.lllite.write(runner._temporal(x, runner.prev_in, runner.prev_out))

        r["lllite_refresh_ms"] = round(cuda_ms(refresh, repeats=20, warmup=3), 3)
    engine.close()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def run_peers(args, emit) -> None:
    """StreamDiffusion 0.1.1 and our engine on the same SD-Turbo-shaped model (bench/peer_streamdiffusion).

    Each row goes to `emit` as soon as it is measured, so a run cut short keeps the rows it has."""
    try:
        from bench import peer_streamdiffusion as peer
    except Exception as exc:
        print(f"peer harness unavailable: {exc!r}", flush=True)
        return
    for fb in (1, 4):
        for who, fn in (("streamdiffusion-0.1.1", getattr(peer, "run_peer", None)),
                        ("ours-sd", getattr(peer, "run_ours", None))):
            if fn is None:
                continue
            for churn in (None, 0.1) if fb == 1 else (None,):
                try:
                    if who.startswith("ours"):
                        r = fn(batch=fb, frames=args.frames, size=args.size, device="cuda", churn_every_s=churn)
                    else:
                        r = fn(frame_buffer=fb, frames=args.frames, size=args.size, device="cuda", churn_every_s=churn)
                except Exception as exc:
                    r = {"error": repr(exc)}
                r.update(point="race" if churn is None else "race-churn", engine=who, batch=fb)
                emit(r)
                torch.cuda.empty_cache()


def _normalise(r: dict) -> dict:
    """The peer harness names some fields differently (p50_ms, peak_mem_gib): one spelling, rounded."""
    r = dict(r)
    for ours, theirs in (("latency_p50_ms", "p50_ms"), ("latency_p95_ms", "p95_ms"), ("latency_p99_ms", "p99_ms"),
                         ("peak_gib", "peak_mem_gib")):
        if r.get(ours) is None and r.get(theirs) is not None:
            r[ours] = r[theirs]
    for k, v in list(r.items()):
        if isinstance(v, float):
            r[k] = round(v, 2)
    return r


def table(rows: list[dict]) -> str:
    head = ("| point | engine | compile | encoder px | batch | fps | latency p50 / p95 / p99 ms | interval p50 / p99 ms "
            "| frames to new prompt (p50 / max) | encodes / batches | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in map(_normalise, rows):
        if "error" in r:
            lines.append(f"| {r.get('point')} | {r.get('engine')} | | | {r.get('batch')} | error: {r['error'][:80]} | | | | | |")
            continue
        iv = (f"{r['interval_p50_ms']} / {r['interval_p99_ms']}" if "interval_p50_ms" in r else "")
        lag = (f"{r['frames_to_active_p50']} / {r['frames_to_active_max']}" if "frames_to_active_p50" in r else "")
        enc = f"{r['encodes']} / {r['batches']}" if "encodes" in r and "batches" in r else ""
        lines.append(
            f"| {r['point']} | {r['engine']} | {r.get('compile', '')} | {r.get('encoder_size', '')} | {r['batch']} | {r['fps']} "
            f"| {r.get('latency_p50_ms')} / {r.get('latency_p95_ms')} / {r.get('latency_p99_ms')} | {iv} | {lag} "
            f"| {enc} | {r.get('peak_gib', '')} |"
        )
    return head + "\n".join(lines) + "\n"


def breakdown_table(rows: list[dict]) -> str:
    keys = ["ingest_h2d", "vae_encode", "unet_step", "vae_decode", "output_d2h", "encoder", "encoder_tokens",
            "unet_tflops"]
    out = ["| point | compile | batch | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        b = r.get("breakdown_ms_per_batch")
        if b:
            out.append(f"| {r['point']} | {r['compile']} | {r['batch']} | "
                       + " | ".join(str(b.get(k, "")) for k in keys) + " |")
    return "\n".join(out) + "\n"


def markdown(meta: dict, rows: list[dict]) -> str:
    return (f"### {meta['gpu']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}\n\n"
            f"`{meta['command']}`\n\n" + table(rows) + "\nPer-component device time, ms per batch "
            "(each piece replayed as its own CUDA graph; the encoder as the engine runs it, at the prompt's "
            "bucket; encoder_tokens: language-model tokens per encode after the cached prefix; unet_tflops: "
            "with --profile-unet):\n\n"
            + breakdown_table(rows))


def _inductor_value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def configure(args) -> dict:
    """Process-wide levers, set before anything compiles; returns what was set (for `meta`)."""
    setting = {}
    cache = args.inductor_cache or os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(Path(args.out) / "inductor-cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache).resolve())
    setting["inductor_cache"] = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
        setting["cudnn_benchmark"] = True
    if args.inductor:
        import torch._inductor.config as inductor_config

        for item in args.inductor:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SystemExit(f"--inductor takes KEY=VALUE, got {item!r}")
            node, *rest = key.split(".")
            target = inductor_config
            for part in [node, *rest][:-1]:
                target = getattr(target, part)
            leaf = key.split(".")[-1]
            if not hasattr(target, leaf):
                raise SystemExit(f"--inductor: torch._inductor.config has no {key!r}")
            setattr(target, leaf, _inductor_value(value))
            setting[f"inductor.{key}"] = getattr(target, leaf)
    return setting


def results_stamp(args, meta) -> str:
    # two runs of one commit must not overwrite each other: the model and the frame size join the
    # name when they are not the defaults (the earlier files' names stay valid)
    stamp = (f"{meta['date']}-{meta['gpu'].replace(' ', '_')}-{args.commit}-{args.points.replace(',', '')}"
             f"-enc{str(args.encoder_size).replace(',', '_')}")
    if args.model != "synthetic:paper":
        stamp += "-" + "".join(c if c.isalnum() or c in "._" else "_" for c in args.model)
    if args.size != 512:
        stamp += f"-{args.size}px"
    if args.unet != "model":
        stamp += f"-{args.unet}unet"
    if args.tag:
        stamp += "-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in args.tag)
    return stamp


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--render"]:  # re-print the tables of a saved run
        saved = json.loads(Path(argv[1]).read_text())
        print(markdown(saved["meta"], saved["rows"]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="synthetic:paper")
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--encoder-size", default="512", help="comma list, e.g. 512,256")
    ap.add_argument("--encoder-device", default="same",
                    help="comma list of devices for the encoder: same (the engine's) or e.g. cuda:1")
    ap.add_argument("--encoder-sms", default="all",
                    help="comma list: the encoder on a green context of N multiprocessors (all = no partition)")
    ap.add_argument("--points", default="I,C,S,P")
    ap.add_argument("--lllite", default=None, help="adapter file for point L (default: a random one)")
    ap.add_argument("--unet", default="model", choices=("model", "mobile"),
                    help="mobile: a random U-Net of DreamLite-mobile's published layout instead of the model's")
    ap.add_argument("--max-batch", type=int, default=8, help="cap the batch of S and P (a harness check)")
    ap.add_argument("--compile", default="default",
                    help="comma list of engine compile modes (a +cl suffix: channels-last U-Net and VAE)")
    ap.add_argument("--unet-compile-mode", default=None,
                    choices=("eager", "default", "max-autotune-no-cudagraphs"),
                    help="an Inductor mode for the U-Net step alone (the other pieces keep --compile's)")
    ap.add_argument("--attention", default="fold",
                    help="comma list of attention modes: fold (the engine's default: the mask folded into the "
                         "heads, flash-eligible), pad (heads padded beside the mask)")
    ap.add_argument("--fp8", default="off", help="comma list of off/on: the U-Net's matrix products in float8")
    ap.add_argument("--channels-last", action="store_true", help="channels-last U-Net and VAE in every variant")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY (repeatable), e.g. freezing=true, "
                         "coordinate_descent_tuning=true")
    ap.add_argument("--inductor-cache", default=None, metavar="DIR",
                    help="Inductor's cache folder (default: $TORCHINDUCTOR_CACHE_DIR, else OUT/inductor-cache)")
    ap.add_argument("--profile-unet", action="store_true",
                    help="points I and S: the compiled U-Net step's kernels (by time and kind) and FLOPs")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="start no new point after S seconds (what was measured is kept)")
    ap.add_argument("--tag", default="", help="a word for the results file name (several runs of one commit)")
    ap.add_argument("--compare", default=None, metavar="DIR",
                    help="folder of earlier results to compare against (default: --out; 'none': no comparison)")
    ap.add_argument("--peers", action="store_true", help="also run StreamDiffusion and our SD engine (race)")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--commit", default=os.environ.get("BENCH_COMMIT", "unknown"))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda",
                    help="cuda, cuda:N or cpu (cpu only checks the harness: figures from it mean nothing)")
    args = ap.parse_args(argv)
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        print(f"--device must be cuda, cuda:N or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if args.device != "cpu" and not torch.cuda.is_available():
        print("bench.run needs a CUDA GPU (or --device cpu to check the harness)", file=sys.stderr)
        return 2
    deadline = Deadline(args.time_limit)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setting = configure(args)
    meta = dict(gpu=torch.cuda.get_device_name(torch.device(args.device)) if args.device != "cpu" else "cpu",
                date=_dt.date.today().isoformat(), commit=args.commit, torch=torch.__version__,
                command="python -m bench.run " + " ".join(argv), model=args.model, size=args.size, **setting)
    print(json.dumps(meta), flush=True)
    stamp = results_stamp(args, meta)
    path = out / f"{stamp}.json"
    earlier = {} if args.compare == "none" else earlier_results(args.compare or out, meta, exclude=path)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        """Print a point's row and rewrite the results file, so a run cut short keeps it."""
        print(json.dumps(row), flush=True)
        rows.append(row)
        path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    if args.points:
        run_dreamlite(args, emit, deadline)
    if args.peers and not deadline.passed("peers"):
        run_peers(args, emit)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = markdown(meta, rows)
    (out / f"{stamp}.md").write_text(md)
    print(md, flush=True)
    if args.compare != "none":
        for line in summary_lines(rows, earlier):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
