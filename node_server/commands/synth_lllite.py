"""`node-server synth-lllite OUT.safetensors --model M [--blocks down]`: write a random ControlNet-LLLite adapter.

The file has the format the model's U-Net takes (docs/LLLITE.md): for DreamLite, the
`dreamlite-lllite` controller's state dict (`modules_dict.<path with __>.*`, float32, its metadata
keys), over every target its `apply_lllite` would hook, so any tool of that ecosystem reads it; for
SD-class models, kohya-ss's names. Its `up` weights are random and non-zero (upstream zero-initialises
them), so `render` and `serve` show the adapter acting and the benchmark times it. Only the U-Net's
layout is read (on the meta device): a paper-size model costs no memory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ModelLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT.safetensors", help="file to write (replaced if it exists)")
    parser.add_argument("--model", default="demo",
                        help="the model it is for: demo (default), synthetic:tiny|paper|sd-turbo-tiny|sd-turbo|"
                        "sd-turbo-kl, or a model folder")
    parser.add_argument("--blocks", default=None,
                        help="U-Net parts to hook: all, or a comma list of down, mid, up (default: all for DreamLite, "
                        "as dreamlite-lllite trains; down,mid for SD, kohya's default). `--lllite-blocks` narrows "
                        "the hook set again at load")
    parser.add_argument("--cond-dim", type=int, default=32, help="conditioning embedding channels (default 32)")
    parser.add_argument("--mlp-dim", type=int, default=64, help="adapter rank (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same file)")


def unet_skeleton(spec: str):
    """The model's U-Net on the meta device (its layout and config, no weights)."""
    import torch

    from ..models.loader import DEMO_DIR, DEMO_SPEC, SYNTHETIC_PREFIX
    from ..models.sd import SD_SYNTHETIC_SIZES
    from ..models.sd import unet_config as sd_unet_config
    from ..models.synthetic import SYNTHETIC_SIZES
    from ..models.synthetic import unet_config as dreamlite_unet_config

    if spec.startswith(SYNTHETIC_PREFIX):
        name = spec[len(SYNTHETIC_PREFIX):]
        if name in SD_SYNTHETIC_SIZES:
            cls, config = "UNet2DConditionModel", sd_unet_config(name)
        elif name in SYNTHETIC_SIZES:
            cls, config = "DreamLiteUNetModel", dreamlite_unet_config(name)
        else:
            raise ModelLoadError(f"unknown synthetic model {spec!r}")
    else:
        folder = DEMO_DIR if spec == DEMO_SPEC else Path(spec).expanduser()
        file = folder / "unet" / "config.json"
        if not file.is_file():
            raise ModelLoadError(f"{str(folder)!r} has no unet/config.json; expected a model folder")
        config = json.loads(file.read_text())
        cls = config.get("_class_name", "")
        if cls not in ("UNet2DConditionModel", "DreamLiteUNetModel"):
            raise ModelLoadError(f"{file}: U-Net class {cls!r} is not supported (UNet2DConditionModel or "
                                 "DreamLiteUNetModel)")
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    import diffusers

    with torch.device("meta"):
        return getattr(diffusers, cls).from_config(config), cls


def run(args: argparse.Namespace) -> int:
    from ..engine.lllite.adapter import BLOCK_GROUPS, parse_blocks
    from ..models.lllite_file import default_format, synth_hooks, write_lllite
    from ..progress import step

    if args.cond_dim < 2 or args.cond_dim % 2 or args.mlp_dim < 1:
        raise ModelLoadError("--cond-dim must be an even number >= 2 and --mlp-dim at least 1")
    unet, cls = unet_skeleton(args.model)
    fmt = default_format(unet)
    blocks = args.blocks or ("all" if fmt == "dreamlite" else "down,mid")
    parse_blocks(blocks)  # a bad list fails before anything is built
    step(f"writing a random ControlNet-LLLite adapter ({'dreamlite-lllite' if fmt == 'dreamlite' else 'kohya'} "
         f"format) for {args.model} ({blocks})...")
    hooks = synth_hooks(unet, fmt=fmt, blocks=blocks, cond_dim=args.cond_dim, mlp_dim=args.mlp_dim, seed=args.seed)
    # the metadata keys dreamlite-lllite's training scripts write (strings), plus what made it
    metadata = {"kind": "random", "cond_emb_dim": args.cond_dim, "mlp_dim": args.mlp_dim, "step": 0,
                "model": args.model, "blocks": blocks, "seed": args.seed,
                "note": "random weights (node-server synth-lllite)"}
    path = write_lllite(args.out, hooks, metadata)
    params = sum(t.numel() for h in hooks for t in h.tensors.values())
    counts = [(g, sum(h.group == g for h in hooks)) for g in BLOCK_GROUPS]
    print(f"wrote {path.resolve()}: {len(hooks)} modules ({', '.join(f'{g} {n}' for g, n in counts if n)}), "
          f"{params:,} parameters")
    print(f"use it with: --model {args.model} --lllite {path}")
    return 0
