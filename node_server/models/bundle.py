"""`DreamLiteBundle`: the loaded parts of a DreamLite-family model, passed to the engine as one object.

A plain dataclass rather than the diffusers pipeline: the engine drives the parts itself and must not
need `Qwen3VLProcessor` (it pulls in torchvision) at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..quiet import quiet_diffusers


class ModelBundle:
    """What every model family's bundle shares: moving its torch modules, and reading their device,
    dtype and size. Subclasses are dataclasses with `text_encoder`, `unet` and `vae` fields."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """The three torch modules by component name (what `.to()` moves)."""
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "ModelBundle":
        """Move and/or cast the torch modules in place; returns self so calls can be chained."""
        # diffusers warns about "modules to keep in float32" on every cast, even when that list is
        # empty (as for these models): keep its logger quiet for the cast.
        with quiet_diffusers():
            for module in self.modules().values():
                current = next(module.parameters()).dtype
                kwargs = {} if dtype is None or dtype == current else {"dtype": dtype}
                module.to(device=device, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per module (tied weights counted once), for reports and tests."""
        return {name: sum(p.numel() for p in m.parameters()) for name, m in self.modules().items()}


@dataclass
class DreamLiteBundle(ModelBundle):
    """Text/vision encoder, tokenizer, image-processor settings, U-Net, tiny VAE and scheduler."""

    name: str
    text_encoder: Any  # transformers Qwen3VLForConditionalGeneration
    tokenizer: Any  # transformers Qwen2Tokenizer (fast)
    image_processor: dict  # patch_size, temporal_patch_size, merge_size, image_mean, image_std (+ size)
    unet: Any  # diffusers DreamLiteUNetModel
    vae: Any  # diffusers AutoencoderTiny
    scheduler: Any  # diffusers FlowMatchEulerDiscreteScheduler
    defaults: dict = field(default_factory=dict)  # the model's own parameter defaults (node_server.json)
    max_strength: float = 1.0  # the highest strength it was trained for (node_server.json); see the engine
    family: str = field(default="dreamlite", init=False)
