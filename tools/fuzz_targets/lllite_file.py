"""Fuzz target: ControlNet-LLLite adapter files (`node_server/models/lllite_file.py`).

`fuzz_one(data)` treats `data` as the contents of an `--lllite FILE` and runs what loading it
runs: the reader (`parse_lllite`: safetensors header, format by the keys, every shape against the
U-Net), then placing and building the hooks for a 64x64 frame (`LLLite`, detached again), against
a tiny DreamLite U-Net and a tiny SD U-Net (the meta device: layout only, no weights). A bad file
must end in a `NodeServerError`, the one-line message the user sees; any other exception escapes
and is a bug. `seed_inputs()` gives valid files of both formats to start from.
"""

from __future__ import annotations

import functools

from node_server.errors import NodeServerError


@functools.lru_cache(maxsize=1)
def _unets():
    """(U-Net, edit layout) pairs: the tiny DreamLite U-Net and the tiny SD one."""
    import diffusers
    import torch

    from node_server.models.sd import unet_config as sd_unet_config
    from node_server.models.synthetic import unet_config

    with torch.device("meta"):
        return ((diffusers.DreamLiteUNetModel(**unet_config("tiny")), True),
                (diffusers.UNet2DConditionModel(**sd_unet_config("sd-turbo-tiny")), False))


def fuzz_one(data: bytes) -> None:
    from node_server.engine.lllite.adapter import LLLite
    from node_server.models.lllite_file import parse_lllite

    for unet, edit in _unets():
        try:
            hooks = parse_lllite(data, unet, source="fuzz input")
            LLLite(unet, hooks, (64, 64), edit_layout=edit, max_rows=1).detach()
        except NodeServerError:
            pass


def seed_inputs() -> list[bytes]:
    """Valid adapter files: dreamlite-lllite's format for the DreamLite U-Net, kohya's for SD."""
    from safetensors.torch import save

    from node_server.models.lllite_file import DREAMLITE_PREFIX, synth_hooks

    out = []
    for unet, edit in _unets():
        hooks = synth_hooks(unet, blocks="all", cond_dim=4, mlp_dim=4)
        prefix = DREAMLITE_PREFIX if edit else ""
        flat = {f"{prefix}{h.name}.{k}": v.contiguous() for h in hooks for k, v in h.tensors.items()}
        out.append(save(flat, metadata={"cond_emb_dim": "4", "mlp_dim": "4"}))
    return out
