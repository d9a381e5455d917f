"""Same-model race: StreamDiffusion 0.1.1 against our SD engine, on the same random-weight model.

Both sides get the same SD-Turbo-shaped model (`synthetic:sd-turbo`: stabilityai/sd-turbo's U-Net
and OpenCLIP ViT-H text encoder with a TAESD-shaped tiny VAE), the same 1-step setting (timestep
index 0 of a 50-step LCM schedule: StreamDiffusion's `t_index_list=[0]`, our `steps=1,
strength=1, scheduler="lcm"`), the same frames, and are timed the same way: host uint8 frames in,
host uint8 frames out, wall clock.

    run_peer(frame_buffer, frames=480, size=512, device="cuda", dtype=torch.float16, churn_every_s=None)
    run_ours(batch, frames=480, size=512, device="cuda", dtype=torch.float16, churn_every_s=None)

Each returns fps (sustained), p50/p95/p99 per-frame latency (frame handed in -> frame back on the
host, ms), interval_p50/p99 (time between consecutive deliveries, ms; one delivery holds
`frame_buffer`/`batch` frames), peak_mem_gib (CUDA only), and what ran. Churn: every
`churn_every_s` seconds the prompt changes; StreamDiffusion's users call `prepare()` for that
(it encodes in the frame loop), ours is `set_params(prompt=...)` (it encodes on the side stream).

StreamDiffusion is installed with `pip install --no-deps streamdiffusion==0.1.1` (its pinned
dependencies are old; the parts used here run on diffusers 0.42 / transformers 5 unchanged).
Its `__call__` times itself with CUDA events and a device synchronise, so on a CPU (tests) the
harness runs the same three calls `__call__` makes (preprocess + `encode_image`,
`predict_x0_batch`, `decode_image`) without the timing.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import numpy as np
import torch

DEFAULT_MODEL = "synthetic:sd-turbo"
PROMPTS = (
    "a watercolor painting of a city street",
    "neon cyberpunk city at night, rain, reflections",
    "an oil painting with thick brush strokes",
    "a pencil sketch on white paper",
    "a snowy mountain village at dawn",
    "a comic book panel with bold outlines",
)
_BUNDLES: dict = {}


def bundle_for(model: str, device: str, dtype: torch.dtype):
    """The model both sides share (built or loaded once per process and setting)."""
    key = (model, str(device), dtype)
    if key not in _BUNDLES:
        from node_server.models import load_model

        _BUNDLES.clear()  # one model in memory at a time
        _BUNDLES[key] = load_model(model, device=device, dtype=dtype, progress=False)
    return _BUNDLES[key]


def make_frames(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth random RGB frames (a noise field upsampled), cycled through by the loops."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 8, 8, generator=g)
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return [f for f in (big * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def timed_loop(process: Callable[[list[np.ndarray]], list[np.ndarray]], *, per_call: int, frames: int,
               size: int, device, churn: Optional[Callable[[str], None]] = None,
               churn_every_s: Optional[float] = None, warmup_calls: int = 5) -> dict:
    """Feed `frames` frames `per_call` at a time through `process` (host in -> host out) and time it."""
    pool = make_frames(8, size)
    for w in range(warmup_calls):
        process([pool[(w + j) % len(pool)] for j in range(per_call)])
    _sync(device)
    calls = max(1, -(-frames // per_call))
    latencies: list[float] = []
    deliveries: list[float] = []
    churns = 0
    start = time.perf_counter()
    next_churn = start + churn_every_s if churn_every_s is not None else None
    for c in range(calls):
        now = time.perf_counter()
        if next_churn is not None and now >= next_churn and churn is not None:
            churns += 1
            churn(PROMPTS[churns % len(PROMPTS)])
            next_churn = now + churn_every_s
        batch = [pool[(c * per_call + j) % len(pool)] for j in range(per_call)]
        handed = time.perf_counter()
        outs = process(batch)
        done = time.perf_counter()
        if len(outs) != per_call or outs[0].dtype != np.uint8 or outs[0].shape != (size, size, 3):
            raise RuntimeError(f"expected {per_call} uint8 {size}x{size}x3 frames back, got {len(outs)}")
        latencies += [done - handed] * per_call
        deliveries.append(done)
    elapsed = time.perf_counter() - start
    intervals = [b - a for a, b in zip(deliveries, deliveries[1:])]
    ms = lambda v: [x * 1e3 for x in v]  # noqa: E731
    result = {
        "frames": calls * per_call,
        "seconds": elapsed,
        "fps": calls * per_call / elapsed,
        "p50_ms": _percentile(ms(latencies), 50),
        "p95_ms": _percentile(ms(latencies), 95),
        "p99_ms": _percentile(ms(latencies), 99),
        "interval_p50_ms": _percentile(ms(intervals), 50) if intervals else float("nan"),
        "interval_p99_ms": _percentile(ms(intervals), 99) if intervals else float("nan"),
        "interval_mean_ms": statistics.fmean(ms(intervals)) if intervals else float("nan"),
        "churns": churns,
        "churn_every_s": churn_every_s,
        "peak_mem_gib": None,
    }
    if torch.device(device).type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def _reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        _sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_peer(frame_buffer: int, frames: int = 480, size: int = 512, device="cuda", dtype=torch.float16,
             churn_every_s: Optional[float] = None, model: str = DEFAULT_MODEL) -> dict:
    """StreamDiffusion 0.1.1 (`StreamDiffusion` class, 1 step `t_index_list=[0]`, `cfg_type="none"`,
    `frame_buffer_size=frame_buffer`) on the shared model."""
    import streamdiffusion
    from diffusers import StableDiffusionPipeline
    from streamdiffusion import StreamDiffusion

    from node_server.engine.frames import to_uint8_hwc
    from node_server.quiet import quiet_diffusers

    bundle = bundle_for(model, device, dtype)
    _reset_peak(device)
    pipe = StableDiffusionPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer, unet=bundle.unet,
        scheduler=bundle.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    with quiet_diffusers():  # its LCMScheduler.from_config(Euler config) warns about keys
        stream = StreamDiffusion(pipe, t_index_list=[0], torch_dtype=dtype, width=size, height=size,
                                 frame_buffer_size=frame_buffer, cfg_type="none")

    def prepare(prompt: str) -> None:  # its prompt path, as its users call it on a prompt change
        stream.prepare(prompt, num_inference_steps=50, guidance_scale=1.0)

    prepare(PROMPTS[0])
    cuda = torch.device(device).type == "cuda"

    def call(x: torch.Tensor) -> torch.Tensor:
        if cuda:
            return stream(x)
        # __call__ minus its CUDA-event timing (the same three steps)
        x = stream.image_processor.preprocess(x, stream.height, stream.width).to(device=stream.device,
                                                                                   dtype=stream.dtype)
        return stream.decode_image(stream.predict_x0_batch(stream.encode_image(x)))

    def process(batch: list[np.ndarray]) -> list[np.ndarray]:
        host = torch.from_numpy(np.stack(batch))
        x = host.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        out = call(x)
        return list(to_uint8_hwc(out).cpu().numpy())

    with torch.no_grad():
        result = timed_loop(process, per_call=frame_buffer, frames=frames, size=size, device=device,
                            churn=prepare, churn_every_s=churn_every_s)
    result.update(name=f"StreamDiffusion {getattr(streamdiffusion, '__version__', '0.1.1')}",
                  frame_buffer=frame_buffer, size=size, model=model, dtype=str(dtype).replace("torch.", ""),
                  device=str(device), steps=1, t_index_list=[0])
    del stream, pipe
    return result


def run_ours(batch: int, frames: int = 480, size: int = 512, device="cuda", dtype=torch.float16,
             churn_every_s: Optional[float] = None, model: str = DEFAULT_MODEL, compile: str = "auto",
             scheduler: str = "lcm") -> dict:
    """Our SD engine (`build_engine`, batch frames per step, 1 step at timestep index 0) on the shared model."""
    from node_server.engine.factory import build_engine
    from node_server.engine.params import Params

    bundle = bundle_for(model, device, dtype)
    _reset_peak(device)
    params = Params().replace(prompt=PROMPTS[0], batch_size=batch, steps=1, strength=1.0)
    engine = build_engine(bundle, params, size=size, device=device, scheduler=scheduler, compile=compile,
                          progress=False)
    counter = iter(range(1 << 62))
    try:
        engine.warmup(progress=False)

        def process(batch_frames: list[np.ndarray]) -> list[np.ndarray]:
            outs = engine.step(batch_frames, [next(counter) for _ in batch_frames])
            return [o.image for o in outs]

        def churn(prompt: str) -> None:
            engine.set_params(prompt=prompt)

        encodes = engine.encode_count
        result = timed_loop(process, per_call=batch, frames=frames, size=size, device=device, churn=churn,
                            churn_every_s=churn_every_s)
        result["encodes"] = engine.encode_count - encodes
        result["compile"] = getattr(engine, "compile_mode", compile)
    finally:
        engine.close()
    result.update(name="node-server SD engine", frame_buffer=batch, batch=batch, size=size, model=model,
                  dtype=str(dtype).replace("torch.", ""), device=str(device), steps=1, scheduler=scheduler)
    return result


def race(frame_buffers=(1, 4), frames: int = 480, size: int = 512, device="cuda", dtype=torch.float16,
         churn_every_s: Optional[float] = 0.5, model: str = DEFAULT_MODEL) -> list[dict]:
    """Both engines at each frame buffer, steady and under prompt churn; rows for a report."""
    rows = []
    for fb in frame_buffers:
        for churn in (None, churn_every_s):
            peer = run_peer(fb, frames, size, device, dtype, churn, model)
            ours = run_ours(fb, frames, size, device, dtype, churn, model)
            rows.append({"frame_buffer": fb, "churn_every_s": churn, "peer": peer, "ours": ours,
                         "speedup": ours["fps"] / peer["fps"]})
    return rows


if __name__ == "__main__":  # pragma: no cover - manual runs
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--churn", type=float, default=0.5)
    a = ap.parse_args()
    print(json.dumps(race(frames=a.frames, size=a.size, device=a.device, dtype=getattr(torch, a.dtype),
                          churn_every_s=a.churn, model=a.model), indent=2, default=str))
