"""ControlNet-LLLite folded into the U-Net's module tree, so one compiled graph holds U-Net and adapter.

ControlNet-LLLite (kohya-ss) gives chosen projections of a U-Net (self-attention q/k/v and
cross-attention q) a small residual on their input: `base(x + s * up(mid([emb, down(x)])))`,
where `emb` is the conditioning image embedded by a per-hook CNN (`conditioning1`) at the hooked
layer's resolution, and `s` the strength. The reference implementation keeps `emb` as mutable
Python state and patches forwards at run time, which graph compilers cannot follow. Here each
hooked projection is *replaced* by an `LLLiteProjection` whose `emb` is a fixed-address buffer
and whose strength is a 0-dim tensor shared by all hooks, so its forward has no branches, no
look-ups and no Python state: `torch.compile(fullgraph=True)` and CUDA graph capture take the
U-Net and the adapter as one graph, and a conditioning refresh or strength change only rewrites
buffer contents (nothing re-compiles or re-captures).

`LLLite.refresh(image)` runs every hook's conditioning CNN and writes the embeddings; the engine
calls it only on the batches its schedule says (see `engine/temporal.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from ..errors import ParamError

BLOCK_GROUPS = ("down", "mid", "up")
# The conditioning CNN's total stride per depth: stride-4 stem, then 2, 4 or 4*2 (kohya's layout).
DEPTH_STRIDE = {1: 8, 2: 16, 3: 32}


@dataclass
class HookWeights:
    """One adapter module as read from a file: which U-Net module it hooks and its tensors
    (`conditioning1.*`, `down.0.*`, `mid.0.*`, `up.0.*`, kohya's names)."""

    name: str  # the module's name in the file (lllite_unet_...)
    path: str  # the hooked U-Net module, e.g. down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q
    tensors: dict[str, torch.Tensor]

    @property
    def depth(self) -> int:
        """1, 2 or 3: how far the conditioning CNN downsamples (8x, 16x, 32x)."""
        if "conditioning1.4.weight" in self.tensors:
            return 3
        return 2 if self.tensors["conditioning1.2.weight"].shape[-1] == 4 else 1

    @property
    def conv(self) -> bool:
        return self.tensors["down.0.weight"].ndim == 4

    @property
    def dims(self) -> tuple[int, int, int]:
        """(in_dim, mlp_dim, cond_emb_dim)."""
        down = self.tensors["down.0.weight"]
        return int(down.shape[1]), int(down.shape[0]), int(self.tensors["conditioning1.0.weight"].shape[0] * 2)

    @property
    def group(self) -> str:
        return block_group(self.path)


def block_group(path: str) -> str:
    """`down`, `mid` or `up`: the U-Net part a module path belongs to."""
    if path.startswith("down_blocks."):
        return "down"
    if path.startswith("mid_block."):
        return "mid"
    if path.startswith("up_blocks."):
        return "up"
    raise ParamError("lllite", f"{path} is outside the U-Net's down, mid and up blocks")


def parse_blocks(text: "str | Iterable[str] | None") -> tuple[str, ...]:
    """`--lllite-blocks`: `all` (or None), or a comma list of down, mid, up."""
    if text is None:
        return BLOCK_GROUPS
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t for t in items if t]
    if items == ["all"]:
        return BLOCK_GROUPS
    bad = [t for t in items if t not in BLOCK_GROUPS]
    if bad or not items:
        raise ParamError("lllite_blocks", f"expected all or a comma list of down, mid, up; got {text!r}")
    return tuple(g for g in BLOCK_GROUPS if g in items)


def conditioning_net(depth: int, cond_dim: int) -> nn.Sequential:
    """The per-hook CNN from a [-1, 1] image to the hooked layer's resolution (stride 8, 16 or 32);
    indices match the file format (`conditioning1.0`, `.2`, `.4`)."""
    half = cond_dim // 2
    layers: list[nn.Module] = [nn.Conv2d(3, half, 4, 4), nn.ReLU()]
    if depth == 1:
        layers += [nn.Conv2d(half, cond_dim, 2, 2)]
    elif depth == 2:
        layers += [nn.Conv2d(half, cond_dim, 4, 4)]
    elif depth == 3:
        layers += [nn.Conv2d(half, half, 4, 4), nn.ReLU(), nn.Conv2d(half, cond_dim, 2, 2)]
    else:
        raise ParamError("lllite", f"conditioning depth must be 1..3, got {depth}")
    return nn.Sequential(*layers)


def _proj(conv: bool, n_in: int, n_out: int) -> nn.Module:
    return nn.Conv2d(n_in, n_out, 1) if conv else nn.Linear(n_in, n_out)


