"""A plain eager ControlNet-LLLite, written the straightforward way (forward pre-hooks and Python
state), as the reference the in-tree formulation (`node_server/engine/lllite.py`) is tested against.

Each hooked module gets a pre-hook that adds `up(mid([emb, down(x)])) * multiplier` to its input;
`emb` is computed once per conditioning image by the module's own conditioning CNN.
"""

from __future__ import annotations

import torch
from torch import nn


def _seq(layers, tensors, prefix):
    seq = nn.Sequential(*layers)
    seq.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return seq


def _cond_layers(depth, cond_dim):
    half = cond_dim // 2
    layers = [nn.Conv2d(3, half, 4, 4), nn.ReLU()]
    if depth == 1:
        return layers + [nn.Conv2d(half, cond_dim, 2, 2)]
    if depth == 2:
        return layers + [nn.Conv2d(half, cond_dim, 4, 4)]
    return layers + [nn.Conv2d(half, half, 4, 4), nn.ReLU(), nn.Conv2d(half, cond_dim, 2, 2)]


class ReferenceLLLite:
    def __init__(self, unet, hooks, cond_image: torch.Tensor, multiplier: float = 1.0):
        """`cond_image`: [n,3,H,W] in [-1, 1], laid out like the U-Net's input."""
        self.handles = []
        for hook in hooks:
            t = hook.tensors
            in_dim, mlp_dim, cond_dim = hook.dims
            conv = hook.conv
            lin = (lambda a, b: nn.Conv2d(a, b, 1)) if conv else nn.Linear
            down = _seq([lin(in_dim, mlp_dim), nn.ReLU()], t, "down.")
            mid = _seq([lin(mlp_dim + cond_dim, mlp_dim), nn.ReLU()], t, "mid.")
            up = _seq([lin(mlp_dim, in_dim)], t, "up.")
            cond = _seq(_cond_layers(hook.depth, cond_dim), t, "conditioning1.")
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
