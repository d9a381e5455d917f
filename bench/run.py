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
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench.cuda_timing import cuda_ms
from node_server.engine.engine import StreamEngine
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
                prompt = f"style number {k}: a painting in the manner of artist {k * 7919 % 1000}"
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


def breakdown(engine: StreamEngine, clip: list[np.ndarray], batch: int, repeats: int = 50) -> dict:
    """Per-component device time (ms per batch): each piece captured as its own CUDA graph and
    replayed, timed with CUDA events; ingest and output copies timed the same way."""
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
    result = {
        "ingest_h2d": timed(lambda: stage.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255), graph=False),
        "vae_encode": timed(lambda: enc(x)),
        "unet_step": timed(lambda: step(latents, source, embeds, mask, time_ids, t0, dt)),
        "vae_decode": timed(lambda: dec(latents)),
        "output_d2h": timed(lambda: pinned.copy_(out_u8, non_blocking=True), graph=False),
    }
    tokens = engine._tokens
    result["encoder"] = timed(lambda: engine.encoder.encode(tokens, x), graph=False)
    return {k: v for k, v in result.items()}


def run_dreamlite(args) -> list[dict]:
    cuda = args.device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    t = time.perf_counter()
    bundle = load_model(args.model, device=args.device, dtype=dtype, progress=False)
    if args.unet == "mobile":  # DreamLite-mobile's published U-Net layout (bench/mobile_unet.py)
        from bench.mobile_unet import mobile_unet

        bundle.unet = mobile_unet(bundle, args.device, dtype)
    print(f"loaded {args.model} in {time.perf_counter() - t:.1f} s", flush=True)
    clip = _clip(args.size)
    rows = []
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    champion = "L" in points
    points = [p for p in points if p != "L"]
    for mode in args.compile.split(","):
        label = mode
        if mode.endswith("+cl"):  # channels-last U-Net and VAE (stays for the modes after it)
            mode = mode[:-3]
            bundle.unet.to(memory_format=torch.channels_last)
            bundle.vae.to(memory_format=torch.channels_last)
        spec = {"I": (1, "on-change", None), "C": (1, "on-change", 0.1), "S": (8, "on-change", None),
                "P": (8, "every-batch", None)}
        spec = {k: (min(b, args.max_batch), r, c) for k, (b, r, c) in spec.items()}
        if not points:  # point L alone
            rows.append(run_champion(args, bundle, clip, dtype, mode, label))
            continue
        # warm up at the first point's batch size (each batch size compiles its own graphs)
        params = Params().replace(prompt=PROMPT, batch_size=spec[points[0]][0])
        t = time.perf_counter()
        engine = StreamEngine(bundle, params, size=args.size, device=args.device, dtype=dtype, compile=mode,
                              encoder_image_size=args.encoder_size, progress=True)
        engine.warmup(progress=True)
        print(f"[{label}] engine ready in {time.perf_counter() - t:.1f} s", flush=True)
        for point in points:
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
                     encoder_size=args.encoder_size, first_step_s=round(capture_s, 1))
            if point in ("I", "S") and cuda and not args.no_breakdown:
                try:
                    r["breakdown_ms_per_batch"] = breakdown(engine, clip, batch)
                except Exception as exc:  # the breakdown must not lose the point's numbers
                    r["breakdown_error"] = repr(exc)
            print(json.dumps(r), flush=True)
            rows.append(r)
        engine.close()
        del engine
        if cuda:
            torch.cuda.empty_cache()
        if champion:
            rows.append(run_champion(args, bundle, clip, dtype, mode, label))
    return rows


def run_champion(args, bundle, clip, dtype, mode: str, label: str) -> dict:
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
    engine = StreamEngine(bundle, params, size=args.size, device=args.device, dtype=dtype, compile=mode,
                          encoder_image_size=args.encoder_size, progress=True, lllite=str(path),
                          lllite_blocks="down", lllite_source="temporal")
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
    r.update(point="L", engine="dreamlite+lllite", compile=label, refresh="every-batch", steps=1,
             encoder_size=args.encoder_size, first_step_s=round(first_s, 1), lllite_modules=modules,
             lllite_hooks=len(runner.lllite.modules), unet=args.unet,
             lllite_refresh_every=8, lllite_refreshes=runner.refreshes - refreshes0)
    if engine.device.type == "cuda" and runner.prev_in is not None:
        from node_server.engine.frames import to_device_batch

        x = to_device_batch(clip[:batch], engine.size, engine.device)
        def refresh():
            runner.lllite.write(runner._temporal(x, runner.prev_in, runner.prev_out))

        r["lllite_refresh_ms"] = round(cuda_ms(refresh, repeats=20, warmup=3), 3)
    print(json.dumps(r), flush=True)
    engine.close()
    if engine.device.type == "cuda":
        torch.cuda.empty_cache()
    return r


