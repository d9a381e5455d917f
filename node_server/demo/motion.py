"""Moving pictures with known motion, made from still photos: what the temporal adapter is trained
and measured on (tools/train_temporal_adapter.py, `python -m node_server.demo.temporal`).

A *shot* is a virtual camera looking at a square picture (the scene): it pans, zooms, rotates and
shakes, the picture may bend under a small smooth non-rigid warp, a disc cut from another picture
may move across it (an occluder), the exposure may drift or flicker, and the camera may add motion
blur and sensor noise. Every frame is rendered by sampling the scene, so the true motion between
any two frames is known exactly: `correspondence` gives, for each pixel of one frame, where the
same point is in another frame, and whether it is visible there (not covered by the occluder, not
outside the frame). Warping with it is exact, which the training's conditioning image (the
previous target warped to the current frame) and the measured warping error both use.

Coordinates are normalised, [-1, 1] over a frame or a scene, pixel centres as
`grid_sample(align_corners=False)` places them. Shots are batched: every field of `Shot` holds one
row per shot, so training renders a whole batch of different shots in one call.

A frame point p (in frame coordinates) sees the scene at

    s = centre(t) + scale(t) * R(angle(t)) @ (p + wobble(p, t))

with centre(t) = centre0 + velocity * t + shake(t), scale(t) = scale0 * exp(zoom * t) and
angle(t) = angle0 + spin * t. `wobble` is a sum of two travelling sine waves per axis, small
enough (amplitude x frequency < 0.5) that p + wobble(p) is invertible by fixed-point iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
import torch.nn.functional as F

WAVES = 2  # travelling sine waves per axis in the non-rigid warp
SHAKES = 3  # sinusoids per axis in the handheld shake
BLUR_TAPS = 5  # sub-frame renders averaged for motion blur
_INVERT_ITERS = 10  # fixed-point iterations inverting the non-rigid warp (contraction <= 0.5)


@dataclass
class Shot:
    """A batch of `n` virtual camera paths (each field: a tensor with `n` rows)."""

    scene: torch.Tensor  # [n,3,S,S] in [0,1]
    centre0: torch.Tensor  # [n,2] scene point at the frame centre at t = 0
    velocity: torch.Tensor  # [n,2] scene units per frame
    scale0: torch.Tensor  # [n] half the frame's extent in scene units (1: the whole scene)
    zoom: torch.Tensor  # [n] log-scale per frame (negative: zooming in)
    angle0: torch.Tensor  # [n] radians
    spin: torch.Tensor  # [n] radians per frame
    wobble_amp: torch.Tensor  # [n,2,WAVES] frame units
    wobble_freq: torch.Tensor  # [n,2,WAVES,2] radians per frame unit (x, y)
    wobble_speed: torch.Tensor  # [n,2,WAVES] radians per frame
    wobble_phase: torch.Tensor  # [n,2,WAVES]
    shake_amp: torch.Tensor  # [n,2,SHAKES] scene units
    shake_speed: torch.Tensor  # [n,2,SHAKES] radians per frame
    shake_phase: torch.Tensor  # [n,2,SHAKES]
    occluder: torch.Tensor  # [n,3,S2,S2] the occluder's texture (any picture)
    occ_radius: torch.Tensor  # [n] frame units (0: no occluder)
    occ_centre0: torch.Tensor  # [n,2] frame units at t = 0
    occ_velocity: torch.Tensor  # [n,2] frame units per frame
    occ_scale: torch.Tensor  # [n] texture units per frame unit
    gain_drift: torch.Tensor  # [n] log-exposure per frame
    gain_flicker: torch.Tensor  # [n] log-exposure amplitude of a fast flicker
    gain_speed: torch.Tensor  # [n] radians per frame of the flicker
    blur: torch.Tensor  # [n] shutter open time in frames (0: sharp)
    noise: torch.Tensor  # [n] sensor noise standard deviation (0..1 units)

    @property
    def n(self) -> int:
        return self.scene.shape[0]

    def rows(self, index) -> "Shot":
        """A sub-batch (index: a slice, list or tensor of rows)."""
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)})


def still(scene: torch.Tensor, occluder: Optional[torch.Tensor] = None, **overrides) -> Shot:
    """A shot of `scene` ([3,S,S] or [n,3,S,S]) that does not move, framing the whole scene; keyword
    arguments set any field (broadcast to the batch): still(photo, velocity=(0.01, 0), scale0=0.7)."""
    scene = scene if scene.ndim == 4 else scene.unsqueeze(0)
    n, dev = scene.shape[0], scene.device
    z = lambda *s: torch.zeros(n, *s, device=dev)  # noqa: E731
    shot = Shot(scene=scene, centre0=z(2), velocity=z(2), scale0=torch.ones(n, device=dev), zoom=z(),
                angle0=z(), spin=z(), wobble_amp=z(2, WAVES), wobble_freq=z(2, WAVES, 2), wobble_speed=z(2, WAVES),
                wobble_phase=z(2, WAVES), shake_amp=z(2, SHAKES), shake_speed=z(2, SHAKES),
                shake_phase=z(2, SHAKES), occluder=scene if occluder is None else _batch(occluder, n),
                occ_radius=z(), occ_centre0=z(2), occ_velocity=z(2), occ_scale=torch.ones(n, device=dev),
                gain_drift=z(), gain_flicker=z(), gain_speed=z(), blur=z(), noise=z())
    for key, value in overrides.items():
        ref = getattr(shot, key)
        value = torch.as_tensor(value, dtype=ref.dtype, device=dev)
        setattr(shot, key, value.expand_as(ref).clone() if value.ndim < ref.ndim or value.shape[0] != n else value)
    return shot


def _batch(img: torch.Tensor, n: int) -> torch.Tensor:
    img = img if img.ndim == 4 else img.unsqueeze(0)
    return img.expand(n, -1, -1, -1) if img.shape[0] == 1 else img


# -- geometry ------------------------------------------------------------------------------
def frame_grid(n: int, size: int, device) -> torch.Tensor:
    """[n,size,size,2] normalised (x, y) coordinates of the pixel centres."""
    c = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack((gx, gy), -1).unsqueeze(0).expand(n, -1, -1, -1)


def _t(shot: Shot, t) -> torch.Tensor:
    """Time as an [n] tensor."""
    return torch.as_tensor(t, dtype=torch.float32, device=shot.scene.device).expand(shot.n)


def wobble(shot: Shot, p: torch.Tensor, t) -> torch.Tensor:
    """The non-rigid displacement at frame points p ([n,...,2]) at time t, in frame units."""
    if not bool((shot.wobble_amp != 0).any()):
        return torch.zeros_like(p)
    t = _t(shot, t)
    n = shot.n
    flat = p.reshape(n, -1, 2)
    phase = torch.einsum("npc,nkc->npk", flat, shot.wobble_freq.reshape(n, 2 * WAVES, 2))
    phase = phase + (shot.wobble_speed.reshape(n, 1, -1) * t.view(-1, 1, 1) + shot.wobble_phase.reshape(n, 1, -1))
    d = (torch.sin(phase) * shot.wobble_amp.reshape(n, 1, -1)).view(n, -1, 2, WAVES).sum(-1)
    return d.view(p.shape)


def _camera(shot: Shot, t):
    """(centre [n,2], scale [n], cos, sin) at time t."""
    t = _t(shot, t)
    shake = (shot.shake_amp * torch.sin(shot.shake_speed * t.view(-1, 1, 1) + shot.shake_phase)).sum(-1)
    centre = shot.centre0 + shot.velocity * t.view(-1, 1) + shake
    scale = shot.scale0 * torch.exp(shot.zoom * t)
    angle = shot.angle0 + shot.spin * t
    return centre, scale, torch.cos(angle), torch.sin(angle)


def scene_points(shot: Shot, p: torch.Tensor, t) -> torch.Tensor:
    """Where frame points p ([n,H,W,2]) look in the scene at time t."""
    centre, scale, cos, sin = _camera(shot, t)
    q = p + wobble(shot, p, t)
    v = lambda x: x.view(-1, 1, 1)  # noqa: E731
    x = v(cos) * q[..., 0] - v(sin) * q[..., 1]
    y = v(sin) * q[..., 0] + v(cos) * q[..., 1]
    return torch.stack((x, y), -1) * v(scale).unsqueeze(-1) + centre.view(-1, 1, 1, 2)


def frame_points(shot: Shot, s: torch.Tensor, t) -> torch.Tensor:
    """The inverse of `scene_points`: the frame point that sees scene point s at time t."""
    centre, scale, cos, sin = _camera(shot, t)
    v = lambda x: x.view(-1, 1, 1)  # noqa: E731
    d = (s - centre.view(-1, 1, 1, 2)) / v(scale).unsqueeze(-1)
    u = torch.stack((v(cos) * d[..., 0] + v(sin) * d[..., 1], -v(sin) * d[..., 0] + v(cos) * d[..., 1]), -1)
    q = u
    if bool((shot.wobble_amp != 0).any()):
        for _ in range(_INVERT_ITERS):  # q + wobble(q) = u; wobble is a contraction
            q = u - wobble(shot, q, t)
    return q


def occluder_centre(shot: Shot, t) -> torch.Tensor:
    return shot.occ_centre0 + shot.occ_velocity * _t(shot, t).view(-1, 1)


def _in_occluder(shot: Shot, p: torch.Tensor, t) -> torch.Tensor:
    """[n,H,W] bool: p is covered by the occluder at time t."""
    d = p - occluder_centre(shot, t).view(-1, 1, 1, 2)
    return d.pow(2).sum(-1) < shot.occ_radius.view(-1, 1, 1) ** 2


def gain(shot: Shot, t) -> torch.Tensor:
    """[n] exposure factor at time t."""
    t = _t(shot, t)
    return torch.exp(shot.gain_drift * t + shot.gain_flicker * torch.sin(shot.gain_speed * t))


# -- rendering -----------------------------------------------------------------------------
def _render_sharp(shot: Shot, t, size: int) -> torch.Tensor:
    p = frame_grid(shot.n, size, shot.scene.device)
    bg = F.grid_sample(shot.scene, scene_points(shot, p, t), mode="bilinear", padding_mode="reflection",
                       align_corners=False)
    if bool((shot.occ_radius > 0).any()):
        local = (p - occluder_centre(shot, t).view(-1, 1, 1, 2)) * shot.occ_scale.view(-1, 1, 1, 1)
        fg = F.grid_sample(shot.occluder, local, mode="bilinear", padding_mode="reflection", align_corners=False)
        # the disc's rim antialiased over about one pixel
        dist = (p - occluder_centre(shot, t).view(-1, 1, 1, 2)).pow(2).sum(-1).sqrt()
        alpha = ((shot.occ_radius.view(-1, 1, 1) - dist) * size / 2 + 0.5).clamp(0, 1).unsqueeze(1)
        bg = bg * (1 - alpha) + fg * alpha
    return bg * gain(shot, t).view(-1, 1, 1, 1)


def render(shot: Shot, t, size: int, *, noise_seed: Optional[int] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The frames at time t ([n,3,size,size] in [0,1]): motion blur averages `BLUR_TAPS` sharp
    renders over the shutter time centred on t; sensor noise is Gaussian, fresh per frame
    (`generator`, or a CPU generator seeded with `noise_seed`, else the global one)."""
    blur = shot.blur.view(-1, 1, 1, 1)
    if bool((shot.blur > 0).any()):
        taps = [_render_sharp(shot, _t(shot, t) + shot.blur * (k / (BLUR_TAPS - 1) - 0.5), size)
                for k in range(BLUR_TAPS)]
        x = torch.stack(taps).mean(0)
        x = torch.where(blur > 0, x, taps[BLUR_TAPS // 2])
    else:
        x = _render_sharp(shot, t, size)
    if bool((shot.noise > 0).any()):
        gen = generator
        if gen is None and noise_seed is not None:
            gen = torch.Generator().manual_seed(noise_seed)
        e = torch.randn(x.shape, generator=gen, device="cpu" if gen is None or gen.device.type == "cpu"
                        else x.device).to(x.device)
        x = x + e * shot.noise.view(-1, 1, 1, 1)
    return x.clamp(0, 1)


# -- the true motion -----------------------------------------------------------------------
def correspondence(shot: Shot, t_from, t_to, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every pixel p of the frame at `t_from`: the normalised position in the frame at `t_to`
    of the point p shows ([n,size,size,2], for `grid_sample`) and whether that point is visible
    there ([n,size,size] bool: inside the frame and on the same layer, background or occluder)."""
    p = frame_grid(shot.n, size, shot.scene.device)
    on_fg = _in_occluder(shot, p, t_from)
    q_bg = frame_points(shot, scene_points(shot, p, t_from), t_to)
    shift = (occluder_centre(shot, t_to) - occluder_centre(shot, t_from)).view(-1, 1, 1, 2)
    q = torch.where(on_fg.unsqueeze(-1), p + shift, q_bg)
    inside = (q.abs() <= 1).all(-1)
    covered = _in_occluder(shot, q, t_to)
    visible = inside & torch.where(on_fg, torch.ones_like(covered), ~covered)
    return q, visible


def warp(img: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """`img` sampled at `grid` (bilinear, border padding: what the engine's flow warp does too)."""
    return F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def stays_inside(shot: Shot, t0: float, t1: float, steps: int = 8) -> torch.Tensor:
    """[n] bool: from t0 to t1 the frame's corners (and edge midpoints) see only the scene, never
    the reflected border (whose motion would not be the camera's)."""
    edge = torch.tensor([[-1, -1], [1, -1], [-1, 1], [1, 1], [0, -1], [0, 1], [-1, 0], [1, 0]],
                        dtype=torch.float32, device=shot.scene.device)
    p = edge.view(1, 1, -1, 2).expand(shot.n, 1, -1, 2)
    ok = torch.ones(shot.n, dtype=torch.bool, device=shot.scene.device)
    for k in range(steps + 1):
        t = t0 + (t1 - t0) * k / steps
        for dt in (-0.5, 0.0, 0.5):  # the shutter
            s = scene_points(shot, p, _t(shot, t) + shot.blur * dt)
            ok &= (s.abs() <= 1).all(-1).all(-1).all(-1)
    return ok


def random_shots(bank: torch.Tensor, n: int, gen: torch.Generator, *, span: float = 4.0,
                 occluders: Optional[torch.Tensor] = None) -> Shot:
    """`n` random shots of random pictures of `bank` ([P,3,S,S]) for training: every kind of motion
    at once in random measure (pan, zoom, rotation, shake, non-rigid warp, an occluder on about
    half, exposure drift and flicker, motion blur and noise on some), kept inside the scene from
    t = 0 to `span` frames."""
    dev = bank.device

    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, device=dev)

    def sign(*shape):
        return torch.where(u(*shape) < 0.5, -1.0, 1.0)

    def some(p, *shape):  # 1 with probability p
        return (u(*shape) < p).float()

    idx = torch.randint(len(bank), (n,), generator=gen, device=dev)
    occ_idx = torch.randint(len(bank if occluders is None else occluders), (n,), generator=gen, device=dev)
    scale0 = u(n, lo=0.3, hi=0.85)
    shot = Shot(
        scene=bank[idx],
        centre0=torch.zeros(n, 2, device=dev),
        velocity=u(n, 2, lo=-1, hi=1) * scale0.view(-1, 1) * u(n, 1, lo=0.0, hi=0.05),  # up to ~6 px/frame
        scale0=scale0,
        zoom=some(0.5, n) * u(n, lo=-0.03, hi=0.03),
        angle0=some(0.3, n) * u(n, lo=-0.3, hi=0.3),
        spin=some(0.4, n) * u(n, lo=-0.025, hi=0.025),
        wobble_amp=some(0.5, n, 1, 1) * u(n, 2, WAVES, lo=0.0, hi=0.025),
        wobble_freq=u(n, 2, WAVES, 2, lo=-1, hi=1) * math.pi * 2,
        wobble_speed=u(n, 2, WAVES, lo=-0.4, hi=0.4),
        wobble_phase=u(n, 2, WAVES, hi=2 * math.pi),
        shake_amp=some(0.3, n, 1, 1) * u(n, 2, SHAKES, hi=0.012) * scale0.view(-1, 1, 1),
        shake_speed=u(n, 2, SHAKES, lo=0.3, hi=1.5),
        shake_phase=u(n, 2, SHAKES, hi=2 * math.pi),
        occluder=(bank if occluders is None else occluders)[occ_idx],
        occ_radius=some(0.5, n) * u(n, lo=0.15, hi=0.45),
        occ_centre0=u(n, 2, lo=-0.9, hi=0.9),
        occ_velocity=u(n, 2, lo=-0.06, hi=0.06),
        occ_scale=u(n, lo=0.3, hi=0.8),
        gain_drift=some(0.3, n) * u(n, lo=-0.04, hi=0.04),
        gain_flicker=some(0.2, n) * u(n, lo=0.0, hi=0.1),
        gain_speed=u(n, lo=1.0, hi=3.0),
        blur=some(0.25, n) * u(n, lo=0.3, hi=1.0),
        noise=some(0.25, n) * u(n, hi=0.03),
    )
    # place each camera where its whole path stays inside the scene
    extent = scale0 * (1 + 0.04) * math.sqrt(2)
    travel = (shot.velocity.abs() * span).amax(-1) + shot.shake_amp.sum(-1).amax(-1) * 2
    room = (1 - extent * torch.exp(shot.zoom.clamp_min(0) * span) - travel).clamp_min(0)
    shot.centre0 = (u(n, 2, lo=-1, hi=1) * room.view(-1, 1)) - shot.velocity * span / 2
    bad = ~stays_inside(shot, 0.0, span)
    if bool(bad.any()):  # the rare path that still leaves: a still camera framing the middle
        shot.velocity[bad] = 0
        shot.zoom[bad] = 0
        shot.shake_amp[bad] = 0
        shot.centre0[bad] = 0
        shot.blur[bad] = 0
        shot.spin[bad] = 0
        shot.scale0[bad] = shot.scale0[bad].clamp_max(0.6)
    return shot
