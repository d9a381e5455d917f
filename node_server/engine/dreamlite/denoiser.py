"""The main stream's work as three pure pieces: VAE encode, one U-Net Euler step, VAE decode to uint8.

Every value that may change during a show (schedule, noise, conditioning) is a tensor argument, and
no piece branches on data, so the same pieces run eagerly on the CPU and, compiled, inside one
CUDA graph per (batch, steps) on a GPU (`graphs.GraphedDenoiser`) without re-capture when the
strength, seed or prompt changes.
"""

from __future__ import annotations

import torch

from ..frames import to_uint8_hwc


class Denoiser:
    """Edit-mode flow-matching denoising for a DreamLite U-Net and tiny VAE at one frame size."""

    def __init__(self, unet, vae, size: tuple[int, int], dtype: torch.dtype):
        self.unet, self.vae = unet, vae
        self.size = size
        self.dtype = dtype
        cfg = vae.config
        self.scaling = float(cfg.scaling_factor)
        self.shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
        self._time_ids: dict[tuple[int, str], torch.Tensor] = {}

    # -- the pieces (each one compiled on a GPU) -------------------------------------------
    def encode_source(self, x: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] frames in [0,1] -> the source latent the U-Net sees beside the target."""
        return self.vae.encode(x.to(self.dtype) * 2 - 1).latents

    def time_ids(self, n: int, device) -> torch.Tensor:
        """The U-Net's size conditioning, made once per batch size and device and then reused, so a
        graph capture (which warms up first) never copies from the host."""
        key = (n, str(device))
        if key not in self._time_ids:
            self._time_ids[key] = torch.tensor([[self.size[1], self.size[0]]], device=device,
                                               dtype=self.dtype).expand(n, -1)
        return self._time_ids[key]

    def unet_step(self, latents: torch.Tensor, source: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor,
                  time_ids: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        """One Euler step: the U-Net reads target and source side by side and predicts velocity for
        the left (target) half. `t` is the timestep and `dt` the sigma step (0-dim tensors)."""
        n, width = latents.shape[0], latents.shape[-1]
        dtype = self.dtype
        model_in = torch.cat([latents, source], dim=3)
        velocity = self.unet(
            model_in, timestep=t.to(dtype).expand(n), encoder_hidden_states=embeds, encoder_attention_mask=mask,
            added_cond_kwargs={"time_ids": time_ids}, return_dict=False,
        )[0][..., :width]
        return (latents.float() + dt * velocity.float()).to(velocity.dtype)

    def decode_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> uint8 [n,H,W,3] (rounded like the stock pipeline's output)."""
        return to_uint8_hwc(self.vae.decode(latents / self.scaling + self.shift).sample)

    # -- the whole pass --------------------------------------------------------------------
    @staticmethod
    def start_latents(source: torch.Tensor, noise: torch.Tensor, sigma0: torch.Tensor) -> torch.Tensor:
        """SDEdit-style start: pure noise at strength 1, the frame's own latent mixed in below 1."""
        start = noise.expand(source.shape[0], -1, -1, -1)
        return ((1 - sigma0) * source + sigma0 * start).to(source.dtype)

    def run(self, x: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
            sigmas: torch.Tensor, timesteps: torch.Tensor, encode=None, step=None, decode=None) -> torch.Tensor:
        """Frames [n,3,H,W] in [0,1] -> stylized uint8 [n,H,W,3]. `sigmas` holds steps + 1 values
        (the last 0) and `timesteps` steps values, both float32 tensors on the device. The three
        piece arguments let a caller pass compiled versions of the pieces."""
        encode = encode or self.encode_source
        step = step or self.unet_step
        decode = decode or self.decode_uint8
        source = encode(x)
        latents = self.start_latents(source, noise, sigmas[0])
        time_ids = self.time_ids(x.shape[0], x.device)
        for i in range(timesteps.shape[0]):
            latents = step(latents, source, embeds, mask, time_ids, timesteps[i], sigmas[i + 1] - sigmas[i])
        return decode(latents)
