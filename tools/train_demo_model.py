#!/usr/bin/env python
"""Train the embedded demo model (docs/DEMO_MODEL.md) within a wall-clock budget.

    PYTHONPATH=. python tools/train_demo_model.py --device cuda --minutes 8.5 --out OUT/demo_model

Phases (fractions of the budget left after setup): the tiny autoencoder learns to reconstruct
photos and their stylized versions; then the U-Net, the Qwen3-VL encoder and the autoencoder's
decoder learn, through the engine's own conditioning (`PromptEncoder`) and latent layout
([target | source] side by side), to turn a frame into the style its instruction names: the
engine's one-step edit from the frame's own noised latent, at low strengths around the demo
default, judged in latent space and on the decoded picture (L1 and L1 of image gradients, which
keeps edges). Last, the folder is saved (with its node_server.json: default strength and frame
size), loaded back with the server's loader and evaluated with `StreamEngine` on held-out photos
(the table the tests' thresholds come from).

With `--latent-rms R` the autoencoder's latents are held at a root-mean-square of R (off by
default; see node_server/demo/model.py, LATENT_RMS).

The engine's one step at strength s ends at `x_t - sigma(s) * v`, and the demo runs at a low
strength (sigma 0.08), so a whole restyling needs a velocity of order 1/sigma. Training multiplies
the U-Net's output by `--velocity-scale` (default 1/sigma of `--default-strength`) and folds that
factor into its last convolution when saving: the network learns the style change at order one, and
the saved folder is a plain DreamLite U-Net for the engine's unchanged call.

The convolutions run in channels-last layout and, on a GPU, in bfloat16 autocast (`--precision`);
the weights stay float32 and are saved as float32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_server.demo import data  # noqa: E402
from node_server.demo import model as demo_model  # noqa: E402
from node_server.demo.model import FRAME_SIZE, build_demo  # noqa: E402
from node_server.demo.styles import DEMO_STRENGTH, STYLES, TRAIN_STRENGTHS  # noqa: E402
from node_server.engine.dreamlite.encoder import PromptEncoder  # noqa: E402

# The edit phase's peak learning rate (U-Net). Before the velocity scale, 1e-3 sat on a plateau
# (loss ~0.9) until the cosine decay brought it near 3e-4; with it, the held-out error fell from
# 0.062 at 2e-4 to 0.060 at 4e-4 and 0.058 at 6e-4 (docs/DEMO_MODEL.md, fourth version).
MAIN_LR = 6e-4
# --focus (see pick_styles): off, since a half focus (run 5B) came out worse than none (5A: mean held-out
# error 0.052 against 0.049, pixel-art 0.073 against 0.061; docs/DEMO_MODEL.md, fifth version)
STYLE_FOCUS = 0.0
TRAIN_PROMPT_TOKENS = 32  # valid conditioning is the same at any padded length (padding is masked)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget for everything")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="images per step (default 32 on a GPU, 6 on the CPU)")
    p.add_argument("--size", type=int, default=None, help="training crop size (default 256 on a GPU, 128 on the CPU)")
    p.add_argument("--vae-fraction", type=float, default=0.2, help="share of the training time for the autoencoder")
    p.add_argument("--vae-steps", type=int, default=None, help="fixed autoencoder steps (overrides the time split)")
    p.add_argument("--steps", type=int, default=None, help="fixed main-phase steps (overrides the time budget)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="autocast dtype of the forward passes (auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--grad-weight", type=float, default=1.0,
                   help="weight of the L1 of image gradients (edges) beside the pixel L1")
    p.add_argument("--latent-rms", type=float, default=None,
                   help="root-mean-square the autoencoder's latents are trained to (default: left free; "
                        "node_server/demo/model.py: LATENT_RMS)")
    p.add_argument("--strengths", type=strength_list, default=TRAIN_STRENGTHS,
                   help="comma-separated edit strengths drawn uniformly per image (default: "
                        "node_server/demo/styles.py TRAIN_STRENGTHS)")
    p.add_argument("--latent-channels", type=int, default=demo_model.LATENT_CHANNELS,
                   help="the autoencoder's latent channels (also the U-Net's in/out channels)")
    p.add_argument("--default-strength", type=strength_value, default=DEMO_STRENGTH,
                   help="the strength the model is made for: written to the folder's node_server.json "
                        "(the default of serve and render) and used for its evaluation")
    p.add_argument("--velocity-scale", type=positive_float, default=None, metavar="K",
                   help="the U-Net's output is multiplied by K in training and K is folded into its last "
                        "convolution when saving (default: 1 / sigma of --default-strength, so the network "
                        "learns the style change at order one instead of a velocity of order 1/sigma)")
    p.add_argument("--lr", type=float, default=MAIN_LR,
                   help="peak learning rate of the U-Net in the edit phase (the encoder and the decoder "
                        "take 0.3 of it); cosine decay to a tenth")
    p.add_argument("--focus", type=unit_fraction, default=STYLE_FOCUS, metavar="F",
                   help="share of each step's style draw made in proportion to the styles' running errors, so "
                        "the hard styles get more steps; 0 (default) draws uniformly (0.5 was tried: worse)")
    p.add_argument("--unet-channels", type=unet_channels, default=demo_model.UNET_CHANNELS, metavar="A,B,C",
                   help="the U-Net's channels at its three levels (default %(default)s; the level-0 width costs "
                        "CPU frame time, see docs/DEMO_MODEL.md)")
    p.add_argument("--state", default=None, metavar="FILE",
                   help="resumable run: with fixed --vae-steps and --steps, stop when --minutes runs out "
                        "(or after --pause-after steps), save the training state to FILE and exit; the same "
                        "command continues from it, until the steps are done")
    p.add_argument("--pause-after", type=int, default=None, metavar="N",
                   help="with --state: also stop after N steps in this call")
    p.add_argument("--log-every", type=int, default=50)
    return p.parse_args(argv)


def strength_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"strengths must be numbers in (0, 1], got {text!r}")
    return values


def _number(text: str) -> float:
    """The flag's number, or NaN (which every range check below refuses)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a positive number, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a number in [0, 1], got {text!r}")
    return value


