"""Which SDPA kernel the U-Net's attentions get, and what each would cost (a development probe).

Records every `scaled_dot_product_attention` call of one eager U-Net step, then times each distinct
call shape with each fused backend forced (an error means the backend refuses those inputs).

    python -m bench.profile_attention [BATCH]

Besides each SDPA backend, it times the alternatives: the mask folded into a spare head slot with
no mask (`fold_*`, flash-eligible), FlexAttention (compiled) and a compiled math attention.
"""

from __future__ import annotations

import json
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.cuda_timing import cuda_ms
from node_server.engine.dreamlite.attention import fold_key_mask
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

    import sys

    n, c = int(sys.argv[1]) if len(sys.argv) > 1 else 1, bundle.vae.config.latent_channels
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
            for name, fn in alternatives(q, k, v, m, kw).items():
                try:
                    row[name] = ms(fn)
                except Exception as exc:
                    row[name] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            if m is not None:
                for label, mm in (("bool_mask", m > -1), ("contig_mask", m.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).contiguous())):
                    try:
                        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
                            row["efficient_" + label] = ms(lambda: real(q, k, v, attn_mask=mm, **kw))
                    except Exception as exc:
                        row["efficient_" + label] = f"refused {str(exc)[:80]}"
        print(json.dumps(row), flush=True)


def alternatives(q, k, v, m, kw) -> dict:
    """Other ways to compute the same attention, each a no-argument callable."""
    scale = kw.get("scale")
    out = {}
    d = round(scale ** -2)  # the real head size (the as-called q/k/v may be padded)
    fq, fk, fv, _ = fold_key_mask(q[..., :d], k[..., :d], v[..., :d], m, scale)  # the engine's own fold
    for name, backend in (("fold_flash", SDPBackend.FLASH_ATTENTION), ("fold_cudnn", SDPBackend.CUDNN_ATTENTION),
                          ("fold_efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def run(backend=backend):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(fq, fk, fv, scale=scale)
        out[name] = run
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)
    size = max(16, 1 << (d - 1).bit_length())
    xq, xk, xv = (F.pad(t[..., :d], (0, size - d)).contiguous() for t in (q, k, v))
    bias = None if m is None else m[:, 0, 0, :].float().contiguous()
    score_mod = None if bias is None else (lambda s, b, h, qi, ki: s + bias[b, ki])
    out["flex"] = lambda: flex(xq, xk, xv, score_mod=score_mod, scale=scale)
    mq, mk, mv = (t[..., :d].contiguous() for t in (q, k, v))
    mb = None if m is None else m[:, :1].float()

    @torch.compile(dynamic=False)
    def math(q, k, v, bias):
        s = (q @ k.transpose(-1, -2)).float() * scale
        if bias is not None:
            s = s + bias
        return (s.softmax(-1).to(v.dtype) @ v)

    out["math_compiled"] = lambda: math(mq, mk, mv, mb)
    return out


if __name__ == "__main__":
    main()