class LLLiteProjection(nn.Module):
    """A hooked projection: `base(x + scale * up(relu(mid([emb, relu(down(x))]))))`.

    `emb` (`[max_rows, tokens, cond_dim]`, or `[max_rows, cond_dim, h, w]` for a conv hook) is a
    buffer at a fixed address; a batch of n rows reads its first n rows."""

    def __init__(self, base: nn.Module, hook: HookWeights, tokens_hw: tuple[int, int], max_rows: int,
                 scale: torch.Tensor):
        super().__init__()
        in_dim, mlp_dim, cond_dim = hook.dims
        self.base = base
        self.cat_dim = 1 if hook.conv else -1
        self.down = nn.Sequential(_proj(hook.conv, in_dim, mlp_dim), nn.ReLU())
        self.mid = nn.Sequential(_proj(hook.conv, mlp_dim + cond_dim, mlp_dim), nn.ReLU())
        self.up = nn.Sequential(_proj(hook.conv, mlp_dim, in_dim))
        self.conditioning1 = conditioning_net(hook.depth, cond_dim)
        h, w = tokens_hw
        shape = (max_rows, cond_dim, h, w) if hook.conv else (max_rows, h * w, cond_dim)
        self.register_buffer("emb", torch.zeros(shape), persistent=False)
        self.scale = scale  # shared 0-dim tensor (not a buffer: one value for every hook)
        self.name = hook.name
        self.path = hook.path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        h = self.mid(torch.cat([self.emb[: x.shape[0]], h], dim=self.cat_dim))
        return self.base(x + self.up(h) * self.scale)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] in [-1, 1] -> this hook's embedding, in `emb`'s layout (no write)."""
        e = self.conditioning1(image)
        if self.cat_dim == 1:
            return e
        return e.flatten(2).transpose(1, 2)  # [n, c, h, w] -> [n, h*w, c], the transformer's token order


def module_level(path: str, levels: int) -> int:
    """The resolution level (0 = the latent's) that a down/mid/up module runs at."""
    parts = path.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return levels - 1
    return levels - 1 - int(parts[1])


class LLLite:
    """A ControlNet-LLLite adapter attached in-tree to one U-Net.

    `image_hw` is the size of the image the U-Net's input stands for (an edit U-Net's input is
    target and source side by side: H x 2W); `max_rows` the most rows a batch may have."""

    def __init__(self, unet: nn.Module, hooks: Sequence[HookWeights], image_hw: tuple[int, int], *,
                 max_rows: int, blocks: "str | Iterable[str] | None" = None):
        self.unet = unet
        self.blocks = parse_blocks(blocks)
        chosen = [h for h in hooks if h.group in self.blocks]
        if not chosen:
            raise ParamError("lllite_blocks", f"the adapter hooks none of the blocks {', '.join(self.blocks)} "
                             f"(it has {', '.join(sorted({h.group for h in hooks})) or 'no hooks'})")
        first = next(unet.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.image_hw = image_hw
        self.max_rows = max_rows
        self.scale = torch.ones((), device=self.device, dtype=self.dtype)
        levels = len(unet.config.block_out_channels)
        self.modules: list[LLLiteProjection] = []
        for hook in chosen:
            parent_path, _, leaf = hook.path.rpartition(".")
            parent = unet.get_submodule(parent_path)
            base = getattr(parent, leaf)
            if isinstance(base, LLLiteProjection):
                raise ParamError("lllite", f"{hook.path} is hooked twice")
            self._check(hook, base, levels)
            stride = DEPTH_STRIDE[hook.depth]
            tokens_hw = (image_hw[0] // stride, image_hw[1] // stride)
            module = LLLiteProjection(base, hook, tokens_hw, max_rows, self.scale)
            missing, unexpected = module.load_state_dict(hook.tensors, strict=False)
            missing = [k for k in missing if not k.startswith("base.")]
            if missing or unexpected:
                raise ParamError("lllite", f"{hook.name}: tensors do not fit (missing {missing}, unexpected {unexpected})")
            module.to(self.device, self.dtype)
            setattr(parent, leaf, module)
            self.modules.append(module)

    def _check(self, hook: HookWeights, base: nn.Module, levels: int) -> None:
        in_dim = hook.dims[0]
        if hook.conv != isinstance(base, nn.Conv2d) or not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise ParamError("lllite", f"{hook.name}: hooks {hook.path}, a {type(base).__name__}, "
                             f"with a {'conv' if hook.conv else 'linear'} adapter")
        have = base.in_channels if isinstance(base, nn.Conv2d) else base.in_features
        if have != in_dim:
            raise ParamError("lllite", f"{hook.name}: built for {in_dim} input features, {hook.path} has {have} "
                             "(an adapter for another model?)")
        level = module_level(hook.path, levels)
        if hook.depth != level + 1:
            raise ParamError("lllite", f"{hook.name}: its conditioning depth {hook.depth} does not match "
                             f"{hook.path}, which runs at resolution level {level} (expected depth {level + 1})")
        stride = DEPTH_STRIDE[hook.depth]
        if self.image_hw[0] % stride or self.image_hw[1] % stride:
            raise ParamError("lllite", f"frame size {self.image_hw} is not a multiple of {stride}, "
                             f"which {hook.name} needs")

    # -- run-time controls (main stream only) ----------------------------------------------
    def set_strength(self, value: float) -> None:
        self.scale.fill_(float(value))

    def embeddings(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Every hook's embedding of `image` ([n,3,H,W] in [-1, 1], H x W == image_hw)."""
        return [m.embed(image.to(self.dtype)) for m in self.modules]

    def write(self, embeddings: Sequence[torch.Tensor]) -> None:
        """Copy embeddings (from `embeddings`) into the fixed buffers the U-Net graph reads."""
        for m, e in zip(self.modules, embeddings):
            m.emb[: e.shape[0]].copy_(e)

    def refresh(self, image: torch.Tensor) -> None:
        """Embed `image` for every hook and write the buffers (the periodic conditioning refresh)."""
        if image.shape[0] > self.max_rows or tuple(image.shape[-2:]) != tuple(self.image_hw):
            raise ValueError(f"conditioning image {tuple(image.shape)} does not fit "
                             f"{self.max_rows} rows of {self.image_hw}")
        self.write(self.embeddings(image))

    def detach(self) -> None:
        """Put the original projections back."""
        for m in self.modules:
            parent_path, _, leaf = m.path.rpartition(".")
            setattr(self.unet.get_submodule(parent_path), leaf, m.base)
        self.modules = []

    @property
    def paths(self) -> list[str]:
        return [m.path for m in self.modules]