def unet_channels(text: str) -> tuple[int, ...]:
    """Three widths, multiples of 8 (the U-Net's group norm has 8 groups) that split into whole
    attention heads at the two attention levels."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v >= 16 and v % 8 == 0 for v in values) or any(
            v % max(1, v // demo_model.HEAD_SIZE) for v in values[1:]):
        raise argparse.ArgumentTypeError(
            f"three comma-separated channel counts, multiples of 8 of at least 16, got {text!r}")
    return values


def strength_value(text: str) -> float:
    values = strength_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"one strength in (0, 1], got {text!r}")
    return values[0]


def grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between image gradients: keeps edges sharp (pencil, blueprint, neon, emboss and pixel art
    live there)."""
    return ((a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])).abs().mean() + \
           ((a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])).abs().mean()


def image_loss(out: torch.Tensor, target: torch.Tensor, grad_weight: float) -> torch.Tensor:
    out, target = out.float(), target.float()
    return F.l1_loss(out, target) + grad_weight * grad_l1(out, target)


def set_layout(modules, channels_last: bool) -> None:
    """Channels-last convolutions train faster (cuDNN's NHWC kernels); saving needs the default layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in modules:
        m.to(memory_format=fmt)


def layout(x: torch.Tensor, args) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


class Clock:
    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.budget = minutes * 60.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


def lr_factor(progress: float, step: int, warmup: int = 50) -> float:
    return min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Stepper:
    """When a training loop stops, and how far along its learning-rate schedule it is: by time
    (`--minutes`) or by a fixed step count; a resumable run (`--state`) also pauses when this call's
    time or `--pause-after` steps are used up."""

    def __init__(self, args, clock, total, until: float, pause_at: float, start: int = 0):
        self.args, self.clock, self.total, self.until, self.pause_at = args, clock, total, until, pause_at
        self.step, self.start, self.t0 = start, start, clock.elapsed()
        self.paused = False

    def progress(self):
        """This step's progress in [0, 1], or None to stop (see `paused`)."""
        if self.total is not None:
            if self.step >= self.total:
                return None
            if self.args.state is not None and (
                    self.clock.elapsed() >= self.pause_at
                    or (self.args.pause_after is not None and self.step - self.start >= self.args.pause_after)):
                self.paused = True
                return None
            return self.step / max(1, self.total)
        if self.clock.elapsed() >= self.until:
            return None
        return (self.clock.elapsed() - self.t0) / max(1e-6, self.until - self.t0)

    def __iter__(self):
        """(step, progress) for each step to run; the step counts as done when the loop comes back."""
        while (progress := self.progress()) is not None:
            yield self.step, progress
            self.step += 1


