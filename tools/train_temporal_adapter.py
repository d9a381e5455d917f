#!/usr/bin/env python
"""Train the demo model's temporal ControlNet-LLLite adapter (docs/DEMO_MODEL.md, "Temporal adapter").

    PYTHONPATH=. python tools/train_temporal_adapter.py --steps 400 --state /tmp/temporal.state \\
        --out node_server/models/demo_temporal/adapter.safetensors        # the CPU run (resumable)
    PYTHONPATH=. python tools/train_temporal_adapter.py --device cuda --minutes 7.5 --out OUT.safetensors

The paper's recipe (dreamlite-stream `scripts/train_temporal_lllite.py`, read, not copied): the
demo model stays frozen; only the adapter learns, with the previous frame's target warped to the
current frame as its conditioning image, to produce the current frame's target. Here:

- **Data**: pairs of frames of random moving shots of the training photos (`node_server/demo/motion.py`:
  pan, zoom, rotation, shake, a non-rigid warp, an occluder, exposure drift and flicker, motion
  blur and sensor noise), `--max-gap` frames apart at most, so a conditioning refreshed a few
  frames ago (`--lllite-refresh N`) is in the training too. The true motion is known, so the
  warped previous target is exact. Held-out photos never enter.
- **Conditioning image** (per sample, as the engine meets it): the demo model's own output for
  the previous frame warped by the true motion (what the engine feeds back; from the same noise,
  strength and prompt conditioning as the current frame, half of the rows from the engine's own
  seed-0 noise, which is fixed in screen space); the previous target warped by the true motion or
  by the engine's own optical flow (`engine/lllite/flow.py`), sometimes softened and noised; and the
  cases where following it would be wrong: the current frame itself (the engine's first frame),
  another picture's target (a cut) and the previous frame in another style (a prompt change).
- **The engine's own regime**: the U-Net step, latent layout and decode are `engine/dreamlite/denoiser.py`'s
  (`start_latents`, `unet_step`), at the engine's schedule for a strength drawn from the demo's
  training strengths; the adapter is the engine's own in-tree `LLLite` (`engine/lllite/adapter.py`), its
  embeddings on the target half of the side-by-side latent, zero on the source half. By default
  it hooks the mid and up blocks (nearest the output; the backward pass stops at the mid block,
  about 2.5 times cheaper per step on the CPU than all blocks).
- **Loss**: as the demo model's training (`tools/train_demo_model.py`): L1 and L1 of image
  gradients of the decoded result against the target, plus half the MSE of the result's latent
  against the target's latent; plus the temporal term (`--consistency`): where the conditioning
  is the model's own previous output, the L1 between the result and it on the pixels visible in
  both frames. The paper distils toward targets blended with the previous output
  (`generate_temporal_pairs.py --blend_alpha`); this term asks for the same directly.
- **`--recipe blend`** (tried, not shipped; docs/DEMO_MODEL.md, "What is short"): the paper's data
  exactly, the model's own outputs blended along the true motion with the previous blended output
  (`--blend-alpha`), which is also the conditioning image; no temporal term and no latent term.
- **Saved** in dreamlite-lllite's format (`write_lllite`): the controller's state dict, float32,
  with its metadata (`kind` temporal_lllite, `cond_emb_dim`, `mlp_dim`, `step`, `model`).

Resumable like the demo model's training: with `--state FILE` a call stops when `--minutes` are
used up (or after `--pause-after` steps), saves everything to FILE, and the same command continues.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from train_demo_model import Clock, Stepper, image_loss, lr_factor  # noqa: E402

from node_server.demo import data, motion  # noqa: E402
from node_server.demo.styles import STYLES, TRAIN_STRENGTHS, apply_styles  # noqa: E402

# The conditioning image's source, drawn per sample (weights; see the module docstring).
COND_MODES = {
    "model": 0.40,  # the demo model's own output for the previous frame, true motion (what the engine feeds back)
    "target": 0.20,  # previous target, true motion
    "flow": 0.10,  # previous target, the engine's flow
    "self": 0.10,  # the current input frame (the engine's first frame)
    "cut": 0.10,  # another picture's target
    "restyle": 0.10,  # the previous frame in another style, true motion
}
# The paper's recipe (`--recipe blend`): the conditioning is the previous *blended* output, and the
# target is the blend itself, out_t = a * model_t + (1 - a) * warp(out_t-1) (dreamlite-stream's
# `output_blend.py`, which its `generate_temporal_pairs.py` runs over the model's own outputs).
BLEND_MODES = {
    "blend": 0.45,  # the previous blended output, true motion: follow it
    "blend_flow": 0.15,  # the same warped by the engine's flow (its errors included)
    "self": 0.15,  # the current input frame (the engine's first frame): draw the model's own output
    "cut": 0.10,  # another picture's output: ignore it
    "restyle": 0.15,  # the previous frame in another style (a prompt change): ignore it
}
RECIPES = ("classical", "blend")
STATE_KEYS = ("seed", "batch", "size", "steps", "lr", "mlp_dim", "cond_dim", "max_gap", "blocks", "grad_weight",
              "consistency", "recipe", "blend_alpha")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the adapter file to write (.safetensors)")
    p.add_argument("--model", default="demo", help="the frozen model (default: the shipped demo model)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: as many as --minutes allows, the schedule following the clock)")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="wall-clock budget of this call (with --steps and --state: pause when it is used up)")
    p.add_argument("--batch", type=int, default=None, help="frame pairs per step (default 32 on a GPU, 4 on the CPU)")
    p.add_argument("--size", type=int, default=256, help="frame size (the demo model's: 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (warm-up, then cosine to a tenth)")
    p.add_argument("--mlp-dim", type=int, default=64, help="the adapter's mlp_dim (upstream default 64)")
    p.add_argument("--cond-dim", type=int, default=32, help="the adapter's cond_emb_dim (upstream default 32)")
    p.add_argument("--blocks", default="mid,up",
                   help="U-Net parts hooked: all, or a comma list of down, mid, up (default mid,up: nearest the "
                        "output, and the backward pass stops at the mid block)")
    p.add_argument("--consistency", type=float, default=1.0,
                   help="weight of the temporal term: where the conditioning is the model's own previous output, "
                        "the L1 between the result and it on the pixels visible in both frames")
    p.add_argument("--recipe", choices=RECIPES, default="classical",
                   help="classical: targets are the styles' operations on each frame, plus the temporal term; "
                        "blend: the paper's, targets are the model's own outputs blended along the motion with the "
                        "previous blended output (--blend-alpha), which is also the conditioning image")
    p.add_argument("--blend-alpha", type=float, default=0.5,
                   help="with --recipe blend: the current output's share a in out_t = a * model_t + "
                        "(1 - a) * warp(out_t-1) (the paper's --blend_alpha; it used 0.85)")
    p.add_argument("--max-gap", type=int, default=4, help="largest frame gap between conditioning and frame")
    p.add_argument("--grad-weight", type=float, default=1.0, help="weight of the L1 of image gradients")
    p.add_argument("--output-gain", type=float, default=1.0, metavar="G",
                   help="multiply the adapter's output (its up projections) by G when saving: the same as "
                        "--lllite-strength G at run time, baked into the file (the shipped adapter: 5, chosen by "
                        "measurement, see docs/DEMO_MODEL.md)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--state", default=None, metavar="FILE", help="resumable run (see the module docstring)")
    p.add_argument("--pause-after", type=int, default=None, metavar="N", help="with --state: stop after N steps")
    p.add_argument("--log-every", type=int, default=10)
    return p.parse_args(argv)


def autocast(args):
    return torch.autocast(args.device_type, dtype=torch.bfloat16, enabled=args.bf16)


def fresh_adapter(unet, args):
    """The engine's `LLLite` on the U-Net with new weights, initialised as dreamlite-lllite does:
    PyTorch's default init, `up` zero (the adapter starts as a no-op: the model as shipped)."""
    from node_server.engine.lllite.adapter import LLLite
    from node_server.models.lllite_file import synth_hooks

    hooks = synth_hooks(unet, blocks=args.blocks, cond_dim=args.cond_dim, mlp_dim=args.mlp_dim, seed=args.seed)
    adapter = LLLite(unet, hooks, (args.size, args.size), edit_layout=True, max_rows=args.batch, blocks=args.blocks)
    torch.manual_seed(args.seed)
    for m in adapter.modules:
        for layer in list(m.conditioning1) + [m.down[0], m.mid[0], m.up[0]]:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        torch.nn.init.zeros_(m.up[0].weight)
        torch.nn.init.zeros_(m.up[0].bias)
    return adapter


