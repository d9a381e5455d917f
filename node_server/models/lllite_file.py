"""ControlNet-LLLite adapter files: read, resolve against a U-Net, write, and synthesise.

The format is kohya-ss's: one `.safetensors` file whose keys are `<module>.<tensor>`, with
`<module>` = `lllite_unet_` + the hooked U-Net module's path with `.` written `_`, and tensors
`conditioning1.{0,2[,4]}.*` (the conditioning CNN), `down.0.*`, `mid.0.*`, `up.0.*`. kohya's
files for SD-class U-Nets use the original LDM paths (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`);
they are mapped to the diffusers module they name. Files for the DreamLite U-Net (which has no LDM
original) use its diffusers paths (`down_blocks_2_attentions_0_transformer_blocks_0_attn1_to_q`).
The hook set is whatever the file holds; `--lllite-blocks` may narrow it.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from ..engine.lllite import BLOCK_GROUPS, HookWeights, block_group, conditioning_net, module_level, parse_blocks
from ..errors import ModelLoadError

PREFIX = "lllite_unet_"
_TENSOR_RE = re.compile(r"^(lllite_unet_[A-Za-z0-9_]+?)\.((?:conditioning1|down|mid|up)\.\d+\.(?:weight|bias))$")
# Projections ControlNet-LLLite hooks by default (kohya: attn1 q/k/v and attn2 q; attn2 k/v read
# the text embedding, whose shape the conditioning image cannot match).
DEFAULT_TARGETS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q")


def _ldm_aliases(unet: nn.Module) -> dict[str, str]:
    """LDM names (as kohya writes them) for the modules inside a diffusers U-Net's attentions."""
    per = getattr(unet.config, "layers_per_block", 1)
    if isinstance(per, (list, tuple)):  # per-block layer counts: no single LDM numbering
        return {}
    per = int(per)
    out = {}
    for path, _ in unet.named_modules():
        m = re.match(r"^(down_blocks|up_blocks|mid_block)\.?(\d*)\.?attentions\.(\d+)\.(.+)$", path)
        if not m:
            continue
        kind, block, layer, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4).replace(".", "_")
        if kind == "down_blocks":
            ldm = f"input_blocks_{1 + int(block) * (per + 1) + layer}_1_{rest}"
        elif kind == "up_blocks":
            ldm = f"output_blocks_{int(block) * (per + 1) + layer}_1_{rest}"
        else:
            ldm = f"middle_block_1_{rest}"
        out[PREFIX + ldm] = path
    return out


def module_names(unet: nn.Module) -> dict[str, str]:
    """File module name -> U-Net module path, for every Linear/Conv2d the U-Net has (both naming
    schemes for SD-class U-Nets)."""
    names = {PREFIX + path.replace(".", "_"): path for path, m in unet.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))}
    names.update({k: v for k, v in _ldm_aliases(unet).items() if v in names.values()})
    return names


def read_lllite(path: "str | os.PathLike", unet: nn.Module) -> list[HookWeights]:
    """The adapter modules in a file, each resolved to the U-Net module it hooks."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"LLLite file not found: {path}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({exc})") from exc
    grouped: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in flat.items():
        m = _TENSOR_RE.match(key)
        if not m:
            raise ModelLoadError(f"{path}: {key!r} is not a ControlNet-LLLite tensor "
                                 "(expected lllite_unet_<module>.(conditioning1|down|mid|up).<i>.(weight|bias))")
        grouped[m.group(1)][m.group(2)] = tensor
    if not grouped:
        raise ModelLoadError(f"{path}: holds no ControlNet-LLLite modules")
    names = module_names(unet)
    hooks = []
    for name in sorted(grouped):
        if name not in names:
            raise ModelLoadError(f"{path}: module {name} names no Linear or Conv2d of this U-Net "
                                 "(an adapter for another model?)")
        tensors = grouped[name]
        for need in ("conditioning1.0.weight", "conditioning1.2.weight", "down.0.weight", "mid.0.weight", "up.0.weight"):
            if need not in tensors:
                raise ModelLoadError(f"{path}: module {name} lacks {need}")
        hooks.append(HookWeights(name, names[name], tensors))
    return hooks


def write_lllite(path: "str | os.PathLike", hooks: list[HookWeights], metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{h.name}.{k}": v.detach().contiguous().cpu() for h in hooks for k, v in h.tensors.items()}
    save_file(flat, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def synth_hooks(unet: nn.Module, *, blocks: "str | None" = None, cond_dim: int = 32, mlp_dim: int = 64,
                seed: int = 0, ldm_names: bool = False, up_std: float = 0.02) -> list[HookWeights]:
    """A random adapter for `unet` on the default targets of the chosen blocks. kohya initialises
    `up` to zero (a no-op until trained); here it is small and random so tests and benchmarks see
    the adapter act."""
    groups = parse_blocks(blocks)
    levels = len(unet.config.block_out_channels)
    aliases = {v: k for k, v in _ldm_aliases(unet).items()} if ldm_names else {}
    gen = torch.Generator().manual_seed(seed)
    hooks = []
    for path, module in unet.named_modules():
        if not (isinstance(module, nn.Linear) and path.endswith(DEFAULT_TARGETS)):
            continue
        if block_group(path) not in groups:
            continue
        level = module_level(path, levels)
        if level > 2:
            continue  # kohya's conditioning CNN reaches depth 3 (stride 32) at most
        in_dim = module.in_features
        net = conditioning_net(level + 1, cond_dim)
        tensors = {f"conditioning1.{k}": v for k, v in net.state_dict().items()}
        tensors.update({
            "down.0.weight": torch.randn(mlp_dim, in_dim, generator=gen) / in_dim ** 0.5,
            "down.0.bias": torch.zeros(mlp_dim),
            "mid.0.weight": torch.randn(mlp_dim, mlp_dim + cond_dim, generator=gen) / (mlp_dim + cond_dim) ** 0.5,
            "mid.0.bias": torch.zeros(mlp_dim),
            "up.0.weight": torch.randn(in_dim, mlp_dim, generator=gen) * up_std,
            "up.0.bias": torch.zeros(in_dim),
        })
        for k in [k for k in tensors if k.startswith("conditioning1.")]:
            tensors[k] = torch.randn(tensors[k].shape, generator=gen) * (0.1 if k.endswith("bias") else
                                                                      1.0 / tensors[k][0].numel() ** 0.5)
        name = aliases.get(path, PREFIX + path.replace(".", "_"))
        hooks.append(HookWeights(name, path, tensors))
    if not hooks:
        raise ModelLoadError(f"this U-Net has no hookable projections in {', '.join(groups)} "
                             f"(blocks with attention are needed; groups: {', '.join(BLOCK_GROUPS)})")
    return hooks