def train_vae(vae, bank, args, gen, clock, until: float, pause_at: float, resume=None):
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    vae.train().requires_grad_(True)
    last = None
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        last = resume["last"]
    stepper = Stepper(args, clock, args.vae_steps, until, pause_at, start=resume["step"] if resume else 0)
    for step, progress in stepper:
        for g in opt.param_groups:
            g["lr"] = 2e-3 * lr_factor(progress, step)
        x = data.training_batch(bank, args.batch, args.size, gen)
        idx = torch.randint(len(STYLES), (args.batch,), generator=gen, device=x.device)
        with torch.no_grad():
            y = apply_styles(x, idx)
        imgs = layout(torch.cat([x, y]) * 2 - 1, args)
        with autocast(args):
            z = vae.encode(imgs).latents
            rec = vae.decode(z).sample
        # keep the latents' scale at LATENT_RMS (the reconstruction alone leaves it free)
        rms = z.float().pow(2).mean().sqrt()
        loss = image_loss(rec, imgs, args.grad_weight)
        if demo_model.LATENT_RMS is not None:
            loss = loss + 0.1 * (rms / demo_model.LATENT_RMS - 1).pow(2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        last = loss.item()
        if step % args.log_every == 0:
            print(f"[vae] step {step} t={clock.elapsed():.0f}s loss {last:.4f} latent rms {rms.item():.2f}", flush=True)
    if stepper.paused:
        return {"step": stepper.step, "opt": opt.state_dict(), "last": last}
    print(f"[vae] done: {stepper.step} steps, final loss {last:.4f}", flush=True)
    return stepper.step, last


def autocast(args):
    return torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16)


def apply_styles(x, idx):
    from node_server.demo.styles import apply_styles as _apply

    return _apply(x, idx)


def pick_styles(rng: random.Random, errors: list, k: int, focus: float) -> list[int]:
    """`k` distinct styles for one step. With `focus` 0, uniformly (the earlier runs' draw, kept
    exactly); with focus f, each draw is (1 - f) uniform and f in proportion to the styles' running
    errors (`errors`; None for a style not seen yet counts as the mean of the others), so the styles
    furthest from their targets get more of the training."""
    if focus <= 0:
        return rng.sample(range(len(errors)), k)
    seen = [e for e in errors if e is not None]
    known = [e if e is not None else (sum(seen) / len(seen) if seen else 1.0) for e in errors]
    total = sum(known) or 1.0
    weights = [(1 - focus) / len(known) + focus * e / total for e in known]
    pool, chosen = list(range(len(known))), []
    for _ in range(k):
        i = rng.choices(range(len(pool)), weights=[weights[s] for s in pool])[0]
        chosen.append(pool.pop(i))
    return chosen


