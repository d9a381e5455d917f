"""Flicker of a demo model on moving pictures, measured the way the paper measures it.

    python -m node_server.demo.temporal [--lllite demo-temporal] [--refresh 1,4,8] [--json FILE]

Held-out moving sequences are made from the held-out photos (`node_server/demo/motion.py`: pans,
zooms, rotations, a non-rigid warp, an occluder crossing the picture, exposure changes, and
camera-like shots with shake, motion blur, sensor noise, exposure drift and a cut), and every frame
goes through the real engine (`build_engine` and `step`, as `render` and `serve` run it), once
without the adapter and once with it for each refresh period.

The paper's metrics (dreamlite-stream's `metrics.py`), over consecutive frame pairs (t, t+1):

- **warping error**: the output at t+1 warped back to t along the input's motion, mean absolute
  difference to the output at t, in 0-255. The paper computes the flow on the input with
  Farneback and masks nothing. Here the sequences are synthetic, so the motion is the true motion
  (`motion.correspondence`), and pixels whose point is occluded or outside the frame at t+1 are
  left out (the occlusion mask of Lai et al. 2018, which the paper names and omits). `we_flow`
  is the same with the engine's own flow (`engine/lllite/flow.py`, on the input frames) and no mask, as
  the paper computes it, for comparison.
- **consecutive L1**: mean |out_t - out_{t+1}| (motion and flicker together), and the **ratio**
  warping error / consecutive L1.

Pairs across a cut are left out of all three (there is no motion to follow). Beside them: the
input's own numbers (the floor: interpolation, noise and exposure changes), the classical
targets' (the styles as operations, frame by frame), the targets' through the model's
autoencoder alone (encode and decode: how much flicker the tiny autoencoder adds to a stable
sequence, which no U-Net adapter can take out), and the style error (mean absolute error 0..1 of
each output against its frame's target), so a lower flicker bought with a worse picture shows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import motion
from .styles import STYLES, style as style_by_name

SIZE = 256  # the demo model's frame size
FRAMES = 10
HELD_OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"
KINDS = ("pan", "zoom", "rotate", "warp", "occluder", "exposure", "handheld", "cut")
REFRESH = (1, 4, 8)


@dataclass
class MovingSequence:
    """Frames of one held-out shot (or two, with a cut) and the true motion between them."""

    name: str
    frames: list  # [3,H,W] float tensors in [0,1]
    pairs: list  # per (t, t+1): (grid [H,W,2] into frame t+1, visible [H,W] bool), or None across a cut
    flows: dict = field(default_factory=dict)  # the engine's flow estimate per pair, computed once


def _px(size: int) -> float:
    """One pixel in frame units."""
    return 2.0 / size


def shot_for(kind: str, photo: torch.Tensor, other: torch.Tensor, frames: int, size: int) -> motion.Shot:
    """The held-out shot of one kind (camera paths in pixels of a `size` frame)."""
    px = _px(size)
    mid = (frames - 1) / 2

    def pan(vx, vy, scale):
        v = torch.tensor([vx, vy]) * px * scale  # frame pixels -> scene units
        return dict(velocity=v, centre0=-v * mid, scale0=scale)

    if kind == "pan":
        return motion.still(photo, **pan(3.0, 1.5, 0.6))
    if kind == "zoom":
        return motion.still(photo, scale0=0.75, zoom=-0.025, centre0=torch.tensor([0.05, -0.05]))
    if kind == "rotate":
        return motion.still(photo, scale0=0.6, angle0=-0.02 * mid, spin=0.02)
    if kind == "warp":
        return motion.still(photo, **pan(1.0, 0.0, 0.62), wobble_amp=torch.tensor([[0.02, 0.012], [0.016, 0.01]]),
                            wobble_freq=torch.tensor([[[4.0, 2.0], [-3.0, 5.0]], [[2.5, -4.0], [5.0, 3.0]]]),
                            wobble_speed=torch.tensor([[0.5, -0.35], [0.4, 0.3]]),
                            wobble_phase=torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    if kind == "occluder":
        return motion.still(photo, occluder=other, **pan(1.0, 0.5, 0.62), occ_radius=0.35,
                            occ_centre0=torch.tensor([-0.75, 0.1]), occ_velocity=torch.tensor([6.0, -1.0]) * px,
                            occ_scale=0.6)
    if kind == "exposure":
        return motion.still(photo, **pan(-2.0, 1.0, 0.6), gain_drift=0.03, gain_flicker=0.08, gain_speed=2.1)
    if kind == "handheld":
        return motion.still(photo, **pan(2.0, -1.0, 0.6), shake_amp=torch.tensor(
            [[3.0, 1.5, 0.8], [2.5, 1.2, 0.6]]) * px * 0.6, shake_speed=torch.tensor([[0.9, 1.7, 2.9], [1.1, 2.3, 3.1]]),
            shake_phase=torch.tensor([[0.0, 1.0, 2.0], [0.5, 1.5, 2.5]]), blur=0.8, noise=0.02, gain_drift=0.02)
    raise ValueError(f"unknown sequence kind {kind!r}; expected one of {', '.join(KINDS)}")


def make_sequence(kind: str, photo: torch.Tensor, other: torch.Tensor, *, name: str = "", frames: int = FRAMES,
                  size: int = SIZE, seed: int = 0) -> MovingSequence:
    """One held-out moving sequence. `cut` pans over `photo` for half the frames, then over `other`."""
    name = name or kind
    if kind == "cut":
        first = frames // 2
        a = make_sequence("pan", photo, other, frames=first, size=size, seed=seed)
        b = make_sequence("exposure", other, photo, frames=frames - first, size=size, seed=seed + 1)
        return MovingSequence(name, a.frames + b.frames, a.pairs + [None] + b.pairs)
    shot = shot_for(kind, photo, other, frames, size)
    bad = ~motion.stays_inside(shot, 0.0, frames - 1.0)
    if bool(bad.any()):
        raise ValueError(f"the {kind} shot leaves the picture")
    out = [motion.render(shot, t, size, noise_seed=seed * 1000 + t)[0] for t in range(frames)]
    pairs = []
    for t in range(frames - 1):
        grid, visible = motion.correspondence(shot, t, t + 1, size)
        pairs.append((grid[0], visible[0]))
    return MovingSequence(name, out, pairs)


def held_out_photos(names: Sequence[str] = ("coffee", "rocket", "camera"), size: int = 512) -> dict:
    """The held-out photos as [3,size,size] tensors: from scikit-image's bundled data (full
    resolution, as training crops them), else the 256x256 copies in tests/data."""
    from . import data

    try:
        return {n: data.square(data.load_photo(n), size) for n in names}
    except ImportError:
        from PIL import Image

        from .evaluate import to_float

        return {n: to_float(np.asarray(Image.open(HELD_OUT_DIR / f"{n}.png").convert("RGB"))) for n in names}


def held_out_sequences(kinds: Sequence[str] = KINDS, photos: Optional[dict] = None, *, frames: int = FRAMES,
                       size: int = SIZE, every_photo: bool = False) -> list[MovingSequence]:
    """Each kind on one held-out photo, the photos taken in turn (`every_photo`: every kind on
    every photo); the occluder and the cut borrow the next photo."""
    photos = photos if photos is not None else held_out_photos()
    names = list(photos)
    seqs = []
    for j, kind in enumerate(kinds):
        for i in (range(len(names)) if every_photo else [j % len(names)]):
            other = photos[names[(i + 1) % len(names)]]
            seqs.append(make_sequence(kind, photos[names[i]], other, name=f"{kind}/{names[i]}", frames=frames,
                                      size=size, seed=100 * i + j))
    return seqs


# -- the metrics ---------------------------------------------------------------------------
def _as_float(frames) -> list[torch.Tensor]:
    out = []
    for f in frames:
        if isinstance(f, np.ndarray):
            f = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).float() / 255
        out.append(f.float())
    return out


def _flow_warp(size: int):
    from ..engine.lllite.runner import _flow_for

    return _flow_for((size, size))


@dataclass
class Flicker:
    we: float  # warping error, true motion, occlusions masked (0-255)
    we_flow: float  # warping error, the engine's flow on the input, nothing masked (0-255)
    l1: float  # consecutive-frame L1 (0-255)
    pairs: int

    @property
    def ratio(self) -> float:
        return self.we / self.l1 if self.l1 > 1e-9 else 0.0


def flicker(seq: MovingSequence, outputs, flow=None) -> Flicker:
    """The paper's metrics for one sequence's outputs (uint8 HxWx3 arrays or [3,H,W] floats)."""
    outs = _as_float(outputs)
    if len(outs) != len(seq.frames):
        raise ValueError(f"{len(outs)} outputs for {len(seq.frames)} frames")
    flow = flow if flow is not None else _flow_warp(outs[0].shape[-1])
    we = we_flow = l1 = 0.0
    n = 0
    for t, pair in enumerate(seq.pairs):
        if pair is None:
            continue
        grid, visible = pair
        a, b = outs[t], outs[t + 1]
        back = motion.warp(b.unsqueeze(0), grid.unsqueeze(0))[0]
        err = (back - a).abs().mean(0)
        we += float(err[visible].mean()) if bool(visible.any()) else 0.0
        with torch.no_grad():
            if t not in seq.flows:
                seq.flows[t] = flow.flow(seq.frames[t].unsqueeze(0), seq.frames[t + 1].unsqueeze(0))
            back_est = flow.warp(b.unsqueeze(0), seq.flows[t])[0]
        we_flow += float((back_est - a).abs().mean())
        l1 += float((b - a).abs().mean())
        n += 1
    n = max(n, 1)
    return Flicker(255 * we / n, 255 * we_flow / n, 255 * l1 / n, n)


@dataclass
class Row:
    """One configuration's numbers for one style, summed over sequences (`mean` divides)."""

    we: list = field(default_factory=list)
    we_flow: list = field(default_factory=list)
    l1: list = field(default_factory=list)
    style_error: list = field(default_factory=list)

    def add(self, f: Flicker, style_error: float = float("nan")) -> None:
        self.we.append(f.we)
        self.we_flow.append(f.we_flow)
        self.l1.append(f.l1)
        self.style_error.append(style_error)

    def summary(self) -> dict:
        mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
        we, l1 = mean(self.we), mean(self.l1)
        return {"warping_error": round(we, 3), "warping_error_flow": round(mean(self.we_flow), 3),
                "consecutive_l1": round(l1, 3), "ratio": round(we / l1, 4) if l1 > 1e-9 else 0.0,
                "style_error": round(mean(self.style_error), 4), "sequences": len(self.we)}


