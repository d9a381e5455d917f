"""What the temporal output blend (`engine/output_blend.py`, `--temporal-blend`) costs on a GPU.

    python -m bench.output_blend_cost [--device cuda] [--frames 300]

Two figures, said plainly:

1. **The blend alone**: GPU time of `OutputBlend.apply` per batch (flow, guard, warp and mix for
   every frame of the batch), at the paper's 512x512 (batch 1 and 8) and the demo model's 256x256,
   from 10 warm-up calls then the mean of `--calls` (200) calls between two device synchronisations.
2. **Frame in to frame out** with the demo model (`build_engine`, compiled as `serve` runs it on a
   GPU), batch 1, host frame to host frame: a held-out moving sequence looped, `temporal_blend`
   0 and 0.5 in turn (twice each, the first pass of each dropped as warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def blend_alone(device: str, size: int, rows: int, calls: int = 200) -> float:
    from node_server.engine.output_blend import OutputBlend

    g = torch.Generator(device=device).manual_seed(0)
    blend = OutputBlend((size, size), device)
    x = torch.rand(rows, 3, size, size, device=device, generator=g)
    out = (torch.rand(rows, size, size, 3, device=device, generator=g) * 255).to(torch.uint8)
    for _ in range(10):
        blend.apply(x, out, rows, 0.5, "p")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        blend.apply(x, out, rows, 0.5, "p")
    sync()
    return (time.perf_counter() - start) / calls * 1000


def end_to_end(device: str, frames: int) -> dict:
    from node_server.demo import temporal
    from node_server.demo.styles import style
    from node_server.engine.factory import build_engine
    from node_server.engine.params import Params
    from node_server.models import load_model

    photos = temporal.held_out_photos(("coffee", "rocket"), size=256)
    seq = temporal.make_sequence("handheld", photos["coffee"], photos["rocket"], frames=30, size=256)
    clip = [(f * 255).round().byte().permute(1, 2, 0).numpy() for f in seq.frames]
    engine = build_engine(load_model("demo", device=device, progress=False), Params(prompt=style("sepia").prompt),
                          size=(256, 256), device=device)
    results: dict = {}
    with engine:
        engine.warmup(progress=False)
        for amount in (0.0, 0.5, 0.0, 0.5):
            engine.set_params(temporal_blend=amount)
            times = []
            for i in range(frames):
                start = time.perf_counter()
                engine.step([clip[i % len(clip)]], [i])
                times.append((time.perf_counter() - start) * 1000)
            results[f"{amount:g}"] = {"fps": round(1000 * len(times) / sum(times), 1),
                                      "p50_ms": round(statistics.median(times), 3),
                                      "p99_ms": round(float(np.percentile(times, 99)), 3)}
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--calls", type=int, default=200, help="timed calls of the blend alone (after 10 warm-up calls)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "blend_alone_ms": {}}
    for size, rows in ((512, 1), (512, 8), (256, 1)):
        ms = blend_alone(args.device, size, rows, args.calls)
        report["blend_alone_ms"][f"{size}x{size} batch {rows}"] = round(ms, 3)
        print(f"blend alone {size}x{size} batch {rows}: {ms:.3f} ms per batch", flush=True)
    report["demo_256_batch1"] = end_to_end(args.device, args.frames)
    print(json.dumps(report, indent=2), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
