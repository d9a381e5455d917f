"""Where the U-Net step's time goes: compile variants timed as CUDA-graph replays, plus the top
kernels of one variant from the profiler. A development tool for `docs/BENCHMARKS.md`'s analysis.

    python -m bench.profile_unet --batches 1,8 --variants default,cudnn,cl,freeze,max --profile default

The U-Net runs as the engine runs it: its own view of the bundle's U-Net with the aligned-head
attention processors (engine/dreamlite/attention.py). Variants: `eager`, `default` (Inductor), `cudnn`
(+ cudnn.benchmark), `cl` (+ channels-last weights and inputs), `freeze` (Inductor's freezing:
weights folded as constants), `fold` (the engine's `attention="fold"`), `fp8` (its `fp8`),
`fold+fp8`, `max` (`max-autotune-no-cudagraphs`: slow to compile; the Inductor
cache, `TORCHINDUCTOR_CACHE_DIR`, keeps its choices for the next run). `--profile V` prints V's
kernels by time and kind (bench/kernel_profile.py) at each batch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.cuda_timing import cuda_ms
from bench.kernel_profile import format_profile, profile_kernels
from node_server.engine.dreamlite.attention import use_aligned_heads
from node_server.engine.fp8 import use_fp8
from node_server.engine.dreamlite.denoiser import Denoiser
from node_server.engine.module_view import module_view
from node_server.models import load_model


@torch.no_grad()  # inference, as the engine (and Inductor's freezing needs it)
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--variants", default="default,cudnn,cl")
    ap.add_argument("--profile", default="", help="variant whose top kernels to print")
    ap.add_argument("--cond-length", type=int, default=448)
    args = ap.parse_args()
    dtype = torch.bfloat16
    bundle = load_model("synthetic:paper", device="cuda", dtype=dtype, progress=False)
    unet, vae = module_view(bundle.unet), bundle.vae
    use_aligned_heads(unet)  # as the engine runs it
    den = Denoiser(unet, vae, (512, 512), dtype)
    dim = unet.config.cross_attention_dim
    flops = {}
    base_den = den
    reference = {}  # batch -> the first variant's step output (same inputs: the same seeds)
    for variant in args.variants.split(","):
        den = base_den
        if variant in ("fold", "fp8", "fold+fp8"):  # the engine's attention / fp8 options, on a new view
            view = module_view(bundle.unet)
            use_aligned_heads(view, fold_mask=variant.startswith("fold"))
            if variant.endswith("fp8"):
                use_fp8(view)
            den = Denoiser(view, vae, (512, 512), dtype)
        torch.backends.cudnn.benchmark = variant in ("cudnn", "cl", "max")
        if variant in ("cl", "max"):
            unet.to(memory_format=torch.channels_last)
        mode = "max-autotune-no-cudagraphs" if variant == "max" else None
        import torch._inductor.config as inductor_config

        inductor_config.freezing = variant == "freeze"
        torch._dynamo.reset()
        step = torch.compile(den.unet_step, dynamic=False, mode=mode) if variant != "eager" else den.unet_step
        for n in (int(b) for b in args.batches.split(",")):
            g = torch.Generator(device="cuda").manual_seed(n)
            c = vae.config.latent_channels
            lat = torch.randn(n, c, 64, 64, device="cuda", dtype=dtype, generator=g)
            src = torch.randn(n, c, 64, 64, device="cuda", dtype=dtype, generator=g)
            emb = torch.randn(n, args.cond_length, dim, device="cuda", dtype=dtype, generator=g)
            mask = torch.ones(n, args.cond_length, device="cuda", dtype=torch.long)
            mask[:, args.cond_length // 2:] = 0
            tid = den.time_ids(n, torch.device("cuda"))
            t = torch.tensor(1000.0, device="cuda")
            dt = torch.tensor(-1.0, device="cuda")
            t0 = time.perf_counter()
            fn = lambda: step(lat, src, emb, mask, tid, t, dt)  # noqa: E731
            ms = cuda_ms(fn, graph=True)
            row = dict(variant=variant, batch=n, unet_step_ms=round(ms, 3), per_frame_ms=round(ms / n, 3),
                       setup_s=round(time.perf_counter() - t0, 1))
            out = fn().float()
            if n in reference:  # how far this variant's step lands from the first variant's
                ref = reference[n]
                row["rel_err_vs_first"] = float((out - ref).norm() / ref.norm())
            else:
                reference[n] = out
            print(json.dumps(row), flush=True)
            if variant == args.profile:
                prof = profile_kernels(fn)
                print(format_profile(f"{variant}, batch {n}", prof), flush=True)
                print(json.dumps(dict(variant=variant, batch=n, profile=prof)), flush=True)
                if not flops:
                    from torch.utils.flop_counter import FlopCounterMode

                    with FlopCounterMode(display=False) as counter:
                        den.unet_step(lat, src, emb, mask, tid, t, dt)
                    flops[f"gflop_per_step_b{n}"] = counter.get_total_flops() / 1e9
                    print(json.dumps(flops), flush=True)


if __name__ == "__main__":
    main()