def style_error(outputs, targets) -> float:
    """Mean absolute error (0..1) of outputs against their frames' targets."""
    return float(np.mean([(o - t).abs().mean().item() for o, t in zip(_as_float(outputs), targets)]))


# -- running the engine --------------------------------------------------------------------
def build(model: str = "demo", lllite: Optional[str] = None, *, size: int = SIZE, device: str = "cpu",
          blocks: Optional[str] = None):
    """An engine exactly as `render` builds one (`build_engine`, `warmup`), with `--lllite` or not."""
    from ..engine.factory import build_engine
    from ..engine.params import Params
    from ..models import load_model
    from ..server.lllite_settings import check_lllite, engine_options

    values = {"lllite": lllite, "lllite_blocks": blocks}
    check_lllite(values)
    bundle = load_model(model, device=device, progress=False)
    engine = build_engine(bundle, Params(), size=(size, size), device=device, **engine_options(values))
    engine.warmup(progress=False)
    return engine


def run_sequence(engine, seq: MovingSequence, prompt: str, refresh: int = 1) -> list[np.ndarray]:
    """The engine's outputs for every frame of `seq` with `prompt`, one frame per step (as
    `render` steps with batch size 1). The prompt's conditioning is made before the first frame
    (steps whose output is discarded), and the adapter starts the sequence afresh (its first frame
    is conditioned on itself, as after a start)."""
    from ..demo.evaluate import render as render_still, to_uint8

    frames = [to_uint8(f) for f in seq.frames]
    if engine.params.prompt != prompt or engine.active_prompt != prompt:
        render_still(engine, frames[0], prompt, frame_id=-1)
    if engine.lllite is not None and engine.params.lllite_refresh != refresh:
        engine.set_params(lllite_refresh=refresh)
    engine.forget_shown()  # a new shot: nothing to carry from the last one
    out = []
    for i, f in enumerate(frames):
        result = engine.step([f], [i])[0]
        if result.prompt != prompt:
            raise RuntimeError(f"frame {i} came out with the prompt {result.prompt!r}, not {prompt!r}")
        out.append(result.image)
    return out


