"""Which SDPA kernel the U-Net's attentions get, and what each would cost (a development probe).

Records every `scaled_dot_product_attention` call of one eager U-Net step, then times each distinct
call shape with each fused backend forced (an error means the backend refuses those inputs).

    python -m bench.profile_attention
"""

from __future__ import annotations

import json
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.cuda_timing import cuda_ms
from node_server.engine.dreamlite.denoiser import Denoiser
from node_server.models import load_model


def main() -> None:
    dtype = torch.bfloat16
    bundle = load_model("synthetic:paper", device="cuda", dtype=dtype, progress=False)
    den = Denoiser(bundle.unet, bundle.vae, (512, 512), dtype)
    calls = {}
    real = F.scaled_dot_product_attention

    def spy(*args, **kw):
        q, k, v = (list(args) + [kw.pop(name, None) for name in ("query", "key", "value")][len(args):])[:3]
        attn_mask = kw.pop("attn_mask", None)
        key = (tuple(q.shape), tuple(k.shape), None if attn_mask is None else
               (tuple(attn_mask.shape), str(attn_mask.dtype), tuple(attn_mask.stride())),
               tuple(q.stride()), json.dumps({a: str(b) for a, b in kw.items()}))
        if key not in calls:
            calls[key] = [0, (q, k, v, attn_mask, kw)]
        calls[key][0] += 1
        return real(q, k, v, attn_mask=attn_mask, **kw)

    n, c = 1, bundle.vae.config.latent_channels
    lat = torch.randn(n, c, 64, 64, device="cuda", dtype=dtype)
    emb = torch.randn(n, 448, bundle.unet.config.cross_attention_dim, device="cuda", dtype=dtype)
    mask = torch.ones(n, 448, device="cuda", dtype=torch.long)
    mask[:, 300:] = 0
    F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            den.unet_step(lat, lat, emb, mask, den.time_ids(n, "cuda"), torch.tensor(999.0, device="cuda"),
                          torch.tensor(-1.0, device="cuda"))
    finally:
        F.scaled_dot_product_attention = real

    def ms(fn) -> float:
        return round(cuda_ms(fn, repeats=20, warmup=3), 4)

    for key, (count, (q, k, v, m, kw)) in calls.items():
        row = {"q": key[0], "k": key[1], "mask": key[2], "count": count}
        with torch.no_grad():
            row["as_called"] = ms(lambda: real(q, k, v, attn_mask=m, **kw))
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                                  ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)):
                try:
                    with warnings.catch_warnings(record=True) as caught, sdpa_kernel([backend]):
                        warnings.simplefilter("always")
                        row[name] = ms(lambda: real(q, k, v, attn_mask=m, **kw))
                except Exception as exc:
                    row[name] = "refused: " + " ".join(str(w.message)[:160] for w in caught[:2]) + f" {str(exc)[:80]}"
            if m is not None:
                for label, mm in (("bool_mask", m > -1), ("contig_mask", m.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).contiguous())):
                    try:
                        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                            row["efficient_" + label] = ms(lambda: real(q, k, v, attn_mask=mm, **kw))
                    except Exception as exc:
                        row["efficient_" + label] = f"refused {str(exc)[:80]}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
