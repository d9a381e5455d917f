"""ControlNet-LLLite adapter files: read (the format is told by the keys), check against a U-Net,
write, and synthesise. See docs/LLLITE.md.

Two formats, one `.safetensors` file each:

- **dreamlite-lllite** (the paper author's package, for the DreamLite edit U-Net): its
  `LLLiteController`'s state dict. Keys `modules_dict.<module>.<tensor>`, `<module>` the hooked
  Linear's path with `.` written `__` (`down_blocks__2__attentions__0__transformer_blocks__0__attn1__to_q`),
  tensors `conditioning1.<i>.{weight,bias}` (the CNN), `down.0.*`, `mid.0.*`, `up.0.*`. Its training
  scripts add string metadata (`cond_emb_dim`, `mlp_dim`, `step`, `model`, `kind` or `cond_type`).
  Hooks: `attn1.to_q/k/v` and `attn2.to_q` of every transformer block.
- **kohya-ss** (SD-class U-Nets): keys `lllite_unet_<module>.<tensor>`, `<module>` the original
  LDM path (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`) or the diffusers path, with `.`
  written `_`; the same tensors.

Every tensor's shape is checked against the U-Net module it hooks before anything is built; a
bad file fails with one line that names the module and both shapes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..engine.lllite.adapter import (BLOCK_GROUPS, LATENT_FACTOR, HookWeights, block_group,
                                     conditioning_net, factor_strides, module_level, parse_blocks)
from ..errors import ModelLoadError

PREFIX = "lllite_unet_"  # kohya's module prefix
DREAMLITE_PREFIX = "modules_dict."  # the dreamlite-lllite controller's ModuleDict
_KOHYA_RE = re.compile(r"^(lllite_unet_[A-Za-z0-9_]+?)\.((?:conditioning1|down|mid|up)\.\d+\.(?:weight|bias))$")
_DREAMLITE_RE = re.compile(r"^modules_dict\.([A-Za-z0-9_]+)\.((?:conditioning1|down|mid|up)\.\d+\.(?:weight|bias))$")
# Projections ControlNet-LLLite hooks (kohya v1, and dreamlite-lllite after it: attn1 q/k/v and
# attn2 q; attn2 k/v read the text embedding, whose length the image grid cannot match).
DEFAULT_TARGETS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q")
MAX_CONV_LAYERS = 8  # a CNN deeper than this (stride 4^8) fits no frame
_METADATA_INTS = ("cond_emb_dim", "mlp_dim", "cond_image_size")
# Adapters shipped inside the package, by the name `--lllite` takes for them.
BUILTIN_ADAPTERS = {
    # the demo model's temporal adapter (tools/train_temporal_adapter.py, docs/DEMO_MODEL.md)
    "demo-temporal": Path(__file__).resolve().parent / "demo_temporal" / "adapter.safetensors",
}


def resolve_adapter(spec: "str | os.PathLike") -> Path:
    """A `--lllite` value as a file: a built-in adapter's name (`demo-temporal`) or a path."""
    text = os.fspath(spec)
    if text in BUILTIN_ADAPTERS:
        path = BUILTIN_ADAPTERS[text]
        if not path.is_file():
            raise ModelLoadError(f"the built-in adapter {text} is missing ({path}); reinstall the package")
        return path
    return Path(text).expanduser()


def default_format(unet: nn.Module) -> str:
    """The adapter format a U-Net takes: `dreamlite` for the DreamLite edit U-Net, else `kohya`."""
    return "dreamlite" if type(unet).__name__.startswith("DreamLite") else "kohya"


def lllite_targets(unet: nn.Module) -> dict[str, nn.Linear]:
    """Path -> Linear for every projection dreamlite-lllite hooks: attn1.to_q/k/v and attn2.to_q
    inside a transformer container (`Transformer2DModel`; diffusers names DreamLite's
    `DreamLiteTransformer2DModel`), in the U-Net's module order."""
    hosts = tuple(n + "." for n, m in unet.named_modules() if type(m).__name__.endswith("Transformer2DModel"))
    return {n: m for n, m in unet.named_modules()
            if isinstance(m, nn.Linear) and n.endswith(DEFAULT_TARGETS) and n.startswith(hosts)}


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
    """kohya file module name -> U-Net module path, for every Linear/Conv2d the U-Net has (both
    naming schemes for SD-class U-Nets)."""
    names = {PREFIX + path.replace(".", "_"): path for path, m in unet.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))}
    names.update({k: v for k, v in _ldm_aliases(unet).items() if v in names.values()})
    return names