def adapter_parameters(adapter) -> list[torch.Tensor]:
    return [p for m in adapter.modules for part in (m.conditioning1, m.down, m.mid, m.up) for p in part.parameters()]


def adapter_state(adapter) -> dict:
    return {m.path: {k: v.detach().clone() for k, v in m.state_dict().items() if not k.startswith("base.")}
            for m in adapter.modules}


def load_adapter_state(adapter, state: dict) -> None:
    for m in adapter.modules:
        m.load_state_dict(state[m.path], strict=False)


def set_embeddings(adapter, embeddings) -> None:
    """Give each hook its (differentiable) embedding in place of the engine's fixed buffer."""
    for m, e in zip(adapter.modules, embeddings):
        m.emb = e


def save_adapter(adapter, path, args, step: int) -> Path:
    from node_server.engine.lllite.adapter import HookWeights
    from node_server.models.lllite_file import write_lllite

    def tensor(key, value):
        value = value.detach().to("cpu", torch.float32)
        return value * args.output_gain if key.startswith("up.") else value

    hooks = [HookWeights(m.path.replace(".", "__"), m.path,
                         {k: tensor(k, v) for k, v in m.state_dict().items() if not k.startswith("base.")},
                         fmt="dreamlite") for m in adapter.modules]
    meta = {"kind": "temporal_lllite", "cond_emb_dim": args.cond_dim, "mlp_dim": args.mlp_dim, "step": step,
            "model": args.model, "trained_by": "tools/train_temporal_adapter.py", "output_gain": args.output_gain}
    return write_lllite(path, hooks, meta)