def round_trip(vae, image: torch.Tensor) -> torch.Tensor:
    """`image` ([3,H,W] in [0,1]) through the model's autoencoder (encode, decode, to 8 bits): the
    best the model could draw of it, and what the autoencoder alone does to a stable sequence."""
    weight = next(vae.parameters())
    with torch.no_grad():
        z = vae.encode(image.unsqueeze(0).to(weight.device, weight.dtype) * 2 - 1).latents
        out = (vae.decode(z).sample[0].float().clamp(-1, 1) + 1) / 2
    return ((out * 255).round() / 255).cpu()


def measure(sequences: list[MovingSequence], styles: Sequence[str], *, model: str = "demo",
            lllite: Optional[str] = None, refresh: Sequence[int] = REFRESH, device: str = "cpu",
            blocks: Optional[str] = None, log=print, keep: Optional[dict] = None, autoencoder: bool = False,
            strength: float = 1.0, blends: Sequence[float] = ()) -> dict:
    """table[style][config] = Row summary, configs: input, target, base, and lllite r<N> per refresh
    (and `autoencoder`: the targets through the model's autoencoder, see `round_trip`); `strength`:
    the adapter's run-time strength (`--lllite-strength`); `blends`: temporal output blends
    (`temporal_blend`) measured as `base blend<A>` (and `lllite r1 blend<A>` with an adapter).
    `keep` (a dict) collects every output: keep[(config, style, sequence name)] = frames."""
    flow = _flow_warp(sequences[0].frames[0].shape[-1])
    vae = None
    if autoencoder:
        from ..models import load_model

        vae = load_model(model, device=device, dtype=torch.float32, progress=False).vae
    targets = {}
    rows: dict = {s: {} for s in styles}
    for s in styles:
        st = style_by_name(s)
        for seq in sequences:
            tg = [st.apply(f.unsqueeze(0))[0] for f in seq.frames]
            targets[(s, seq.name)] = tg
            rows[s].setdefault("target", Row()).add(flicker(seq, tg, flow), 0.0)
            rows[s].setdefault("input", Row()).add(flicker(seq, seq.frames, flow), style_error(seq.frames, tg))
            if vae is not None:
                rt = [round_trip(vae, t) for t in tg]
                rows[s].setdefault("autoencoder", Row()).add(flicker(seq, rt, flow), style_error(rt, tg))
    configs = [("base", None, 1, 0.0)] + [(f"base blend{a:g}", None, 1, a) for a in blends]
    if lllite:
        configs += [(f"lllite r{r}", lllite, r, 0.0) for r in refresh]
        configs += [(f"lllite r1 blend{a:g}", lllite, 1, a) for a in blends]
    engines = {}
    try:
        for config, adapter, r, blend in configs:
            key = adapter or ""
            if key not in engines:
                for e in engines.values():
                    e.close()
                engines = {key: build(model, adapter, size=sequences[0].frames[0].shape[-1], device=device,
                                      blocks=blocks)}
            engine = engines[key]
            if adapter and engine.params.lllite_strength != strength:
                engine.set_params(lllite_strength=strength)
            engine.set_params(temporal_blend=blend)
            for s in styles:
                prompt = style_by_name(s).prompt
                start = time.perf_counter()
                for seq in sequences:
                    outs = run_sequence(engine, seq, prompt, r)
                    if keep is not None:
                        keep[(config, s, seq.name)] = outs
                    rows[s].setdefault(config, Row()).add(flicker(seq, outs, flow), style_error(outs, targets[(s, seq.name)]))
                if log:
                    summary = rows[s][config].summary()
                    log(f"{config:10s} {s:14s} warping error {summary['warping_error']:6.2f}  "
                        f"({time.perf_counter() - start:.0f} s)")
    finally:
        for e in engines.values():
            e.close()
    return {s: {c: row.summary() for c, row in rs.items()} for s, rs in rows.items()}


