"""Training images with no download: photographs bundled in scikit-image's wheel plus procedural
pictures drawn from the seed, augmented on the device (random crops, flips, colour jitter).

`HELD_OUT` photos never enter training; the tests use them (as 256x256 PNGs in `tests/data/`, so CI
does not need scikit-image).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# skimage.data images that ship inside the wheel (no pooch download) and that we train on.
TRAIN_PHOTOS = (
    "astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle",
    "colorwheel", "logo", "brick", "grass", "gravel", "moon", "page", "text", "clock", "cell", "coins",
)
HELD_OUT = ("coffee", "rocket", "camera")
PHOTO_SIZE = 512  # photos are kept on the device as square PHOTO_SIZE tensors; crops come from them


def load_photo(name: str) -> np.ndarray:
    """A bundled skimage photo as uint8 HxWx3 (grey repeated, alpha dropped, stereo: the left view)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def square(img: np.ndarray, size: int) -> torch.Tensor:
    """uint8 HxWx3 -> float [3,size,size] in [0,1]: centre crop to a square, antialiased resize."""
    t = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)
    h, w = t.shape[-2:]
    s = min(h, w)
    t = t[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)[0]


def photo_bank(names=TRAIN_PHOTOS, size: int = PHOTO_SIZE, device="cpu") -> torch.Tensor:
    """[P,3,size,size] on the device."""
    return torch.stack([square(load_photo(n), size) for n in names]).to(device)


def random_crops(bank: torch.Tensor, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """n crops (random photo, scale 25-100% of the side, position, horizontal flip) resized to size."""
    dev = bank.device
    idx = torch.randint(len(bank), (n,), generator=gen, device=dev)
    scale = 0.25 + 0.75 * torch.rand(n, generator=gen, device=dev)
    cx = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - scale)
    cy = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - scale)
    flip = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = scale * flip
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, (n, 3, size, size), align_corners=False)
    return F.grid_sample(bank[idx], grid, mode="bilinear", padding_mode="reflection", align_corners=False).clamp(0, 1)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, amount: float = 1.0) -> torch.Tensor:
    """Random brightness, contrast, saturation and a channel-mixing hue rotation per image."""
    n, dev = x.shape[0], x.device

    def r(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen, device=dev))

    g = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - g) * (1 + amount * (r(0, 0.6) - 0.3)) + g  # contrast
    x = x + amount * (r(0, 0.3) - 0.15)  # brightness
    lum = (x * torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = lum + (x - lum) * (1 + amount * (r(0, 0.8) - 0.4))  # saturation
    # hue: rotate the colour around the grey axis by a random angle
    angle = amount * (r(0, 1) - 0.5) * (math.pi / 3)
    cos, sin = torch.cos(angle), torch.sin(angle)
    k = torch.tensor([1.0, 1.0, 1.0], device=dev) / math.sqrt(3)
    c = x - lum
    cross = torch.stack([k[1] * c[:, 2] - k[2] * c[:, 1], k[2] * c[:, 0] - k[0] * c[:, 2],
                         k[0] * c[:, 1] - k[1] * c[:, 0]], 1)
    x = lum + c * cos + cross * sin
    return x.clamp(0, 1)


def _smooth_noise(n: int, size: int, cells: int, gen: torch.Generator, dev, channels: int = 3) -> torch.Tensor:
    coarse = torch.rand(n, channels, cells, cells, generator=gen, device=dev)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def procedural(n: int, size: int, gen: torch.Generator, device="cpu") -> torch.Tensor:
    """n synthetic pictures: gradients, value-noise textures, checkerboards/stripes and filled shapes,
    layered (each picture is a random mix), so edges, flat areas and smooth ramps all occur."""
    dev = torch.device(device)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, device=dev), torch.linspace(-1, 1, size, device=dev),
                            indexing="ij")

    def rnd(*shape):
        return torch.rand(*shape, generator=gen, device=dev)

    # background: a two-colour gradient in a random direction, plus smooth value noise
    a = rnd(n, 1, 1) * 2 * math.pi
    ramp = ((xx * torch.cos(a) + yy * torch.sin(a)) * 0.5 + 0.5).unsqueeze(1)  # [n,1,H,W]
    c0, c1 = rnd(n, 3, 1, 1), rnd(n, 3, 1, 1)
    img = c0 * (1 - ramp) + c1 * ramp
    cells = int(2 + rnd(1).item() * 14)
    img = img * 0.6 + 0.4 * _smooth_noise(n, size, cells, gen, dev)
    # periodic pattern (checkerboard or stripes) on some pictures
    freq = 2 + rnd(n, 1, 1, 1) * 14
    check = ((torch.sin(xx * freq * math.pi) * torch.sin(yy * freq * math.pi)) > 0).float()
    stripes = (torch.sin((xx + yy * rnd(n, 1, 1, 1)) * freq * math.pi) > 0).float()
    pattern = torch.where(rnd(n, 1, 1, 1) < 0.5, check, stripes)
    use = (rnd(n, 1, 1, 1) < 0.35).float()
    pc = rnd(n, 3, 1, 1)
    img = img * (1 - use * pattern) + use * pattern * pc
    # a few filled circles and rectangles
    for _ in range(4):
        cx, cy = rnd(n, 1, 1, 1) * 2 - 1, rnd(n, 1, 1, 1) * 2 - 1
        rad = 0.08 + rnd(n, 1, 1, 1) * 0.4
        circle = (((xx - cx) ** 2 + (yy - cy) ** 2) < rad**2).float()
        rect = (((xx - cx).abs() < rad) & ((yy - cy).abs() < rad * (0.3 + rnd(n, 1, 1, 1)))).float()
        shape = torch.where(rnd(n, 1, 1, 1) < 0.5, circle, rect) * (rnd(n, 1, 1, 1) < 0.7).float()
        col = rnd(n, 3, 1, 1)
        img = img * (1 - shape) + shape * col
    return img.clamp(0, 1)


def training_batch(bank: torch.Tensor, n: int, size: int, gen: torch.Generator,
                   photo_fraction: float = 0.75) -> torch.Tensor:
    """A batch of augmented photo crops and procedural pictures (shuffled), [n,3,size,size] in [0,1]."""
    n_photo = int(round(n * photo_fraction))
    parts = []
    if n_photo:
        parts.append(colour_jitter(random_crops(bank, n_photo, size, gen), gen))
    if n - n_photo:
        parts.append(procedural(n - n_photo, size, gen, bank.device))
    x = torch.cat(parts, 0)
    return x[torch.randperm(n, generator=gen, device=bank.device)]
