"""How far the opt-in FP8 U-Net (engine/fp8.py) moves the picture: PSNR of its frames against the
same engine's without FP8, per prompt, on the held-out photos (tests/data).

    python -m bench.fp8_quality --device cuda --models demo,synthetic:paper

The bar set by issue 19 for turning an approximation on by default: PSNR >= 40 dB on the demo
model's held-out photos and on `synthetic:paper`. The engines run uncompiled (`compile="off"`):
the arithmetic is the same as the compiled graph's, and the check costs no compile time. Each
model runs at its own frame size (the demo model 256, others 512), bf16 on a GPU, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PAPER_PROMPTS = ("make it a soft watercolor painting", "turn it into a neon-lit night scene",
                 "render it as a pencil sketch")


def psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """PSNR (dB, 0..255) over all the frames together."""
    mse = float(np.mean([np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2) for x, y in zip(a, b)]))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _photos(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def measure(model: str, device: str, photos: list[np.ndarray]) -> dict:
    from node_server.demo.evaluate import render
    from node_server.demo.styles import STYLES
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.models import load_model
    from node_server.models.loader import frame_size_for

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    bundle = load_model(model, device=device, dtype=dtype, progress=False)
    size = frame_size_for(model)
    prompts = [s.prompt for s in STYLES] if model == "demo" else list(PAPER_PROMPTS)
    outputs, swapped = {}, 0
    for fp8 in (False, True):
        with StreamEngine(bundle, size=size, device=device, dtype=dtype, compile="off", fp8=fp8,
                          progress=False) as engine:
            outputs[fp8] = {p: [render(engine, img, p, frame_id=i) for i, img in enumerate(photos)] for p in prompts}
            swapped = max(swapped, engine.fp8_modules)
    rows = {p: round(psnr(outputs[False][p], outputs[True][p]), 2) for p in prompts}
    worst = float(min(rows.values()))
    return dict(model=model, size=size, dtype=str(dtype).replace("torch.", ""), device=device,
                fp8_modules=swapped, photos=len(photos), psnr_db=rows, worst_db=worst, meets_40db=bool(worst >= 40))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,synthetic:paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"))
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    args = ap.parse_args(argv)
    photos = _photos(Path(args.images))
    results = []
    for model in (m.strip() for m in args.models.split(",") if m.strip()):
        row = measure(model, args.device, photos)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
