"""ControlNet-LLLite folded into the U-Net's module tree, so one compiled graph holds U-Net and adapter.

ControlNet-LLLite (kohya-ss; ported to DreamLite by `dreamlite-lllite`) gives chosen projections of
a U-Net (self-attention q/k/v and cross-attention q) a small residual on their input:
`base(x + s * up(relu(mid(cat[emb, relu(down(x))]))))`, where `emb` is the conditioning image
embedded by a per-hook CNN (`conditioning1`) onto the hooked block's token grid, and `s` the
strength. The reference implementations keep `emb` as mutable Python state and patch forwards at
run time, which graph compilers cannot follow. Here each hooked projection is *replaced* by an
`LLLiteProjection` whose `emb` is a fixed-address buffer and whose strength is a 0-dim tensor
shared by all hooks, so its forward has no branches, no look-ups and no Python state:
`torch.compile(fullgraph=True)` and CUDA graph capture take the U-Net and the adapter as one graph,
and a conditioning refresh or strength change only rewrites buffer contents.

Both file formats share the CNN: strided convolutions with kernel = stride and no padding
(strides of 4 and 2), ReLU between them, channels 3 -> cond_dim/2 -> ... -> cond_dim. Its total
stride times the block's token grid is the conditioning image's size. On an edit U-Net (DreamLite:
target and source latents side by side) the embedding covers the target half and is zero on the
source half, as `dreamlite-lllite` lays it out.

`LLLite.refresh(image)` runs every hook's conditioning CNN and writes the embeddings; the engine
calls it only on the batches its schedule says (see `engine/lllite/runner.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from ...errors import ParamError

BLOCK_GROUPS = ("down", "mid", "up")
# `--lllite-blocks` also takes the paper runtime's spelling (`--lllite_blocks down_blocks`).
_BLOCK_ALIASES = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
FORMATS = ("kohya", "dreamlite")
# Both model families' autoencoders downsample by 8; a U-Net level halves again.
LATENT_FACTOR = 8


@dataclass
class HookWeights:
    """One adapter module as read from a file: which U-Net module it hooks and its tensors
    (`conditioning1.<i>.*`, `down.0.*`, `mid.0.*`, `up.0.*`, the names both formats use).

    `fmt` is `kohya` (kohya-ss's files for SD-class U-Nets: the CNN sees the frame) or
    `dreamlite` (`dreamlite-lllite`'s controller state dict for the DreamLite edit U-Net: the
    embedding covers the target half of the side-by-side latent)."""

    name: str  # the module's name in the file (lllite_unet_..., or the controller's key down_blocks__0__...)
    path: str  # the hooked U-Net module, e.g. down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q
    tensors: dict[str, torch.Tensor]
    fmt: str = "kohya"

    @property
    def conv_keys(self) -> list[str]:
        """The conditioning CNN's convolution weights in order (`conditioning1.0`, `.2`, `.4`, ...)."""
        keys = [k for k in self.tensors if k.startswith("conditioning1.") and k.endswith(".weight")]
        return sorted(keys, key=lambda k: int(k.split(".")[1]))

    @property
    def strides(self) -> tuple[int, ...]:
        """The CNN's strides (kernel = stride; a lone 3x3 kernel is stride 1, as upstream builds it)."""
        kernels = [int(self.tensors[k].shape[-1]) for k in self.conv_keys]
        return (1,) if kernels == [3] else tuple(kernels)

    @property
    def stride(self) -> int:
        """How far the conditioning CNN downsamples in total."""
        return math.prod(self.strides)

    @property
    def conv(self) -> bool:
        return self.tensors["down.0.weight"].ndim == 4

    @property
    def dims(self) -> tuple[int, int, int]:
        """(in_dim, mlp_dim, cond_dim)."""
        down = self.tensors["down.0.weight"]
        return int(down.shape[1]), int(down.shape[0]), int(self.tensors[self.conv_keys[-1]].shape[0])

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
    """`--lllite-blocks`: `all` (or None), or a comma list of down, mid, up (or down_blocks,
    mid_block, up_blocks, the paper runtime's names)."""
    if text is None:
        return BLOCK_GROUPS
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [_BLOCK_ALIASES.get(t, t) for t in items if t]
    if items == ["all"]:
        return BLOCK_GROUPS
    bad = [t for t in items if t not in BLOCK_GROUPS]
    if bad or not items:
        raise ParamError("lllite_blocks", f"expected all or a comma list of down, mid, up; got {text!r}")
    return tuple(g for g in BLOCK_GROUPS if g in items)


def factor_strides(total: int) -> tuple[int, ...]:
    """A total downsampling as `dreamlite-lllite` splits it: 4s while 4 divides what is left, then 2s
    (8 -> 4, 2; 16 -> 4, 4; 32 -> 4, 4, 2). kohya's depths 1..3 are the same three."""
    out, rest = [], int(total)
    while rest > 1:
        step = 4 if rest % 4 == 0 else 2
        out.append(step)
        rest //= step
    return tuple(out) or (1,)


def conditioning_net(strides: Sequence[int], cond_dim: int) -> nn.Sequential:
    """The per-hook CNN from a [-1, 1] image to the block's grid: one convolution per stride
    (kernel = stride, no padding), ReLU between; indices match the files (`conditioning1.0`, `.2`, ...)."""
    half = cond_dim // 2
    layers: list[nn.Module] = []
    if tuple(strides) == (1,):  # upstream's one-layer, no-downsampling case
        return nn.Sequential(nn.Conv2d(3, cond_dim, 3, 1, 1))
    for i, s in enumerate(strides):
        last = i == len(strides) - 1
        layers.append(nn.Conv2d(3 if i == 0 else half, cond_dim if last else half, s, s))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _proj(conv: bool, n_in: int, n_out: int) -> nn.Module:
    return nn.Conv2d(n_in, n_out, 1) if conv else nn.Linear(n_in, n_out)


@dataclass(frozen=True)
class HookPlan:
    """Where one hook sits: its U-Net resolution level and the token grid of the block over the
    target image (an edit U-Net's row is `width_factor` such grids wide: target, then source)."""

    hook: HookWeights
    level: int
    grid: tuple[int, int]
    width_factor: int


def module_level(path: str, levels: int) -> int:
    """The resolution level (0 = the latent's) that a down/mid/up module runs at."""
    parts = path.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return levels - 1
    return levels - 1 - int(parts[1])


def plan_hooks(unet: nn.Module, hooks: Sequence[HookWeights], frame_hw: tuple[int, int], *, edit_layout: bool,
               blocks: "str | Iterable[str] | None" = None) -> tuple[list[HookPlan], tuple[int, int]]:
    """Check `hooks` against the U-Net and the frame size and place them; returns the plans (only
    the chosen blocks) and the conditioning image's size (the same for every hook, or an error)."""
    chosen_blocks = parse_blocks(blocks)
    hooks = list(hooks)
    for hook in hooks:
        if hook.fmt not in FORMATS:
            raise ParamError("lllite", f"{hook.name}: unknown adapter format {hook.fmt!r}")
        if edit_layout and hook.fmt != "dreamlite":
            raise ParamError("lllite", "this is a kohya-format (lllite_unet_...) adapter, which is for SD-class "
                             "U-Nets; a DreamLite U-Net takes dreamlite-lllite's format (modules_dict....); "
                             "`node-server synth-lllite --model <model>` writes one")
        if not edit_layout and hook.fmt != "kohya":
            raise ParamError("lllite", "this is a dreamlite-lllite (modules_dict....) adapter, which is for the "
                             "DreamLite edit U-Net; an SD-class U-Net takes kohya's format (lllite_unet_...)")
    chosen = [h for h in hooks if h.group in chosen_blocks]
    if not chosen:
        raise ParamError("lllite_blocks", f"the adapter hooks none of the blocks {', '.join(chosen_blocks)} "
                         f"(it has {', '.join(sorted({h.group for h in hooks})) or 'no hooks'})")
    levels = len(unet.config.block_out_channels)
    seen: set[str] = set()
    plans, cond_hw, first = [], None, None
    for hook in chosen:
        if hook.path in seen:
            raise ParamError("lllite", f"{hook.path} is hooked twice")
        seen.add(hook.path)
        _check_host(unet, hook)
        level = module_level(hook.path, levels)
        scale = LATENT_FACTOR * 2 ** level
        if frame_hw[0] % scale or frame_hw[1] % scale:
            raise ParamError("lllite", f"the frame size {frame_hw[0]}x{frame_hw[1]} is not a multiple of {scale}, "
                             f"the scale of {hook.path}'s block (level {level}); its token grid would not be whole")
        grid = (frame_hw[0] // scale, frame_hw[1] // scale)
        need = (grid[0] * hook.stride, grid[1] * hook.stride)
        if hook.fmt == "kohya" and need != tuple(frame_hw):
            raise ParamError("lllite", f"{hook.name}: its conditioning CNN downsamples by {hook.stride}, but "
                             f"{hook.path} runs at 1/{scale} of the frame (its depth does not match the block)")
        if cond_hw is None:
            cond_hw, first = need, hook
        elif need != cond_hw:
            raise ParamError("lllite", f"the adapter's conditioning CNNs disagree on the conditioning image: "
                             f"{first.name} (stride {first.stride}) needs {cond_hw[0]}x{cond_hw[1]}, "
                             f"{hook.name} (stride {hook.stride}) needs {need[0]}x{need[1]}")
        plans.append(HookPlan(hook, level, grid, 2 if edit_layout else 1))
    return plans, cond_hw


def _check_host(unet: nn.Module, hook: HookWeights) -> None:
    """The hooked module exists, is a Linear (or a 1x1 conv for kohya's conv hooks) and has the
    adapter's input width."""
    try:
        base = unet.get_submodule(hook.path)
    except AttributeError:
        raise ParamError("lllite", f"{hook.name}: this U-Net has no module {hook.path} (an adapter for another model?)")
    in_dim = hook.dims[0]
    if isinstance(base, LLLiteProjection):
        raise ParamError("lllite", f"{hook.path} already has an adapter attached")
    if not isinstance(base, (nn.Linear, nn.Conv2d)) or hook.conv != isinstance(base, nn.Conv2d):
        raise ParamError("lllite", f"{hook.name}: hooks {hook.path}, a {type(base).__name__}, "
                         f"with a {'conv' if hook.conv else 'linear'} adapter")
    have = base.in_channels if isinstance(base, nn.Conv2d) else base.in_features
    if have != in_dim:
        raise ParamError("lllite", f"{hook.name}: built for {in_dim} input features, {hook.path} has {have} "
                         "(an adapter for another model?)")


class LLLiteProjection(nn.Module):
    """A hooked projection: `base(x + scale * up(relu(mid(cat[emb, relu(down(x))]))))`.

    `emb` (`[max_rows, tokens, cond_dim]`, or `[max_rows, cond_dim, h, w]` for a conv hook) is a
    buffer at a fixed address; a batch of n rows reads its first n rows."""

    def __init__(self, base: nn.Module, plan: HookPlan, max_rows: int, scale: torch.Tensor):
        super().__init__()
        hook = plan.hook
        in_dim, mlp_dim, cond_dim = hook.dims
        self.base = base
        self.cat_dim = 1 if hook.conv else -1
        self.down = nn.Sequential(_proj(hook.conv, in_dim, mlp_dim), nn.ReLU())
        self.mid = nn.Sequential(_proj(hook.conv, mlp_dim + cond_dim, mlp_dim), nn.ReLU())
        self.up = nn.Sequential(_proj(hook.conv, mlp_dim, in_dim))
        self.conditioning1 = conditioning_net(hook.strides, cond_dim)
        self.width_factor = plan.width_factor
        h, w = plan.grid[0], plan.grid[1] * plan.width_factor
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
        """[n,3,H,W] in [-1, 1] (the conditioning image) -> this hook's embedding in `emb`'s layout
        (no write). On an edit U-Net the source half's tokens get zeros."""
        e = self.conditioning1(image)
        if self.width_factor > 1:
            n, c, h, w = e.shape
            e = torch.cat([e, e.new_zeros(n, c, h, w * (self.width_factor - 1))], dim=3)
        if self.cat_dim == 1:
            return e
        return e.flatten(2).transpose(1, 2)  # [n, c, h, w] -> [n, h*w, c], the transformer's token order


class LLLite:
    """A ControlNet-LLLite adapter attached in-tree to one U-Net.

    `frame_hw` is the frame size; `edit_layout` says the U-Net's input is target and source side
    by side (DreamLite); `max_rows` is the most rows a batch may have. `cond_hw` is the size the
    conditioning image must have (stride x block grid; the frame size for files trained as
    `dreamlite-lllite` and kohya train them)."""

    def __init__(self, unet: nn.Module, hooks: Sequence[HookWeights], frame_hw: tuple[int, int], *,
                 edit_layout: bool, max_rows: int, blocks: "str | Iterable[str] | None" = None):
        self.unet = unet
        self.blocks = parse_blocks(blocks)
        plans, self.cond_hw = plan_hooks(unet, hooks, frame_hw, edit_layout=edit_layout, blocks=self.blocks)
        first = next(unet.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.frame_hw = tuple(frame_hw)
        self.max_rows = max_rows
        self.scale = torch.ones((), device=self.device, dtype=self.dtype)
        self.modules: list[LLLiteProjection] = []
        for plan in plans:
            parent_path, _, leaf = plan.hook.path.rpartition(".")
            parent = unet.get_submodule(parent_path)
            module = LLLiteProjection(getattr(parent, leaf), plan, max_rows, self.scale)
            missing, unexpected = module.load_state_dict(plan.hook.tensors, strict=False)
            missing = [k for k in missing if not k.startswith("base.")]
            if missing or unexpected:
                self.detach()
                raise ParamError("lllite", f"{plan.hook.name}: tensors do not fit (missing {missing}, "
                                 f"unexpected {unexpected})")
            module.to(self.device, self.dtype)
            setattr(parent, leaf, module)
            self.modules.append(module)

    # -- run-time controls (main stream only) ----------------------------------------------
    def set_strength(self, value: float) -> None:
        self.scale.fill_(float(value))

    def embeddings(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Every hook's embedding of `image` ([n,3,H,W] in [-1, 1], H x W == cond_hw)."""
        return [m.embed(image.to(self.dtype)) for m in self.modules]

    def write(self, embeddings: Sequence[torch.Tensor]) -> None:
        """Copy embeddings (from `embeddings`) into the fixed buffers the U-Net graph reads."""
        for m, e in zip(self.modules, embeddings):
            m.emb[: e.shape[0]].copy_(e)

    def refresh(self, image: torch.Tensor) -> None:
        """Embed `image` for every hook and write the buffers (the periodic conditioning refresh)."""
        if image.shape[0] > self.max_rows or tuple(image.shape[-2:]) != tuple(self.cond_hw):
            raise ValueError(f"conditioning image {tuple(image.shape)} does not fit "
                             f"{self.max_rows} rows of {self.cond_hw}")
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