# -- reading ---------------------------------------------------------------------------------
def read_lllite(path: "str | os.PathLike", unet: nn.Module) -> list[HookWeights]:
    """The adapter modules in a file (or a built-in adapter, by name), each resolved to the U-Net
    module it hooks and checked."""
    path = resolve_adapter(path)
    if not path.is_file():
        raise ModelLoadError(f"LLLite file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return parse_lllite(data, unet, source=str(path))


def parse_lllite(data: bytes, unet: nn.Module, *, source: str = "LLLite file") -> list[HookWeights]:
    """`read_lllite` on the file's bytes (the fuzz target's entry point)."""
    flat, metadata = _load(data, source)
    if not flat:
        raise ModelLoadError(f"{source}: holds no tensors (not a ControlNet-LLLite adapter)")
    kinds = {("dreamlite" if k.startswith(DREAMLITE_PREFIX) else "kohya" if k.startswith(PREFIX) else "?")
             for k in flat}
    if kinds == {"dreamlite"}:
        hooks = _dreamlite_hooks(flat, unet, source)
    elif kinds == {"kohya"}:
        hooks = _kohya_hooks(flat, unet, source)
    else:
        odd = [k for k in sorted(flat) if not k.startswith((DREAMLITE_PREFIX, PREFIX))]
        if odd:
            raise ModelLoadError(f"{source}: {odd[0]!r} is not a ControlNet-LLLite key (expected dreamlite-lllite's "
                                 "modules_dict.<module>.<tensor> or kohya's lllite_unet_<module>.<tensor>)")
        raise ModelLoadError(f"{source}: mixes dreamlite-lllite keys (modules_dict.) and kohya keys (lllite_unet_)")
    dims = _metadata_dims(metadata, source)
    for hook in hooks:
        check_hook(hook, unet.get_submodule(hook.path), dims, source)
    size = dims.get("cond_image_size")
    if size is not None:
        for hook in hooks:
            if size % hook.stride:
                raise ModelLoadError(
                    f"{source}: its cond_image_size {size} is not a multiple of {hook.name}'s block size: the "
                    f"conditioning CNN downsamples by {hook.stride}, which leaves {size / hook.stride:g} tokens a side")
    return hooks


def _load(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file held in memory."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        flat = load(bytes(data))
    except (SafetensorError, ValueError, TypeError, OverflowError, RuntimeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{source}: not a readable .safetensors file ({reason})") from exc
    # The library checked the header; its string metadata sits under "__metadata__".
    n = int.from_bytes(data[:8], "little")
    try:
        metadata = json.loads(bytes(data[8:8 + n])).get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"{source}: not a readable .safetensors file (bad header)") from exc
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{source}: its metadata is not a table of strings")
    return flat, metadata


def _metadata_dims(metadata: dict, source: str) -> dict[str, int]:
    """`cond_emb_dim`, `mlp_dim`, `cond_image_size` from the metadata, where present (strings,
    as dreamlite-lllite writes them)."""
    out = {}
    for key in _METADATA_INTS:
        if key not in metadata:
            continue
        text = str(metadata[key]).strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) == 0:
            raise ModelLoadError(f"{source}: its metadata {key} is {metadata[key]!r}, not a positive whole number")
        out[key] = int(text)
    return out


def _group(flat: dict[str, torch.Tensor], pattern: re.Pattern, source: str, expected: str) -> dict[str, dict]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key in sorted(flat):
        m = pattern.match(key)
        if not m:
            raise ModelLoadError(f"{source}: {key!r} is not a ControlNet-LLLite tensor (expected {expected})")
        grouped.setdefault(m.group(1), {})[m.group(2)] = flat[key]
    return grouped


def _dreamlite_hooks(flat, unet, source) -> list[HookWeights]:
    grouped = _group(flat, _DREAMLITE_RE, source,
                     "modules_dict.<module>.(conditioning1.<i>|down.0|mid.0|up.0).(weight|bias))")
    targets = lllite_targets(unet)
    order = {p: i for i, p in enumerate(targets)}
    hooks = []
    for name, tensors in grouped.items():
        path = name.replace("__", ".")
        if path not in targets:
            raise ModelLoadError(f"{source}: module {name} names no ControlNet-LLLite target of this U-Net "
                                 "(attn1.to_q/k/v or attn2.to_q of a transformer block; an adapter for another model?)")
        hooks.append(HookWeights(name, path, tensors, fmt="dreamlite"))
    return sorted(hooks, key=lambda h: order[h.path])


def _kohya_hooks(flat, unet, source) -> list[HookWeights]:
    grouped = _group(flat, _KOHYA_RE, source, "lllite_unet_<module>.(conditioning1|down|mid|up).<i>.(weight|bias))")
    names = module_names(unet)
    hooks = []
    for name in sorted(grouped):
        if name not in names:
            raise ModelLoadError(f"{source}: module {name} names no Linear or Conv2d of this U-Net "
                                 "(an adapter for another model?)")
        hooks.append(HookWeights(name, names[name], grouped[name], fmt="kohya"))
    return hooks


def check_hook(hook: HookWeights, host: nn.Module, dims: dict[str, int], source: str) -> None:
    """Every tensor of one adapter module has the shape the hooked module and the adapter's sizes
    call for: the conditioning CNN (3 -> cond/2 -> ... -> cond channels, kernel = stride of 2 or 4),
    down [mlp, in], mid [mlp, mlp + cond], up [in, mlp], and their biases."""
    t = hook.tensors
    where = f"{source}: module {hook.name}"
    for key, tensor in t.items():
        if not tensor.is_floating_point():
            raise ModelLoadError(f"{where}: {key} holds {tensor.dtype}, not floating-point numbers")
    for need in ("down.0.weight", "down.0.bias", "mid.0.weight", "mid.0.bias", "up.0.weight", "up.0.bias"):
        if need not in t:
            raise ModelLoadError(f"{where}: lacks {need}")
    conv_hook = isinstance(host, nn.Conv2d)
    n_in = host.in_channels if conv_hook else host.in_features
    down = t["down.0.weight"]
    if down.ndim != (4 if conv_hook else 2):
        raise ModelLoadError(f"{where}: down.0.weight has shape {_shape(down)}, but {hook.path} is a "
                             f"{type(host).__name__}, which needs a {'4' if conv_hook else '2'}-d weight")
    mlp = dims.get("mlp_dim", int(down.shape[0]))
    conv_keys = _conv_keys(hook, where)
    cond = dims.get("cond_emb_dim", int(t[conv_keys[-1]].shape[0]) if t[conv_keys[-1]].ndim else 0)
    tail = (1, 1) if conv_hook else ()
    want = {
        "down.0.weight": (mlp, n_in, *tail), "down.0.bias": (mlp,),
        "mid.0.weight": (mlp, mlp + cond, *tail), "mid.0.bias": (mlp,),
        "up.0.weight": (n_in, mlp, *tail), "up.0.bias": (n_in,),
    }
    strides = []
    for i, key in enumerate(conv_keys):
        w = t[key]
        k = int(w.shape[-1]) if w.ndim == 4 else 0
        lone = len(conv_keys) == 1
        if k not in (2, 4) and not (lone and k == 3):
            raise ModelLoadError(f"{where}: {key} has shape {_shape(w)}; the conditioning CNN's kernels are "
                                 "2x2 or 4x4 (kernel = stride)")
        strides.append(k)
        last = i == len(conv_keys) - 1
        want[key] = (cond if last else cond // 2, 3 if i == 0 else cond // 2, k, k)
        want[key.replace(".weight", ".bias")] = (want[key][0],)
    for key, shape in want.items():
        if key not in t:
            raise ModelLoadError(f"{where}: lacks {key}")
        if tuple(t[key].shape) != shape:
            raise ModelLoadError(f"{where}: {key} has shape {_shape(t[key])}, but {hook.path} of this U-Net "
                                 f"(in {n_in}, mlp {mlp}, cond {cond}) needs {shape} (an adapter for another U-Net?)")
    unknown = sorted(set(t) - set(want))
    if unknown:
        raise ModelLoadError(f"{where}: unexpected tensor {unknown[0]}")
    if cond < 2 or mlp < 1:
        raise ModelLoadError(f"{where}: cond_emb_dim {cond} and mlp_dim {mlp} are too small")


def _conv_keys(hook: HookWeights, where: str) -> list[str]:
    """The CNN's weight keys, checked to be `conditioning1.0`, `.2`, `.4`, ... (ReLUs in between)."""
    keys = hook.conv_keys
    indices = [int(k.split(".")[1]) for k in keys]
    if not keys:
        raise ModelLoadError(f"{where}: lacks conditioning1.0.weight (its conditioning CNN)")
    if len(keys) > MAX_CONV_LAYERS:
        raise ModelLoadError(f"{where}: its conditioning CNN has {len(keys)} layers (at most {MAX_CONV_LAYERS})")
    if indices != list(range(0, 2 * len(keys), 2)):
        raise ModelLoadError(f"{where}: its conditioning CNN's layers are {', '.join(map(str, indices))}; "
                             "expected 0, 2, 4, ... (convolutions with ReLUs between)")
    return keys


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


# -- writing ---------------------------------------------------------------------------------
def write_lllite(path: "str | os.PathLike", hooks: list[HookWeights], metadata: dict | None = None) -> Path:
    """Write hooks in their format: dreamlite-lllite's controller state dict (`modules_dict.` keys,
    float32, metadata as strings, as its training scripts save) or kohya's names."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {}
    for h in hooks:
        prefix = DREAMLITE_PREFIX if h.fmt == "dreamlite" else ""
        for k, v in h.tensors.items():
            flat[f"{prefix}{h.name}.{k}"] = v.detach().to("cpu", torch.float32).contiguous()
    save_file(flat, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return path


def synth_hooks(unet: nn.Module, *, fmt: str | None = None, blocks: "str | None" = None, cond_dim: int = 32,
                mlp_dim: int = 64, seed: int = 0, ldm_names: bool = True, up_std: float = 0.02) -> list[HookWeights]:
    """A random adapter for `unet` on the chosen blocks, in its format (`default_format`).

    dreamlite: every dreamlite-lllite target (as its `apply_lllite` enumerates them), each CNN
    downsampling by 8 * 2^level (its training scripts' `cond_image_size = size`, latent = size / 8).
    kohya: the default targets down to level 2 (its CNN reaches stride 32), LDM names where the
    layout has them. The reference code zero-initialises `up` (a no-op until trained); here it is
    small and random so tests and benchmarks see the adapter act."""
    fmt = fmt or default_format(unet)
    groups = parse_blocks(blocks)
    levels = len(unet.config.block_out_channels)
    if fmt == "dreamlite":
        targets = lllite_targets(unet)
    else:
        targets = {p: m for p, m in unet.named_modules() if isinstance(m, nn.Linear) and p.endswith(DEFAULT_TARGETS)}
    aliases = {v: k for k, v in _ldm_aliases(unet).items()} if fmt == "kohya" and ldm_names else {}
    gen = torch.Generator().manual_seed(seed)
    hooks = []
    for path, module in targets.items():
        if block_group(path) not in groups:
            continue
        level = module_level(path, levels)
        if fmt == "kohya" and level > 2:
            continue  # kohya's conditioning CNN reaches depth 3 (stride 32) at most
        in_dim = module.in_features
        net = conditioning_net(factor_strides(LATENT_FACTOR * 2 ** level), cond_dim)
        tensors = {f"conditioning1.{k}": torch.randn(v.shape, generator=gen) * (0.1 if k.endswith("bias") else
                                                                                 1.0 / v[0].numel() ** 0.5)
                   for k, v in net.state_dict().items()}
        tensors.update({
            "down.0.weight": torch.randn(mlp_dim, in_dim, generator=gen) / in_dim ** 0.5,
            "down.0.bias": torch.zeros(mlp_dim),
            "mid.0.weight": torch.randn(mlp_dim, mlp_dim + cond_dim, generator=gen) / (mlp_dim + cond_dim) ** 0.5,
            "mid.0.bias": torch.zeros(mlp_dim),
            "up.0.weight": torch.randn(in_dim, mlp_dim, generator=gen) * up_std,
            "up.0.bias": torch.zeros(in_dim),
        })
        if fmt == "dreamlite":
            name = path.replace(".", "__")
        else:
            name = aliases.get(path, PREFIX + path.replace(".", "_"))
        hooks.append(HookWeights(name, path, tensors, fmt=fmt))
    if not hooks:
        raise ModelLoadError(f"this U-Net has no hookable projections in {', '.join(groups)} "
                             f"(blocks with attention are needed; groups: {', '.join(BLOCK_GROUPS)})")
    return hooks


def probe_lllite(path: "str | os.PathLike") -> str:
    """The format of an adapter file from its header alone (`dreamlite` or `kohya`), so a file
    that is not one fails before a model loads; the full check needs the U-Net (`read_lllite`)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({reason})") from exc
    if keys and all(k.startswith(DREAMLITE_PREFIX) for k in keys):
        return "dreamlite"
    if keys and all(k.startswith(PREFIX) for k in keys):
        return "kohya"
    raise ModelLoadError(f"{path}: not a ControlNet-LLLite adapter (its keys are neither dreamlite-lllite's "
                         "modules_dict.<module>.<tensor> nor kohya's lllite_unet_<module>.<tensor>)")
