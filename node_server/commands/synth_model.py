"""`node-server synth-model DIR --size tiny|paper|sd-turbo-tiny|sd-turbo|sd-turbo-kl`: write a random-weight model folder.

The folder has the DreamLite-mobile diffusers layout (SD sizes: the StableDiffusionPipeline layout), so it loads through the same code as a real
model (`node-server serve --model DIR`): benchmarks at paper shapes without a download.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ModelLoadError


# models.synthetic.SYNTHETIC_SIZES + models.sd.SD_SYNTHETIC_SIZES, written out because importing
# node_server.models imports torch (about 1 s) and the CLI builds this parser for every command,
# `--help` included (tests/test_models.py checks that the lists agree).
SIZES = ("tiny", "paper", "sd-turbo-tiny", "sd-turbo", "sd-turbo-kl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="folder to write (created; must be empty unless --force)")
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny: a few million parameters for tests; paper: the published shapes (~2.6B); "
                        "sd-turbo-tiny: a tiny SD-class model (StableDiffusionPipeline layout); sd-turbo: "
                        "SD-Turbo's U-Net and CLIP with a TAESD-shaped tiny VAE (~1.2B); sd-turbo-kl: the same "
                        "with SD's AutoencoderKL")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (same seed, same weights)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32",
                        help="weight precision on disk (bfloat16 halves the paper model's ~10 GiB)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing files")


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    from ..models.sd import SD_SYNTHETIC_SIZES, write_sd_model_folder
    from ..models.synthetic import write_model_folder
    from ..progress import step

    target = Path(args.dir).expanduser()
    if target.exists() and not target.is_dir():
        raise ModelLoadError(f"{str(target)!r} exists and is not a folder; expected a new or empty folder")
    if target.is_dir() and any(target.iterdir()) and not args.force:
        raise ModelLoadError(
            f"{str(target)!r} is not empty; expected a new or empty folder (pass --force to write into it)"
        )
    step(f"building synthetic {args.size} model (seed {args.seed})...")
    import torch

    write = write_sd_model_folder if args.size in SD_SYNTHETIC_SIZES else write_model_folder
    bundle = write(target, args.size, seed=args.seed, dtype=getattr(torch, _DTYPES[args.dtype]))
    counts = bundle.parameter_counts()
    print(f"wrote {target.resolve()} ({args.size}, seed {args.seed}, {args.dtype}, "
          f"{_human(_disk_size(target))} on disk)")
    for name, n in counts.items():
        print(f"  {name:<12} {n:>15,} parameters")
    print(f"  {'total':<12} {sum(counts.values()):>15,} parameters")
    print(f"load it with: --model {target}")
    return 0
