"""Plain eager ControlNet-LLLite references, written the straightforward way (Python state and
forward pre-hooks), that the in-tree formulation (`node_server/engine/lllite/adapter.py`) is tested against.
Nothing here imports the engine's LLLite code.

- `UpstreamController`: the module layout and forward semantics of `dreamlite-lllite`
  (github.com/otanl/dreamlite-lllite, `src/dreamlite_lllite/lllite.py` and `inject.py`),
  re-implemented from reading them: a controller whose `modules_dict` holds, per hooked Linear
  (key: its path with `.` written `__`), `conditioning1` (strided convolutions, kernel = stride,
  4s then 2s, ReLU between), `down` (Linear, ReLU), `mid` (Linear, ReLU) and `up` (Linear). The
  host Linear stays out of the state dict. `set_cond_image` embeds a square [-1, 1] image, pads
  the embedding with zeros along the width (the source half of DreamLite's side-by-side latent)
  and flattens it to tokens; each hooked Linear then computes
  `host(x + multiplier * up(mid(cat[emb, down(x)])))`. `save_like_upstream` writes its state
  dict as the package's training scripts do (float32, safetensors, string metadata).
- `ReferenceLLLite`: kohya-ss's layout for SD-class U-Nets, from already-read `HookWeights`.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file
from torch import nn

TARGET_SUFFIXES = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q")


# -- dreamlite-lllite's layout -----------------------------------------------------------------
def upstream_strides(in_hw: int, out_hw: int) -> list[int]:
    """How dreamlite-lllite splits `in_hw // out_hw` into convolution strides."""
    assert in_hw % out_hw == 0, (in_hw, out_hw)
    rest, strides = in_hw // out_hw, []
    while rest > 1:
        s = 4 if rest % 4 == 0 else 2
        strides.append(s)
        rest //= s
    return strides or [1]


def upstream_encoder(cond_emb_dim: int, in_hw: int, out_hw: int) -> nn.Sequential:
    strides = upstream_strides(in_hw, out_hw)
    layers, ch = [], 3
    for i, s in enumerate(strides):
        last = i == len(strides) - 1
        out = cond_emb_dim if last else cond_emb_dim // 2
        layers.append(nn.Conv2d(ch, out, kernel_size=s if s > 1 else 3, stride=s, padding=0 if s > 1 else 1))
        if not last:
            layers.append(nn.ReLU(inplace=True))
        ch = out
    return nn.Sequential(*layers)


class UpstreamModule(nn.Module):
    def __init__(self, host: nn.Linear, cond_emb_dim: int, mlp_dim: int, cond_image_size: int,
                 block_feature_size: int, width_concat_factor: int):
        super().__init__()
        self._host = [host]  # a list: the host is not a submodule, so not in the state dict
        self.width_concat_factor = width_concat_factor
        self.conditioning1 = upstream_encoder(cond_emb_dim, cond_image_size, block_feature_size)
        self.down = nn.Sequential(nn.Linear(host.in_features, mlp_dim), nn.ReLU(inplace=True))
        self.mid = nn.Sequential(nn.Linear(mlp_dim + cond_emb_dim, mlp_dim), nn.ReLU(inplace=True))
        self.up = nn.Sequential(nn.Linear(mlp_dim, host.in_features))
        nn.init.zeros_(self.up[0].weight)  # as upstream: an untrained adapter is a no-op
        nn.init.zeros_(self.up[0].bias)
        self.cond_emb = None
        self.multiplier = 1.0

    def set_cond_image(self, image: torch.Tensor) -> None:
        cx = self.conditioning1(image)
        n, c, h, w = cx.shape
        if self.width_concat_factor > 1:
            cx = torch.cat([cx, cx.new_zeros(n, c, h, w * (self.width_concat_factor - 1))], dim=3)
        n, c, h, w = cx.shape
        self.cond_emb = cx.view(n, c, h * w).permute(0, 2, 1).contiguous()

    def pre_hook(self, module, args):
        x = args[0]
        cx = self.cond_emb
        # Upstream passes the host through when the token count differs; here that would hide a
        # layout bug, so it is an error instead.
        assert x.dim() == 3 and cx.shape[1] == x.shape[1], (tuple(x.shape), tuple(cx.shape))
        cx = cx.to(x.dtype)
        if x.shape[0] == 2 * cx.shape[0]:
            cx = cx.repeat(2, 1, 1)
        delta = self.up(self.mid(torch.cat([cx, self.down(x)], dim=2))) * self.multiplier
        return (x + delta,) + tuple(args[1:])


def upstream_feature_sizes(unet, sample_size: int) -> dict[str, int]:
    """Each transformer container's square grid, derived from the config as upstream does: every
    down block but the last halves, the mid block runs at the smallest, up blocks mirror."""
    cfg = unet.config
    n_down, n_up = len(cfg.down_block_types), len(cfg.up_block_types)
    down = [sample_size // 2 ** i for i in range(n_down)]
    mid = down[-1]
    up = [mid * 2 ** i for i in range(n_up)]
    sizes = {}
    for name, m in unet.named_modules():
        if not type(m).__name__.endswith("Transformer2DModel"):
            continue
        head = name.split(".")
        sizes[name] = down[int(head[1])] if head[0] == "down_blocks" else up[int(head[1])] \
            if head[0] == "up_blocks" else mid
    return sizes


class UpstreamController(nn.Module):
    """dreamlite-lllite's `LLLiteController`, attached to `unet` (every target, as `apply_lllite`)."""

    def __init__(self, unet, *, cond_emb_dim: int = 32, mlp_dim: int = 64, cond_image_size: int = 512,
                 sample_size: int = 64, width_concat_factor: int = 2, block_prefixes=None):
        super().__init__()
        sizes = upstream_feature_sizes(unet, sample_size)
        containers = sorted(sizes, key=len, reverse=True)
        self.modules_dict = nn.ModuleDict()
        self.handles = []
        for name, m in unet.named_modules():
            if not (isinstance(m, nn.Linear) and name.endswith(TARGET_SUFFIXES)):
                continue
            container = next((c for c in containers if name.startswith(c + ".")), None)
            if container is None:
                continue
            if block_prefixes and not name.startswith(tuple(block_prefixes)):
                continue
            if cond_image_size % sizes[container]:
                raise ValueError(f"cond_image_size {cond_image_size} is not a multiple of {sizes[container]}")
            self.modules_dict[name.replace(".", "__")] = UpstreamModule(
                m, cond_emb_dim, mlp_dim, cond_image_size, sizes[container], width_concat_factor)

    def set_cond_image(self, image: torch.Tensor) -> None:
        for m in self.modules_dict.values():
            m.set_cond_image(image)

    def set_multiplier(self, value: float) -> None:
        for m in self.modules_dict.values():
            m.multiplier = value

    def attach(self) -> "UpstreamController":
        for m in self.modules_dict.values():
            self.handles.append(m._host[0].register_forward_pre_hook(m.pre_hook))
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def randomize(self, seed: int = 0, up_std: float = 0.05) -> "UpstreamController":
        """Non-zero weights everywhere (a trained adapter's stand-in), `up` included."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("up.0.weight"):
                    p.copy_(torch.randn(p.shape, generator=g) * up_std)
                elif name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        return self


def save_like_upstream(controller: UpstreamController, path, metadata: dict | None = None) -> None:
    """What dreamlite-lllite's and dreamlite-stream's training scripts do at a checkpoint."""
    sd = {k: v.detach().cpu().to(torch.float32) for k, v in controller.state_dict().items()}
    md = {"kind": "temporal_lllite", "cond_emb_dim": "32", "mlp_dim": "64", "step": "1440", "model": "DreamLite-mobile"}
    md.update(metadata or {})
    save_file(sd, str(path), {k: str(v) for k, v in md.items()})


# -- kohya-ss's layout (SD-class U-Nets) ----------------------------------------------------------
def _seq(layers, tensors, prefix):
    seq = nn.Sequential(*layers)
    seq.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return seq


def _kohya_cond_layers(depth, cond_dim):
    half = cond_dim // 2
    layers = [nn.Conv2d(3, half, 4, 4), nn.ReLU()]
    if depth == 1:
        return layers + [nn.Conv2d(half, cond_dim, 2, 2)]
    if depth == 2:
        return layers + [nn.Conv2d(half, cond_dim, 4, 4)]
    return layers + [nn.Conv2d(half, half, 4, 4), nn.ReLU(), nn.Conv2d(half, cond_dim, 2, 2)]


class ReferenceLLLite:
    def __init__(self, unet, hooks, cond_image: torch.Tensor, multiplier: float = 1.0):
        """kohya's forward for `hooks` (read from a kohya file); `cond_image`: [n,3,H,W] in [-1, 1]."""
        self.handles = []
        for hook in hooks:
            t = hook.tensors
            in_dim, mlp_dim = t["down.0.weight"].shape[1], t["down.0.weight"].shape[0]
            cond_dim = t["conditioning1.0.weight"].shape[0] * 2
            depth = 3 if "conditioning1.4.weight" in t else 2 if t["conditioning1.2.weight"].shape[-1] == 4 else 1
            conv = t["down.0.weight"].ndim == 4
            lin = (lambda a, b: nn.Conv2d(a, b, 1)) if conv else nn.Linear
            down = _seq([lin(in_dim, mlp_dim), nn.ReLU()], t, "down.")
            mid = _seq([lin(mlp_dim + cond_dim, mlp_dim), nn.ReLU()], t, "mid.")
            up = _seq([lin(mlp_dim, in_dim)], t, "up.")
            cond = _seq(_kohya_cond_layers(depth, cond_dim), t, "conditioning1.")
            emb = cond(cond_image)
            if not conv:
                n, c, h, w = emb.shape
                emb = emb.view(n, c, h * w).permute(0, 2, 1)

            def pre_hook(module, args, down=down, mid=mid, up=up, emb=emb, conv=conv):
                x = args[0]
                cx = torch.cat([emb, down(x)], dim=1 if conv else 2)
                return (x + up(mid(cx)) * multiplier,) + tuple(args[1:])

            self.handles.append(unet.get_submodule(hook.path).register_forward_pre_hook(pre_hook))

    def remove(self):
        for h in self.handles:
            h.remove()