def run_peers(args) -> list[dict]:
    """StreamDiffusion 0.1.1 and our engine on the same SD-Turbo-shaped model (bench/peer_streamdiffusion)."""
    rows = []
    try:
        from bench import peer_streamdiffusion as peer
    except Exception as exc:
        print(f"peer harness unavailable: {exc!r}", flush=True)
        return rows
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
                print(json.dumps(r), flush=True)
                rows.append(r)
                torch.cuda.empty_cache()
    return rows


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
    head = ("| point | engine | compile | batch | fps | latency p50 / p95 / p99 ms | interval p50 / p99 ms "
            "| frames to new prompt (p50 / max) | encodes / batches | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in map(_normalise, rows):
        if "error" in r:
            lines.append(f"| {r.get('point')} | {r.get('engine')} | | {r.get('batch')} | error: {r['error'][:80]} | | | | | |")
            continue
        iv = (f"{r['interval_p50_ms']} / {r['interval_p99_ms']}" if "interval_p50_ms" in r else "")
        lag = (f"{r['frames_to_active_p50']} / {r['frames_to_active_max']}" if "frames_to_active_p50" in r else "")
        enc = f"{r['encodes']} / {r['batches']}" if "encodes" in r and "batches" in r else ""
        lines.append(
            f"| {r['point']} | {r['engine']} | {r.get('compile', '')} | {r['batch']} | {r['fps']} "
            f"| {r.get('latency_p50_ms')} / {r.get('latency_p95_ms')} / {r.get('latency_p99_ms')} | {iv} | {lag} "
            f"| {enc} | {r.get('peak_gib', '')} |"
        )
    return head + "\n".join(lines) + "\n"


def breakdown_table(rows: list[dict]) -> str:
    keys = ["ingest_h2d", "vae_encode", "unet_step", "vae_decode", "output_d2h", "encoder"]
    out = ["| point | compile | batch | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        b = r.get("breakdown_ms_per_batch")
        if b:
            out.append(f"| {r['point']} | {r['compile']} | {r['batch']} | " + " | ".join(str(b.get(k, "")) for k in keys) + " |")
    return "\n".join(out) + "\n"


def markdown(meta: dict, rows: list[dict]) -> str:
    return (f"### {meta['gpu']}, {meta['date']}, commit {meta['commit']}, torch {meta['torch']}\n\n"
            f"`{meta['command']}`\n\n" + table(rows) + "\nPer-component device time, ms per batch "
            "(each piece replayed as its own CUDA graph; encoder compiled, timed eagerly with events):\n\n"
            + breakdown_table(rows))


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
    ap.add_argument("--encoder-size", type=int, default=512)
    ap.add_argument("--points", default="I,C,S,P")
    ap.add_argument("--lllite", default=None, help="adapter file for point L (default: a random one)")
    ap.add_argument("--unet", default="model", choices=("model", "mobile"),
                    help="mobile: a random U-Net of DreamLite-mobile's published layout instead of the model's")
    ap.add_argument("--max-batch", type=int, default=8, help="cap the batch of S and P (a harness check)")
    ap.add_argument("--compile", default="default", help="comma-separated engine compile modes to run")
    ap.add_argument("--peers", action="store_true", help="also run StreamDiffusion and our SD engine (race)")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--commit", default=os.environ.get("BENCH_COMMIT", "unknown"))
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu only checks the harness (figures from it mean nothing)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.run needs a CUDA GPU (or --device cpu to check the harness)", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    meta = dict(gpu=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", date=_dt.date.today().isoformat(), commit=args.commit,
                torch=torch.__version__, command="python -m bench.run " + " ".join(argv))
    print(json.dumps(meta), flush=True)
    rows = run_dreamlite(args) if args.points else []
    if args.peers:
        rows += run_peers(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # two runs of one commit must not overwrite each other: the model and the frame size join the
    # name when they are not the defaults (the earlier files' names stay valid)
    stamp = (f"{meta['date']}-{meta['gpu'].replace(' ', '_')}-{args.commit}-{args.points.replace(',', '')}"
             f"-enc{args.encoder_size}")
    if args.model != "synthetic:paper":
        stamp += "-" + "".join(c if c.isalnum() or c in "._" else "_" for c in args.model)
    if args.size != 512:
        stamp += f"-{args.size}px"
    if args.unet != "model":
        stamp += f"-{args.unet}unet"
    (out / f"{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    md = markdown(meta, rows)
    (out / f"{stamp}.md").write_text(md)
    print(md, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
