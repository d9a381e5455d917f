"""How well a demo model imitates its styles: stylize held-out photos through the real
`StreamEngine` and compare each output with every style's classical target.

Used by the training script (its final table) and by the tests, so both measure the same thing.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .styles import STYLES

EVAL_SIZE = 256


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3,H,W] float in [0,1] -> HxWx3 uint8 (the engine's input format)."""
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def to_float(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [3,H,W] float in [0,1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float() / 255


def render(engine, image: np.ndarray, prompt: str, *, frame_id: int = 0, timeout: float = 60.0) -> np.ndarray:
    """One frame stylized with `prompt`: switches the prompt if needed and steps until a frame made
    with that prompt's conditioning comes back (a prompt change is picked up asynchronously)."""
    if engine.params.prompt != prompt:
        engine.set_params(prompt=prompt)
    deadline = time.monotonic() + timeout
    while True:
        out = engine.step([image], [frame_id])[0]
        if out.prompt == prompt:
            return out.image
        if time.monotonic() > deadline:
            raise TimeoutError(f"no frame with the prompt {prompt!r} after {timeout} s")
        time.sleep(0.01)


def mae_table(outputs: dict[str, list[np.ndarray]], images: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """table[rendered style][target style] = mean absolute error (0..1) over the images."""
    targets = {s.name: [s.apply(img.unsqueeze(0))[0] for img in images] for s in STYLES}
    table = {}
    for name, outs in outputs.items():
        row = {}
        for s in STYLES:
            row[s.name] = float(np.mean([(to_float(o) - t).abs().mean().item() for o, t in zip(outs, targets[s.name])]))
        table[name] = row
    return table


def render_still(engine, image: np.ndarray, prompt: str, frames: int = 1) -> np.ndarray:
    """A still picture shown for `frames` frames with `prompt`: the last output. Without an
    adapter or output blend every frame is the same. With a temporal adapter the first frame is
    conditioned on the picture itself and each later one on the previous output, and the temporal
    output blend carries each output into the next (the steady state of a still)."""
    out = render(engine, image, prompt)
    if engine.lllite is None and engine.params.temporal_blend <= 0:
        return out
    engine.forget_shown()  # the picture starts afresh, as a clip's first frame
    for i in range(frames):
        out = engine.step([image], [i])[0].image
    return out


def stylize_all(engine, images: list[torch.Tensor], frames: int = 1) -> dict[str, list[np.ndarray]]:
    """Every style's preset prompt applied to every image (`frames`: see `render_still`)."""
    stills = [to_uint8(img) for img in images]
    return {s.name: [render_still(engine, f, s.prompt, frames) for f in stills] for s in STYLES}


def block_grid_ratio(img: torch.Tensor, block: int = 8) -> float:
    """How strongly `img` ([3,H,W]) shows a pixel grid of `block`-pixel cells: the mean absolute
    step between neighbouring pixels across cell borders over the mean step inside cells, along
    both axes. About 1 for a photo; very large for clean pixel art (flat cells)."""
    g = img.float().mean(0)
    ratios = []
    for d in ((g[:, 1:] - g[:, :-1]).abs().mean(0), (g[1:, :] - g[:-1, :]).abs().mean(1)):
        border = (torch.arange(d.shape[0]) % block) == block - 1
        ratios.append(float(d[border].mean() / d[~border].mean().clamp_min(1e-6)))
    return float(np.mean(ratios))


def evaluate_folder(folder, *, device="cpu", images: list[torch.Tensor], encoder_image_size: int = 512,
                    verbose: bool = True, lllite=None, frames: int = 1, temporal_blend: float = 0.0) -> dict:
    """Load `folder` with the server's loader and print/return the error table (with `lllite`,
    an adapter file or `demo-temporal`, or a `temporal_blend`, each still shown for `frames` frames)."""
    from ..engine.dreamlite.engine import StreamEngine
    from ..models.loader import load_folder

    bundle = load_folder(Path(folder), device=torch.device("cpu"), dtype=torch.float32, progress=False)
    if lllite is not None:
        from ..models.lllite_file import resolve_adapter

        lllite = str(resolve_adapter(lllite))
    with StreamEngine(bundle, size=EVAL_SIZE, encoder_image_size=encoder_image_size, lllite=lllite) as engine:
        engine.set_params(temporal_blend=temporal_blend)
        table = mae_table(stylize_all(engine, images, frames), images)
    report = {}
    if verbose:
        extra = f", adapter {lllite}" if lllite else ""
        extra += f", temporal blend {temporal_blend:g}" if temporal_blend > 0 else ""
        extra += f", still for {frames} frame(s)" if extra else ""
        print(f"held-out evaluation (MAE 0..1, {EVAL_SIZE}px, 1 step, strength {engine.params.strength}, seed 0"
              f"{extra}):", flush=True)
        print(f"{'style':14s} {'own':>6s} {'next best':>22s} ratio", flush=True)
    for name, row in table.items():
        own = row[name]
        other_name, other = min(((k, v) for k, v in row.items() if k != name), key=lambda kv: kv[1])
        report[name] = {"own": round(own, 4), "nearest_other": other_name, "nearest_other_mae": round(other, 4)}
        if verbose:
            print(f"{name:14s} {own:6.3f} {other_name:>14s} {other:6.3f}  {own / other:.2f}", flush=True)
    return report


def write_examples(folder, out_dir, images: list[torch.Tensor], names: list[str]) -> list[Path]:
    """docs/demo/<photo>.png: the photo, then each style's output (top) over its classical target
    (bottom), rendered by the engine exactly as `node-server render` would (256px, preset prompts)."""
    from PIL import Image

    from ..engine.dreamlite.engine import StreamEngine
    from ..models.loader import load_folder

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = load_folder(Path(folder), device=torch.device("cpu"), dtype=torch.float32, progress=False)
    written = []
    with StreamEngine(bundle, size=EVAL_SIZE) as engine:
        outputs = stylize_all(engine, images)
    for k, (img, name) in enumerate(zip(images, names)):
        src = to_uint8(img)
        top = [src] + [outputs[s.name][k] for s in STYLES]
        bottom = [np.full_like(src, 255)] + [to_uint8(s.apply(img.unsqueeze(0))[0]) for s in STYLES]
        sheet = np.concatenate([np.concatenate(top, 1), np.concatenate(bottom, 1)], 0)
        small = Image.fromarray(sheet).resize((sheet.shape[1] // 2, sheet.shape[0] // 2), Image.BILINEAR)
        path = out_dir / f"{name}.png"
        small.save(path, optimize=True)
        written.append(path)
    return written


def main(argv=None) -> int:
    """`python -m node_server.demo.evaluate [FOLDER] [--examples DIR]`: the held-out table (and
    example sheets) for a demo model folder, by default the shipped one."""
    import argparse

    from PIL import Image

    from ..models.loader import DEMO_DIR

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("folder", nargs="?", default=str(DEMO_DIR))
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "tests" / "data"),
                   help="folder of held-out PNGs (default tests/data)")
    p.add_argument("--examples", default=None, metavar="DIR", help="also write example sheets here")
    p.add_argument("--lllite", default=None, metavar="FILE",
                   help="with this adapter (a file or demo-temporal): the still-picture quality with it")
    p.add_argument("--frames", type=int, default=1,
                   help="with --lllite or --temporal-blend: show each still this many frames and judge the last "
                        "(default 1)")
    p.add_argument("--temporal-blend", type=float, default=0.0, metavar="A",
                   help="with the temporal output blend (serve's --temporal-blend): the still-picture quality with it")
    args = p.parse_args(argv)
    paths = sorted(Path(args.images).glob("*.png"))
    images = [to_float(np.asarray(Image.open(q).convert("RGB"))) for q in paths]
    evaluate_folder(args.folder, images=images, lllite=args.lllite, frames=args.frames,
                    temporal_blend=args.temporal_blend)
    if args.examples:
        for path in write_examples(args.folder, args.examples, images, [q.stem for q in paths]):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