# -- reporting -----------------------------------------------------------------------------
def markdown(table: dict, refresh: Sequence[int] = REFRESH) -> str:
    """Two tables: per style the warping error of every configuration and the change with the
    adapter; then every metric averaged over the styles."""
    styles = list(table)
    blended = [c for c in table[styles[0]] if " blend" in c]
    configs = (["input", "target", "autoencoder", "base"] + [c for c in blended if c.startswith("base ")]
               + [f"lllite r{r}" for r in refresh] + [c for c in blended if c.startswith("lllite ")])
    have = [c for c in configs if all(c in table[s] for s in styles)]
    changed = [c for c in have if c == "lllite r1" or " blend" in c]  # each against base
    head = ("| style | " + " | ".join(have) + "".join(f" | change ({c})" for c in changed)
            + " | style error " + " / ".join(["base"] + changed) + " |")
    lines = [head, "|" + "---|" * (len(have) + len(changed) + 2)]
    for s in styles:
        row = table[s]
        cells = [f"{row[c]['warping_error']:.2f}" for c in have]
        extra = [f"{100 * (row[c]['warping_error'] / row['base']['warping_error'] - 1):+.0f}%" for c in changed]
        extra.append(" / ".join(f"{row[c]['style_error']:.3f}" for c in ["base"] + changed))
        lines.append(f"| {s} | " + " | ".join(cells + extra) + " |")
    lines += ["", "| mean over styles | warping error (true motion, masked) | warping error (engine flow, unmasked) "
              "| consecutive L1 | ratio | style error |", "|---|---|---|---|---|---|"]
    for c in have:
        vals = {k: float(np.mean([table[s][c][k] for s in styles]))
                for k in ("warping_error", "warping_error_flow", "consecutive_l1", "ratio", "style_error")}
        lines.append(f"| {c} | {vals['warping_error']:.2f} | {vals['warping_error_flow']:.2f} | "
                     f"{vals['consecutive_l1']:.2f} | {vals['ratio']:.3f} | {vals['style_error']:.3f} |")
    return "\n".join(lines)


