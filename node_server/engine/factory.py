"""`build_engine`: the one place that picks the engine class for a loaded model bundle.

The server and `render` call this, so every model family (DreamLite edit models, CLIP-conditioned
SD-class models) runs behind the same engine interface: `step`, `set_params`, `params`,
`active_prompt`, `encode_count`, `pop_encoder_error`, `warmup`, `close`.
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import ModelLoadError
from .base import with_model_defaults
from .params import Params


def build_engine(bundle: Any, params: Optional[Params] = None, *, size=512, device=None,
                 encoder_image_size: int = 512, **options: Any) -> Any:
    """Wrap `bundle` in the engine for its family (`bundle.family`)."""
    params = with_model_defaults(bundle, params)
    family = getattr(bundle, "family", "dreamlite")
    if family == "dreamlite":
        from .dreamlite.engine import StreamEngine

        return StreamEngine(bundle, params, size=size, device=device,
                            encoder_image_size=encoder_image_size, **options)
    if family == "sd":
        from .sd.engine import SDStreamEngine

        return SDStreamEngine(bundle, params, size=size, device=device, **options)
    raise ModelLoadError(f"no engine for model family {family!r}")
