"""The demo model's styles: each is a classical image operation that the model learns to imitate
when the instruction asks for it.

A style is deterministic, so it doubles as the ground truth for the semantic tests: the model's
output for a held-out photo is compared with the operation applied to that photo. Operations work in
pixel units (1-pixel edges, blurs in pixels) on `[N, 3, H, W]` floats in [0, 1].

The shipped model was trained with a tenth style, `pixel-art` (8x8 block means in five levels per
channel). It is not offered: on photos the model drew a blurred copy with no pixel grid (see
`evaluate.block_grid_ratio` and docs/DEMO_MODEL.md, Styles), so it left this list, its preset and
the docs; a model trained from this list no longer learns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import ops


# The demo model edits SDEdit-style: its one step starts from the frame's own latent mixed with
# noise at this strength, so the picture is already in place and the small U-Net only has to
# restyle it locally (see tools/train_demo_model.py). What the noise hides, its single step can only
# guess at (a blur), and this U-Net does not learn to copy the detail from the clean source half,
# so the strength is low: 0.05 (a noise level of 0.08 against latents of about 0.65). Training
# draws its strength uniformly from TRAIN_STRENGTHS and scales the U-Net's output so that so small
# a step can still restyle the whole frame (`--velocity-scale`; docs/DEMO_MODEL.md, fourth version).
DEMO_STRENGTH = 0.05
TRAIN_STRENGTHS = (0.03, 0.04, 0.05, 0.05, 0.06, 0.08)


@dataclass(frozen=True)
class Style:
    name: str  # also the preset's file name
    description: str
    phrasings: tuple[str, ...]  # training instructions; the first is the preset prompt
    apply: Callable[[torch.Tensor], torch.Tensor]

    @property
    def prompt(self) -> str:
        """The preset's prompt: the first phrasing."""
        return self.phrasings[0]


def pencil_sketch(x: torch.Tensor) -> torch.Tensor:
    """Colour-dodge sketch: grey divided by its blur, so flat areas go white and edges dark."""
    g = ops.luminance(x)
    b = ops.gaussian_blur(g, 3.0)
    s = ((g + 0.02) / (b + 0.02)).clamp(0, 1) ** 4
    return s.expand(-1, 3, -1, -1).contiguous()


def sepia(x: torch.Tensor) -> torch.Tensor:
    """The classic sepia colour matrix."""
    m = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]],
                     device=x.device, dtype=x.dtype)
    return torch.einsum("oc,nchw->nohw", m, x).clamp(0, 1)


BLUEPRINT_PAPER = (0.06, 0.22, 0.55)


