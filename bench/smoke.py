"""A first look at the eager engine on a GPU: wall-clock fps of `StreamEngine.step`.

Not the project's benchmark (that is `bench/run.py`, with warm-up, percentiles and a component
breakdown, in the GPU-performance issue): this only checks that the CUDA path works at the
paper's shapes and gives a rough number. Frames go in as host uint8 arrays and come back as
host uint8 arrays, so the figure is frame-in to frame-out in host memory.

    python -m bench.smoke --model synthetic:paper --frames 64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params
from node_server.models import load_model


def run_point(bundle, *, batch: int, refresh: str, frames: int, size: int) -> dict:
    params = Params().replace(prompt="turn it into an oil painting", batch_size=batch, refresh=refresh)
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(16)]
    with StreamEngine(bundle, params, size=size) as eng:
        for w in range(3):  # warm-up
            eng.step(clip[:batch], list(range(batch)))
        torch.cuda.synchronize()
        lat = []
        t0 = time.perf_counter()
        done = 0
        while done < frames:
            s = time.perf_counter()
            eng.step([clip[(done + k) % 16] for k in range(batch)], list(range(done, done + batch)))
            lat.append((time.perf_counter() - s) * 1e3)
            done += batch
        wall = time.perf_counter() - t0
        return dict(batch=batch, refresh=refresh, frames=done, fps=done / wall,
                    batch_ms_p50=float(np.percentile(lat, 50)), encodes=eng.encode_count,
                    peak_gib=torch.cuda.max_memory_allocated() / 2**30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthetic:paper")
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    t = time.perf_counter()
    bundle = load_model(args.model, device="cuda", dtype=torch.bfloat16)
    print(f"loaded {args.model} in {time.perf_counter() - t:.1f} s on {torch.cuda.get_device_name()}", flush=True)
    for batch, refresh in [(1, "on-change"), (8, "on-change"), (8, "every-batch")]:
        print(json.dumps(run_point(bundle, batch=batch, refresh=refresh, frames=args.frames, size=args.size)),
              flush=True)


if __name__ == "__main__":
    main()