def update_style_errors(errors: list, chosen: list[int], group_errors: list[float], rate: float = 0.05) -> None:
    """Running (exponential) mean of each style's image error, in place; a style's first value starts it."""
    for s, e in zip(chosen, group_errors):
        errors[s] = e if errors[s] is None else (1 - rate) * errors[s] + rate * e


def train_main(bundle, bank, args, gen, clock, until: float, device, pause_at: float, resume=None):
    unet, vae, te = bundle.unet, bundle.vae, bundle.text_encoder
    vae.eval().requires_grad_(False)
    vae.decoder.train().requires_grad_(True)
    unet.train().requires_grad_(True)
    te.train().requires_grad_(True)
    encoders = {s: PromptEncoder(bundle, device, torch.float32, image_size=s, max_prompt_tokens=TRAIN_PROMPT_TOKENS)
                for s in (256, 512)}
    encode = PromptEncoder.encode.__wrapped__  # the engine's own encode, with gradients
    tokens = {s: {} for s in encoders}
    groups = [
        {"params": unet.parameters(), "lr": args.lr},
        {"params": te.parameters(), "lr": 0.3 * args.lr},
        {"params": vae.decoder.parameters(), "lr": 0.3 * args.lr},
    ]
    base = [g["lr"] for g in groups]
    params = [p for m in (unet, te, vae.decoder) for p in m.parameters()]
    from node_server.engine.dreamlite.engine import flow_schedule

    latent = args.size // 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    # the engine's schedule for a frame of this size (`StreamEngine.latent_hw`: one frame's latent)
    schedules = [flow_schedule(bundle.scheduler, 1, s, (latent, latent)) for s in args.strengths]
    sched_sigma = torch.tensor([s.sigmas[0] for s in schedules], device=device)
    sched_t = torch.tensor([s.timesteps[0] for s in schedules], device=device)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    n_groups = 4 if args.batch >= 8 else 2
    losses = {}
    rng = random.Random(args.seed + 7)
    style_errors = [None] * len(STYLES)  # running image error per style (pick_styles)
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        losses = dict(resume["losses"])
        rng.setstate(resume["rng"])
        style_errors = list(resume["style_errors"])
    stepper = Stepper(args, clock, args.steps, until, pause_at, start=resume["step"] if resume else 0)
    for step, progress in stepper:
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * lr_factor(progress, step, warmup=100)
        n = args.batch
        x = data.training_batch(bank, n, args.size, gen)
        chosen = pick_styles(rng, style_errors, n_groups, args.focus)
        per = [n // n_groups + (1 if k < n % n_groups else 0) for k in range(n_groups)]
        idx = torch.cat([torch.full((c,), s, device=device, dtype=torch.long) for s, c in zip(chosen, per)])
        with torch.no_grad(), autocast(args):
            y = apply_styles(x, idx)
            src = vae.encode(layout(x * 2 - 1, args)).latents.float()
            zt = vae.encode(layout(y * 2 - 1, args)).latents.float()
        # conditioning: one instruction per group; the encoder sees the frame itself or (half the
        # time) other frames, so a conditioning made from an earlier frame still works (on-change policy)
        enc_size = 256 if rng.random() < 0.7 else 512
        enc = encoders[enc_size]
        embeds, masks, start = [], [], 0
        for s, c in zip(chosen, per):
            phrase = rng.choice(STYLES[s].phrasings)
            tok = tokens[enc_size].get(phrase) or tokens[enc_size].setdefault(phrase, enc.tokenize(phrase))
            frames = x[start : start + c]
            if rng.random() < 0.5:
                frames = x[torch.randint(n, (c,), generator=gen, device=device)]
            with autocast(args):
                e, m = encode(enc, tok, frames)
            embeds.append(e)
            masks.append(m)
            start += c
        embeds, mask = torch.cat(embeds), torch.cat(masks)
        # The engine's own one-step edit at a strength drawn from --strengths (TRAIN_STRENGTHS, low,
        # around the demo default): start from the frame's latent mixed with noise (its
        # `start_latents`), one Euler step to sigma 0 with the engine's schedule, and compare that
        # result with the styled frame. The less noise, the less detail the step has to guess.
        noise = torch.randn(zt.shape, generator=gen, device=device)
        k = torch.randint(len(args.strengths), (n,), generator=gen, device=device)
        sigma = sched_sigma[k].view(n, 1, 1, 1)
        xt = (1 - sigma) * src + sigma * noise
        w = xt.shape[-1]
        with autocast(args):
            v = unet(layout(torch.cat([xt, src], dim=3), args), timestep=sched_t[k], encoder_hidden_states=embeds,
                     encoder_attention_mask=mask, return_dict=False)[0][..., :w]
        x0 = xt - sigma * args.velocity_scale * v.float()
        loss_flow = F.mse_loss(x0, zt) / (demo_model.LATENT_RMS or 1.0) ** 2
        target = y * 2 - 1
        with autocast(args):
            out = vae.decode(layout(x0, args)).sample
            rec = vae.decode(layout(zt, args)).sample
        loss_pix = image_loss(out, target, args.grad_weight)
        loss_rec = F.l1_loss(rec.float(), target)
        loss = loss_pix + 0.5 * loss_flow + 0.5 * loss_rec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            sample_err = (out.float() - target).abs().mean(dim=(1, 2, 3)) / 2  # MAE in [0, 1] units
            update_style_errors(style_errors, chosen, torch.stack([c.mean() for c in sample_err.split(per)]).tolist())
        for k, val in (("loss", loss), ("pix", loss_pix), ("flow", loss_flow), ("rec", loss_rec)):
            val = val.item()
            losses[k] = 0.9 * losses.get(k, val) + 0.1 * val
        if step % args.log_every == 0:
            print(f"[main] step {step} t={clock.elapsed():.0f}s " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                  flush=True)
    if stepper.paused:
        return {"step": stepper.step, "opt": opt.state_dict(), "losses": losses, "rng": rng.getstate(),
                "style_errors": style_errors}
    print("[main] running image error per style: " + ", ".join(
        f"{st.name} {'-' if e is None else f'{e:.3f}'}" for st, e in zip(STYLES, style_errors)), flush=True)
    print(f"[main] done: {stepper.step} steps, final (smoothed) " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
          flush=True)
    for m in (unet, te, vae):
        m.eval().requires_grad_(False)
    return stepper.step, losses, style_errors


@torch.no_grad()
def evaluate(folder: Path, device) -> dict:
    """Load the saved folder with the server's loader and stylize the held-out photos with each
    preset prompt through `StreamEngine` (256x256, 1 step, the demo strength, seed 0)."""
    from node_server.demo.evaluate import evaluate_folder

    return evaluate_folder(folder, device=device, images=[data.square(data.load_photo(n), 256) for n in data.HELD_OUT])


def default_sigma(bundle, strength: float) -> float:
    """The noise level of the engine's one step at `strength` for a FRAME_SIZE frame (its shifted
    schedule; `StreamEngine` uses the same)."""
    from node_server.engine.dreamlite.engine import flow_schedule

    latent = FRAME_SIZE // 2 ** (len(bundle.vae.config.encoder_block_out_channels) - 1)
    return flow_schedule(bundle.scheduler, 1, strength, (latent, latent)).sigmas[0]


@torch.no_grad()
def fold_velocity_scale(unet, scale: float) -> None:
    """Training multiplies the U-Net's output by `scale`; the last convolution is linear, so scaling
    its weight and bias gives the saved model the same output through the engine's plain call."""
    unet.conv_out.weight.mul_(scale)
    unet.conv_out.bias.mul_(scale)


STATE_KEYS = ("seed", "batch", "size", "vae_steps", "steps", "strengths", "latent_channels", "lr", "grad_weight",
              "latent_rms", "vae_fraction", "precision", "default_strength", "velocity_scale", "focus", "unet_channels")


def load_state(args, bundle, gen):
    """The saved state of a paused `--state` run (weights, optimizer, random streams, step), loaded
    into `bundle` and `gen`; None when there is none yet. Refuses a state saved with other settings."""
    if args.state is None or not Path(args.state).exists():
        return None
    state = torch.load(args.state, map_location=gen.device, weights_only=False)
    saved = state["settings"]
    mismatched = [k for k in STATE_KEYS if saved.get(k) != _setting(args, k)]
    if mismatched:
        raise SystemExit(f"{args.state} was saved by a run with other settings ({', '.join(mismatched)}); "
                         "use the same command, or another --state file")
    for name in ("unet", "vae", "text_encoder"):
        getattr(bundle, name).load_state_dict(state["weights"][name])
    gen.set_state(state["gen"].cpu())
    print(f"resuming from {args.state}: {state['phase']} phase at step {state['step']}", flush=True)
    return state


def save_state(args, bundle, gen, phase: str, state: dict) -> int:
    state = dict(state, phase=phase, gen=gen.get_state(), settings={k: _setting(args, k) for k in STATE_KEYS},
                 weights={n: getattr(bundle, n).state_dict() for n in ("unet", "vae", "text_encoder")})
    tmp = Path(str(args.state) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, args.state)
    total = args.vae_steps if phase == "vae" else args.steps
    print(f"paused: {phase} phase at step {state['step']} of {total}; state saved to {args.state}. "
          "Run the same command again to continue.", flush=True)
    return 0


def _setting(args, key):
    value = getattr(args, key)
    return list(value) if isinstance(value, tuple) else value


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.state is not None and (args.vae_steps is None or args.steps is None):
        raise SystemExit("--state needs fixed step counts (--vae-steps and --steps), so a resumed run "
                         "follows the same schedule")
    if args.pause_after is not None and args.state is None:
        raise SystemExit("--pause-after needs --state")
    if args.default_strength > max(args.strengths):
        raise SystemExit(f"--default-strength {args.default_strength} is above the trained strengths "
                         f"(at most {max(args.strengths)}); the saved folder's max_strength is their maximum")
    clock = Clock(args.minutes)
    dev_name = args.device
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev_name)
    gpu = device.type == "cuda"
    if args.latent_rms is not None:
        demo_model.LATENT_RMS = args.latent_rms  # read by build_demo and the losses below
    args.latent_rms = demo_model.LATENT_RMS
    args.batch = args.batch or (32 if gpu else 6)
    args.size = args.size or (FRAME_SIZE if gpu else 128)
    args.device_type = device.type
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and gpu)
    args.channels_last = True  # (also the layout the loader gives a model on the CPU)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    print(f"demo model training: device {device} ({torch.cuda.get_device_name(device) if gpu else 'cpu'}), "
          f"torch {torch.__version__}, budget {args.minutes} min, seed {args.seed}, batch {args.batch}, "
          f"crop {args.size}, {'bf16 autocast' if args.bf16 else 'fp32'}, latent rms {args.latent_rms}", flush=True)

    bank = data.photo_bank(device=device)
    bundle = build_demo(args.seed, device=device, latent_channels=args.latent_channels,
                        unet_channels=args.unet_channels)
    set_layout((bundle.unet, bundle.vae), args.channels_last)
    counts = bundle.parameter_counts()
    if args.velocity_scale is None:
        args.velocity_scale = round(1.0 / default_sigma(bundle, args.default_strength), 4)
    print(f"default strength {args.default_strength}, velocity scale {args.velocity_scale}", flush=True)
    print(f"photos: {len(bank)} training ({', '.join(data.TRAIN_PHOTOS)}); held out: {', '.join(data.HELD_OUT)}", flush=True)
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)

    reserve = max(25.0, 0.08 * clock.budget) if gpu else max(60.0, 0.1 * clock.budget)  # save + evaluation
    train_time = clock.left() - reserve
    vae_until = clock.elapsed() + args.vae_fraction * train_time
    pause_at = clock.budget - reserve
    resume = load_state(args, bundle, gen)
    calls = (resume or {}).get("calls", 0) + 1  # device calls this run has taken (resumable runs)
    earlier = list((resume or {}).get("seconds_by_call", []))  # the earlier calls' wall-clock seconds
    if resume is None or resume["phase"] == "vae":
        result = train_vae(bundle.vae, bank, args, gen, clock, vae_until, pause_at, resume=resume)
        if isinstance(result, dict):
            return save_state(args, bundle, gen, "vae",
                              dict(result, calls=calls, seconds_by_call=earlier + [clock.elapsed()]))
        vae_steps, vae_loss = result
        resume = None
    else:
        vae_steps, vae_loss = resume["vae_steps"], resume["vae_loss"]
    result = train_main(bundle, bank, args, gen, clock, clock.budget - reserve, device, pause_at, resume=resume)
    if isinstance(result, dict):
        return save_state(args, bundle, gen, "main", dict(result, vae_steps=vae_steps, vae_loss=vae_loss, calls=calls,
                                                                 seconds_by_call=earlier + [clock.elapsed()]))
    main_steps, losses, style_errors = result

    out = Path(args.out)
    from node_server.models.synthetic import save_bundle

    set_layout((bundle.unet, bundle.vae), False)
    bundle.to("cpu")
    fold_velocity_scale(bundle.unet, args.velocity_scale)
    save_bundle(bundle, out)
    # AutoencoderTiny writes a `block_out_channels` key that its own loader does not take (and warns about)
    vae_cfg = out / "vae" / "config.json"
    vae_cfg.write_text(json.dumps({k: v for k, v in json.loads(vae_cfg.read_text()).items()
                                   if k != "block_out_channels"}, indent=2, sort_keys=True) + "\n")
    meta = {
        "command": "python tools/train_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed, "device": str(device), "batch": args.batch, "crop": args.size,
        "precision": "bf16 autocast" if args.bf16 else "fp32", "grad_weight": args.grad_weight, "lr": args.lr,
        "latent_rms": args.latent_rms,
        "train_strengths": list(args.strengths), "default_strength": args.default_strength,
        "velocity_scale": args.velocity_scale, "latent_channels": args.latent_channels, "parameters": counts,
        "focus": args.focus, "unet_channels": list(args.unet_channels),
        "vae_steps": vae_steps, "main_steps": main_steps, "vae_final_loss": round(vae_loss, 5),
        "main_final_losses": {k: round(v, 5) for k, v in losses.items()},
        "main_style_errors": {st.name: None if e is None else round(e, 5) for st, e in zip(STYLES, style_errors)},
        # wall-clock seconds up to the save (the evaluation follows), summed over the calls
        "train_seconds": round(sum(earlier) + clock.elapsed(), 1),
        "train_seconds_by_call": [round(t, 1) for t in earlier + [clock.elapsed()]], "calls": calls,
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    # the model's own defaults for `serve` and `render`, and the top of the strengths it was trained
    # at: above it the one step overshoots into noise, so the engine stops there
    # (node_server/models/loader.py reads them)
    (out / "node_server.json").write_text(
        json.dumps({"defaults": {"strength": args.default_strength}, "size": FRAME_SIZE,
                    "max_strength": max(args.strengths)}, indent=2) + "\n")
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    print(f"saved {out}: {sum(sizes.values()) / 1e6:.2f} MB in {len(sizes)} files, largest "
          f"{max(sizes.values()) / 1e6:.2f} MB", flush=True)
    report = evaluate(out, device)
    meta["eval"] = report
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    if args.state is not None and Path(args.state).exists():
        Path(args.state).unlink()  # the run is complete; the same command would start it over
        print(f"removed the finished run's state {args.state}", flush=True)
    print(f"total {clock.elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