def blueprint(x: torch.Tensor) -> torch.Tensor:
    """White line drawing of the edges on deep blueprint blue."""
    e = (ops.sobel_magnitude(ops.gaussian_blur(ops.luminance(x), 1.0)) * 5).clamp(0, 1)
    paper = torch.tensor(BLUEPRINT_PAPER, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return paper + (1 - paper) * e


THERMAL_STOPS = [
    (0.0, (0.0, 0.0, 0.25)),
    (0.25, (0.25, 0.0, 0.65)),
    (0.45, (0.75, 0.0, 0.55)),
    (0.65, (1.0, 0.25, 0.05)),
    (0.85, (1.0, 0.75, 0.0)),
    (1.0, (1.0, 1.0, 0.8)),
]


def thermal(x: torch.Tensor) -> torch.Tensor:
    """A thermal-camera colour map (deep blue -> purple -> red -> yellow -> white) of the blurred luminance."""
    return ops.colormap(ops.gaussian_blur(ops.luminance(x), 1.5), THERMAL_STOPS)


def invert(x: torch.Tensor) -> torch.Tensor:
    """The colour negative."""
    return 1 - x


def watercolor(x: torch.Tensor) -> torch.Tensor:
    """Edge-preserving smoothing, paled towards the paper, with darkened edges where washes meet."""
    s = ops.bilateral(ops.bilateral(x, 3, 2.0, 0.12), 3, 2.0, 0.12)
    pale = 0.55 * ops.saturate(s, 0.8) + 0.45 * torch.tensor((1.0, 0.97, 0.9), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    e = ops.sobel_magnitude(ops.luminance(s))
    return (pale * (1 - 0.7 * (e * 5).clamp(0, 1))).clamp(0, 1)


NEON_PINK = (1.0, 0.15, 0.75)
NEON_CYAN = (0.05, 0.9, 1.0)


def neon(x: torch.Tensor) -> torch.Tensor:
    """Glowing edges on black: pink where the picture is bright, cyan where it is dark."""
    g = ops.gaussian_blur(ops.luminance(x), 1.0)
    e = (ops.sobel_magnitude(g) * 5).clamp(0, 1)
    glow = (e + 0.8 * ops.gaussian_blur(e, 2.5)).clamp(0, 1)
    pink = torch.tensor(NEON_PINK, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    cyan = torch.tensor(NEON_CYAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    colour = pink * g + cyan * (1 - g)
    return (glow * colour).clamp(0, 1)


NIGHT_GREEN = (0.25, 1.0, 0.3)


def night_vision(x: torch.Tensor) -> torch.Tensor:
    """Night-vision goggles: brightened, slightly blurred luminance in phosphor green."""
    g = ops.gaussian_blur(ops.luminance(x), 1.0).clamp(0, 1) ** 0.7
    green = torch.tensor(NIGHT_GREEN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (g * green).clamp(0, 1)


def emboss(x: torch.Tensor) -> torch.Tensor:
    """Grey relief: mid grey lit from the top left by the slope of the luminance."""
    g = ops.gaussian_blur(ops.luminance(x), 1.0)
    kernel = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 2.0]], device=x.device, dtype=x.dtype)
    relief = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernel.view(1, 1, 3, 3))
    return (0.5 + 1.5 * relief).clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


STYLES: tuple[Style, ...] = (
    Style("pencil-sketch", "Graphite pencil drawing: dark edges on white paper",
          ("turn it into a pencil sketch on white paper", "pencil sketch", "draw it with a pencil",
           "make it a graphite drawing", "a pencil drawing of this"), pencil_sketch),
    Style("sepia", "Old sepia photograph",
          ("make it an old sepia photograph", "sepia", "sepia tone", "give it a brown vintage sepia look",
           "turn it into an antique photo in sepia"), sepia),
    Style("blueprint", "Blueprint: white lines on deep blue",
          ("turn it into a blueprint drawing", "blueprint", "white lines on blue paper", "an architect's blueprint",
           "draw it as a technical blueprint"), blueprint),
    Style("thermal", "Thermal camera: blue cold, yellow hot",
          ("make it look like a thermal camera image", "thermal", "thermal camera", "infrared heat vision",
           "show it as a heat map, cold blue and hot yellow"), thermal),
    Style("invert", "Colour negative",
          ("invert the colours like a film negative", "invert", "negative", "invert the colors",
           "make it a photo negative"), invert),
    Style("watercolor", "Soft watercolour washes with darker edges",
          ("make it a soft watercolor painting", "watercolor", "watercolour", "paint it in watercolours",
           "a pale watercolor wash on paper"), watercolor),
    Style("neon", "Glowing neon outlines on black",
          ("turn it into glowing neon outlines on black", "neon", "neon edges", "neon lights on a dark background",
           "glowing pink and cyan outlines"), neon),
    Style("night-vision", "Night-vision goggles: bright phosphor green",
          ("show it through night vision goggles", "night vision", "green night vision", "military night vision camera",
           "make it glow green like night vision"), night_vision),
    Style("emboss", "Embossed grey relief",
          ("emboss it as a grey relief", "emboss", "embossed", "a metal relief embossing", "carve it as a stone relief"),
          emboss),
)

BY_NAME = {s.name: s for s in STYLES}


def style(name: str) -> Style:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown demo style {name!r}; expected one of: {', '.join(BY_NAME)}") from None


def apply_styles(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Style each image of the batch with the style of its index (grouped: one call per style)."""
    out = torch.empty_like(x)
    for k in index.unique().tolist():
        rows = (index == k).nonzero().squeeze(1)
        out[rows] = STYLES[k].apply(x[rows]).to(x.dtype)
    return out