class Pairs:
    """Training pairs: the previous frame, the current one `gap` frames later, their targets,
    and the conditioning image for the current one (see COND_MODES)."""

    def __init__(self, bank, args, gen, flow, encode, base_output):
        self.bank, self.args, self.gen, self.flow = bank, args, gen, flow
        self.encode, self.base_output = encode, base_output
        modes = BLEND_MODES if args.recipe == "blend" else COND_MODES
        self.modes = list(modes)
        self.weights = torch.tensor([modes[m] for m in self.modes])

    def rand(self, *shape):
        return torch.rand(*shape, generator=self.gen, device=self.bank.device)

    def gap(self) -> int:
        """Frames between conditioning and frame: 1 for half the samples (the engine refreshes every
        batch by default), else 1..--max-gap."""
        gap = int(torch.randint(1, self.args.max_gap + 1, (1,), generator=self.gen, device=self.bank.device))
        return 1 if float(self.rand(1)) < 0.5 else gap

    def pick_modes(self, n: int) -> dict:
        """Each row's conditioning mode (the recipe's weights): {mode: row indices}."""
        mode = torch.multinomial(self.weights, n, replacement=True, generator=torch.Generator().manual_seed(
            int(torch.randint(2**31 - 1, (1,), generator=self.gen, device=self.bank.device))))
        return {m: (mode == i).nonzero().squeeze(1).to(self.bank.device) for i, m in enumerate(self.modes)}

    def other_styles(self, styles: torch.Tensor) -> torch.Tensor:
        """Another style for each row (a prompt change)."""
        shift = torch.randint(1, len(STYLES), (len(styles),), generator=self.gen, device=self.bank.device)
        return (styles + shift) % len(STYLES)

    def sample(self, styles: torch.Tensor, noise: torch.Tensor, k: int):
        """`noise`: each row's starting noise, also the previous frame's (the engine's noise is
        fixed in screen space); `k`: the strength's schedule, also the previous frame's. Returns
        the current frame, its target, the conditioning image, the prompt conditioning (encoded
        with the previous frame, as the engine encodes on a prompt change and keeps it), the
        anchor (the model's previous output warped to the current frame) and its weight (1 on the
        rows conditioned on it, where the point is visible in both frames)."""
        a, n, size, dev = self.args, styles.shape[0], self.args.size, self.bank.device
        gap = self.gap()
        shot = motion.random_shots(self.bank, n, self.gen, span=float(gap))
        prev = motion.render(shot, 0.0, size, generator=self.gen)
        cur = motion.render(shot, float(gap), size, generator=self.gen)
        y_prev, y_cur = apply_styles(prev, styles), apply_styles(cur, styles)
        embeds, mask = self.encode(styles, prev)
        grid, visible = motion.correspondence(shot, float(gap), 0.0, size)  # current pixel -> previous frame
        pick = self.pick_modes(n)
        cond = motion.warp(y_prev, grid)
        if len(pick["flow"]):
            rows = pick["flow"]
            cond[rows] = self.flow(cur[rows], prev[rows], y_prev[rows])
        anchor = torch.zeros_like(cond)
        weight = torch.zeros(n, 1, size, size, device=dev)
        if len(pick["model"]):
            rows = pick["model"]
            cond[rows] = anchor[rows] = motion.warp(self.base_output(prev[rows], embeds[rows], mask[rows], noise[rows], k),
                                                         grid[rows])
            weight[rows] = visible[rows].unsqueeze(1).float()
        if len(pick["self"]):
            cond[pick["self"]] = cur[pick["self"]]
        if len(pick["cut"]):
            rows = pick["cut"]
            cond[rows] = y_prev[torch.roll(torch.arange(n, device=dev), 1)][rows]
        if len(pick["restyle"]):
            rows = pick["restyle"]
            cond[rows] = motion.warp(apply_styles(prev[rows], self.other_styles(styles[rows])), grid[rows])
        # softened / noised on some of the warped targets (the engine feeds back its own, softer output)
        follow = torch.cat([pick["target"], pick["flow"]])
        if len(follow):
            soft = follow[self.rand(len(follow)) < 0.5]
            if len(soft):
                from node_server.demo.ops import gaussian_blur

                cond[soft] = gaussian_blur(cond[soft], 0.5 + float(self.rand(1)))
            noisy = follow[self.rand(len(follow)) < 0.3]
            if len(noisy):
                cond[noisy] = cond[noisy] + 0.03 * torch.randn(cond[noisy].shape, generator=self.gen, device=dev)
        return cur, y_cur, cond.clamp(0, 1), (embeds, mask), anchor, weight

    def sample_blend(self, styles: torch.Tensor, noise: torch.Tensor, k: int):
        """The paper's recipe on three frames `gap` apart (t0, t1, t2): the model's own outputs m_i,
        blended along the true motion, b0 = m0, b_i = a * m_i + (1 - a) * warp(b_i-1) where the point
        was visible, else m_i. The target for t2 is b2 on the rows that should follow their
        conditioning (warp(b1), by the true motion or the engine's flow) and m2 on the rows whose
        conditioning is wrong to follow (the frame itself, a cut, another style). Returns the
        current frame, its target, the conditioning image and the prompt conditioning."""
        a, n, size, dev = self.args, styles.shape[0], self.args.size, self.bank.device
        alpha = a.blend_alpha
        gap = self.gap()
        shot = motion.random_shots(self.bank, n, self.gen, span=2.0 * gap)
        frames = [motion.render(shot, float(i * gap), size, generator=self.gen) for i in range(3)]
        embeds, mask = self.encode(styles, frames[0])
        outs = [self.base_output(f, embeds, mask, noise, k) for f in frames]
        blended = outs[0]
        for i in (1, 2):
            grid, visible = motion.correspondence(shot, float(i * gap), float((i - 1) * gap), size)
            warped = motion.warp(blended, grid)
            prev_blended = blended
            vis = visible.unsqueeze(1)
            blended = torch.where(vis, alpha * outs[i] + (1 - alpha) * warped, outs[i])
        cur, target = frames[2], blended.clone()
        cond = warped.clone()
        pick = self.pick_modes(n)
        if len(pick["blend_flow"]):
            rows = pick["blend_flow"]
            cond[rows] = self.flow(cur[rows], frames[1][rows], prev_blended[rows])
        ignore = torch.cat([pick["self"], pick["cut"], pick["restyle"]])
        target[ignore] = outs[2][ignore]
        if len(pick["self"]):
            cond[pick["self"]] = cur[pick["self"]]
        if len(pick["cut"]):
            rows = pick["cut"]
            cond[rows] = prev_blended[torch.roll(torch.arange(n, device=dev), 1)][rows]
        if len(pick["restyle"]):
            rows = pick["restyle"]
            o_embeds, o_mask = self.encode(self.other_styles(styles[rows]), frames[0][rows])
            cond[rows] = motion.warp(self.base_output(frames[1][rows], o_embeds, o_mask, noise[rows], k), grid[rows])
        return cur, target.clamp(0, 1), cond.clamp(0, 1), (embeds, mask)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.pause_after is not None and args.state is None:
        raise SystemExit("--pause-after needs --state")
    if args.state is not None and args.steps is None:
        raise SystemExit("--state needs a fixed --steps, so a resumed run follows the same schedule")
    clock = Clock(args.minutes)
    dev_name = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    device = torch.device(dev_name)
    gpu = device.type == "cuda"
    args.batch = args.batch or (32 if gpu else 4)
    args.device_type = device.type
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and gpu)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    rng = random.Random(args.seed + 7)

    from node_server.engine.dreamlite.denoiser import Denoiser
    from node_server.engine.dreamlite.encoder import PromptEncoder
    from node_server.engine.dreamlite.engine import flow_schedule
    from node_server.engine.lllite.runner import _flow_for
    from node_server.models import load_model

    bundle = load_model(args.model, device=device, dtype=torch.float32, progress=False)
    for m in (bundle.unet, bundle.vae, bundle.text_encoder):
        m.eval().requires_grad_(False)
    adapter = fresh_adapter(bundle.unet, args)
    params = adapter_parameters(adapter)
    for p in params:
        p.requires_grad_(True)
    denoiser = Denoiser(bundle.unet, bundle.vae, (args.size, args.size), torch.float32)
    latent = args.size // 8
    schedules = [flow_schedule(bundle.scheduler, 1, s, (latent, latent)) for s in TRAIN_STRENGTHS]
    encoder = PromptEncoder(bundle, device, torch.float32, image_size=512, max_prompt_tokens=32)
    tokens = {}
    flow = _flow_for((args.size, args.size)).to(device)
    bank = data.photo_bank(device=device)
    n_params = sum(p.numel() for p in params)
    print(f"temporal adapter training: device {device}, torch {torch.__version__}, batch {args.batch}, "
          f"frames {args.size}, {len(adapter.modules)} hooks ({args.blocks}), {n_params:,} parameters, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, " + (f"{args.steps} steps" if args.steps else
                                                            f"{args.minutes} minutes"), flush=True)

    def conditioning(style_ids, frames):
        """The engine's encoder (frozen) for each row's style: one phrasing (the preset's or another)
        per style in the batch, seeing the frame the engine would have encoded (an earlier one)."""
        embeds = mask = None
        for s in style_ids.unique().tolist():
            rows = (style_ids == s).nonzero().squeeze(1)
            phrase = rng.choice(STYLES[s].phrasings)
            tok = tokens.get(phrase) or tokens.setdefault(phrase, encoder.tokenize(phrase))
            e, m = encoder.encode(tok, frames[rows])
            if embeds is None:
                embeds = e.new_zeros(len(style_ids), *e.shape[1:])
                mask = m.new_zeros(len(style_ids), *m.shape[1:])
            embeds[rows], mask[rows] = e, m
        return embeds, mask

    def one_step(x, embeds, mask, k, noise):
        """The engine's one-step edit of frames x at schedule k from `noise`: the result's latent."""
        sched = schedules[k]
        sigmas = torch.tensor(sched.sigmas, device=device)
        t = torch.tensor(sched.timesteps[0], device=device)
        with torch.no_grad():
            source = denoiser.encode_source(x)
        latents = denoiser.start_latents(source, noise, sigmas[0])
        with autocast(args):
            return denoiser.unet_step(latents, source, embeds, mask, denoiser.time_ids(x.shape[0], device), t,
                                      sigmas[1] - sigmas[0]).float()

    @torch.no_grad()
    def base_output(frames, embeds, mask, noise, k):
        """The demo model's own output (adapter off) for `frames`, in [0,1]: what the engine feeds back."""
        adapter.set_strength(0.0)
        try:
            set_embeddings(adapter, [torch.zeros(frames.shape[0], *m.emb.shape[1:], device=device) for m in adapter.modules])
            x0 = one_step(frames, embeds, mask, k, noise)
            with autocast(args):
                return (bundle.vae.decode(x0).sample.float().clamp(-1, 1) + 1) / 2
        finally:
            adapter.set_strength(1.0)

    pairs = Pairs(bank, args, gen, flow, conditioning, base_output)
    from diffusers.utils.torch_utils import randn_tensor

    engine_noise = randn_tensor((1, bundle.vae.config.latent_channels, latent, latent),
                                generator=torch.Generator("cpu").manual_seed(0), device=torch.device("cpu"),
                                dtype=torch.float32).to(device)  # as StreamEngine._make_noise(0) draws it
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    start, losses, history = 0, {}, []
    if args.state and Path(args.state).exists():
        state = torch.load(args.state, map_location=device, weights_only=False)
        bad = [k for k in STATE_KEYS if state["settings"].get(k) != getattr(args, k)]
        if bad:
            raise SystemExit(f"{args.state} was saved with other settings ({', '.join(bad)})")
        load_adapter_state(adapter, state["adapter"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"].cpu())  # a generator state is a CPU tensor on every device
        rng.setstate(state["rng"])
        start, losses, history = state["step"], state["losses"], state["history"]
        earlier = state["seconds"]
        print(f"resuming from {args.state} at step {start}", flush=True)
    else:
        earlier = 0.0
    reserve = 15.0  # saving
    stepper = Stepper(args, clock, args.steps, clock.budget - reserve, clock.budget - reserve, start=start)
    n_groups = min(4, args.batch)
    for step, progress in stepper:
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(progress, step, warmup=min(50, max(1, (args.steps or 500) // 10)))
        chosen = rng.sample(range(len(STYLES)), n_groups)
        per = [args.batch // n_groups + (1 if k < args.batch % n_groups else 0) for k in range(n_groups)]
        styles = torch.cat([torch.full((c,), s, device=device, dtype=torch.long) for s, c in zip(chosen, per)])
        # half the rows start from the engine's own noise (seed 0, fixed in screen space), half from fresh noise
        noise = torch.randn(args.batch, *engine_noise.shape[1:], generator=gen, device=device)
        noise[: args.batch // 2] = engine_noise
        k = rng.randrange(len(TRAIN_STRENGTHS))
        with torch.no_grad():
            if args.recipe == "blend":
                cur, target, cond, (embeds, mask) = pairs.sample_blend(styles, noise, k)
                anchor = weight = None
            else:
                cur, target, cond, (embeds, mask), anchor, weight = pairs.sample(styles, noise, k)
            with autocast(args):
                z_target = bundle.vae.encode(target * 2 - 1).latents.float()
        with autocast(args):
            set_embeddings(adapter, adapter.embeddings(cond * 2 - 1))
        x0 = one_step(cur, embeds, mask, k, noise)
        with autocast(args):
            out = bundle.vae.decode(x0).sample
        loss_pix = image_loss(out, target * 2 - 1, args.grad_weight)
        loss_lat = F.mse_loss(x0, z_target)
        # the temporal term: where the conditioning is the model's previous output, stay with it
        if anchor is None:  # the blend recipe: the target carries the temporal pull
            loss_tmp = torch.zeros((), device=device)
        else:
            loss_tmp = ((out.float() - (anchor * 2 - 1)).abs() * weight).sum() / (3 * weight.sum()).clamp_min(1.0)
        # the blend recipe leaves the latent term out: its target latent (the blend, encoded) differs from the
        # model's own even where nothing moved (the autoencoder's round trip), a pull that is not temporal
        loss = loss_pix + (0.0 if args.recipe == "blend" else 0.5) * loss_lat + args.consistency * loss_tmp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for key, val in (("loss", loss), ("pix", loss_pix), ("lat", loss_lat), ("tmp", loss_tmp)):
            v = float(val.detach())
            losses[key] = 0.95 * losses.get(key, v) + 0.05 * v
        if step % args.log_every == 0:
            history.append({"step": step, "t": round(earlier + clock.elapsed(), 1),
                            **{k: round(v, 5) for k, v in losses.items()}})
            print(f"step {step} t={earlier + clock.elapsed():.0f}s lr {opt.param_groups[0]['lr']:.2e} "
                  + " ".join(f"{k} {v:.4f}" for k, v in losses.items()), flush=True)
    seconds = earlier + clock.elapsed()
    if stepper.paused:
        state = {"settings": {k: getattr(args, k) for k in STATE_KEYS}, "adapter": adapter_state(adapter),
                 "opt": opt.state_dict(), "gen": gen.get_state(), "rng": rng.getstate(), "step": stepper.step,
                 "losses": losses, "history": history, "seconds": seconds}
        tmp = Path(str(args.state) + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, args.state)
        print(f"paused at step {stepper.step} of {args.steps}; state saved to {args.state}. "
              "Run the same command again to continue.", flush=True)
        return 0
    path = save_adapter(adapter, args.out, args, stepper.step)
    record = {"command": "python tools/train_temporal_adapter.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "device": str(device), "torch": torch.__version__, "steps": stepper.step, "batch": args.batch,
              "size": args.size, "lr": args.lr, "mlp_dim": args.mlp_dim, "cond_dim": args.cond_dim,
              "blocks": args.blocks, "hooks": len(adapter.modules), "parameters": n_params,
              "max_gap": args.max_gap, "consistency": args.consistency, "recipe": args.recipe,
              "blend_alpha": args.blend_alpha if args.recipe == "blend" else None, "output_gain": args.output_gain,
              "cond_modes": BLEND_MODES if args.recipe == "blend" else COND_MODES, "train_seconds": round(seconds, 1),
              "final_losses": {k: round(v, 5) for k, v in losses.items()}, "history": history}
    Path(path).with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {path} ({path.stat().st_size / 1e6:.2f} MB) after {stepper.step} steps, {seconds:.0f} s", flush=True)
    if args.state and Path(args.state).exists():
        Path(args.state).unlink()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