def write_strips(keep: dict, sequences: list[MovingSequence], out_dir, styles: Sequence[str], seq_name: str,
                 frames: int = 6) -> list[Path]:
    """docs/demo/temporal_<style>.png: consecutive frames of one sequence, rows: the input, the
    output without the adapter, with it (refresh 1), with the strongest temporal output blend
    measured (without the adapter), and for each of these the difference to the previous output
    warped along the true motion (x4, black = no change)."""
    from PIL import Image

    seq = next(s for s in sequences if s.name == seq_name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for s in styles:
        rows = [[(f.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy() for f in seq.frames[:frames]]]
        diffs = []
        blends = sorted({k[0] for k in keep if k[0].startswith("base blend") and k[1] == s})
        for config in ["base", "lllite r1"] + blends[-1:]:
            outs = keep.get((config, s, seq_name))
            if outs is None:
                continue
            rows.append([np.asarray(o) for o in outs[:frames]])
            f = _as_float(outs[:frames])
            d = [np.zeros_like(rows[0][0])]
            for t in range(1, len(f)):
                grid, visible = seq.pairs[t - 1]
                back = motion.warp(f[t].unsqueeze(0), grid.unsqueeze(0))[0]
                e = ((back - f[t - 1]).abs() * 4 * visible).clamp(0, 1)
                d.append((e * 255).round().byte().permute(1, 2, 0).numpy())
            diffs.append(d)
        rows += diffs
        sheet = np.concatenate([np.concatenate(r, 1) for r in rows], 0)
        path = out_dir / f"temporal_{s}.png"
        Image.fromarray(sheet).resize((sheet.shape[1] // 2, sheet.shape[0] // 2), Image.BILINEAR).save(path, optimize=True)
        written.append(path)
    return written


def main(argv=None) -> int:
    """`python -m node_server.demo.temporal`: the flicker table (docs/DEMO_MODEL.md, Temporal adapter)."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where the engine and the "
                   "autoencoder run (the metrics are computed on the CPU)")
    p.add_argument("--lllite", default=None, metavar="FILE", help="the adapter (a file or demo-temporal); "
                   "without it only the model without an adapter is measured")
    p.add_argument("--lllite-blocks", default=None)
    p.add_argument("--lllite-strength", type=float, default=1.0,
                   help="the adapter's strength (as serve's --lllite-strength, 0..2; default 1)")
    p.add_argument("--refresh", default=",".join(map(str, REFRESH)), help="refresh periods, in batches")
    p.add_argument("--temporal-blend", default="", metavar="A[,B...]",
                   help="also measure the temporal output blend at these amounts (serve's --temporal-blend), "
                        "without the adapter and with it at refresh 1")
    p.add_argument("--styles", default="all", help="comma list of demo styles, or all")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of sequence kinds")
    p.add_argument("--photos", default="coffee,rocket,camera", help="held-out photos (taken in turn by the kinds)")
    p.add_argument("--every-photo", action="store_true", help="every kind on every photo (three times the work)")
    p.add_argument("--frames", type=int, default=FRAMES)
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--json", default=None, metavar="FILE", help="write the table as JSON")
    p.add_argument("--strips", default=None, metavar="DIR", help="write example strips (PNG) here")
    p.add_argument("--strip-sequence", default="pan/coffee")
    p.add_argument("--strip-styles", default="sepia,pencil-sketch,thermal,neon")
    args = p.parse_args(argv)
    styles = [s.name for s in STYLES] if args.styles == "all" else [style_by_name(s).name for s in args.styles.split(",")]
    refresh = tuple(int(r) for r in args.refresh.split(",") if r)
    from ..engine.params import LLLITE_STRENGTH_RANGE

    if not LLLITE_STRENGTH_RANGE[0] <= args.lllite_strength <= LLLITE_STRENGTH_RANGE[1]:
        raise SystemExit(f"--lllite-strength must be in {LLLITE_STRENGTH_RANGE[0]}..{LLLITE_STRENGTH_RANGE[1]}")
    from ..engine.params import Params
    from ..errors import ParamError

    try:
        blends = tuple(Params().replace(temporal_blend=a).temporal_blend for a in args.temporal_blend.split(",") if a)
    except ParamError as exc:
        raise SystemExit(f"--temporal-blend: {exc.reason}") from None
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            raise SystemExit(f"unknown sequence kind {k!r}; expected some of {', '.join(KINDS)}")
    torch.set_grad_enabled(False)
    photos = held_out_photos(tuple(args.photos.split(",")))
    sequences = held_out_sequences(kinds, photos, frames=args.frames, size=args.size, every_photo=args.every_photo)
    print(f"{len(sequences)} held-out sequences of {args.frames} frames at {args.size}px "
          f"({', '.join(kinds)} on {args.photos}); styles: {', '.join(styles)}", flush=True)
    keep = {} if args.strips else None
    if keep is not None:  # only the strip sequence's outputs are kept
        class _Only(dict):
            def __setitem__(self, key, value):
                if key[2] == args.strip_sequence:
                    super().__setitem__(key, value)
        keep = _Only()
    start = time.perf_counter()
    table = measure(sequences, styles, model=args.model, lllite=args.lllite, refresh=refresh,
                    device=args.device, blocks=args.lllite_blocks, strength=args.lllite_strength, blends=blends, keep=keep, log=lambda m: print(m, flush=True), autoencoder=True)
    seconds = time.perf_counter() - start
    print(f"measured in {seconds:.0f} s", flush=True)
    print(markdown(table, refresh))
    if args.json:
        import platform

        Path(args.json).write_text(json.dumps({"command": "python -m node_server.demo.temporal " + " ".join(
            sys.argv[1:] if argv is None else argv), "device": args.device, "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
            "seconds": round(seconds), "table": table}, indent=2) + "\n")
    if args.strips:
        strip_styles = [s for s in args.strip_styles.split(",") if s in styles]
        for path in write_strips(keep, sequences, args.strips, strip_styles, args.strip_sequence):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
