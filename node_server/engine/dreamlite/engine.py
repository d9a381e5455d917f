"""The streaming engine: batches of frames in, stylized frames out, in order.

One `step` runs the main stream: ingest (crop/resize/normalise on the device) -> tiny-VAE encode
-> 1..4 flow-matching Euler steps of the edit U-Net (target and source latents side by side) ->
tiny-VAE decode -> uint8 -> host. The conditioning comes from `ConditioningWorker`, which runs on
its own thread/stream; `step` only ever waits for it before the very first conditioning exists.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ...errors import ParamError
from ...progress import step as announce
from ..base import EngineBase, FrameOut, with_model_defaults
from ..blend import blend_noise, describe_blend, is_passthrough, mix_conditioning, prompts_of_key
from ..conditioning import Conditioning, ConditioningWorker
from ..fp8 import use_fp8
from ..frames import to_device_batch, to_host_frames, to_uint8_frames
from ..params import Params
from ..streams import Streams
from .attention import ATTENTION_MODES, use_aligned_heads
from .denoiser import Denoiser
from .encoder import DEFAULT_MAX_PROMPT_TOKENS, PromptEncoder
from .graphs import GraphedDenoiser
from .prompt_sets import PromptSetEncoder


log = logging.getLogger("node_server.engine")


@dataclass(frozen=True)
class Schedule:
    """Sigmas and timesteps for one (steps, strength) setting, computed once per change."""

    sigmas: tuple[float, ...]  # steps + 1 values, the last one 0
    timesteps: tuple[float, ...]  # steps values

    @property
    def sigmas_cpu(self) -> torch.Tensor:
        return self._tensor("sigmas")

    @property
    def timesteps_cpu(self) -> torch.Tensor:
        return self._tensor("timesteps")

    def _tensor(self, name: str) -> torch.Tensor:
        """One float32 CPU tensor per schedule and field (made once; the engine moves it to the
        device on its own stream and recognises it by identity)."""
        cache = self.__dict__.setdefault("_tensors", {})
        if name not in cache:
            cache[name] = torch.tensor(getattr(self, name), dtype=torch.float32)
        return cache[name]


def flow_schedule(scheduler, steps: int, strength: float, latent_hw: tuple[int, int]) -> Schedule:
    """The stock pipeline's schedule (linspace(1, 1/N, N), dynamically shifted) scaled by strength.

    At strength 1 it is exactly `DreamLiteMobilePipeline`'s; below 1 the frame's own latent is mixed
    into the start point (SDEdit-style), so less of the input is replaced.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.dreamlite.pipeline_dreamlite_mobile import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)
    cfg = sched.config
    kwargs = {}
    if cfg.get("use_dynamic_shifting", False):
        seq = latent_hw[0] * latent_hw[1] // 4
        kwargs["mu"] = calculate_shift(
            seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16),
        )
    sched.set_timesteps(sigmas=np.linspace(strength, strength / steps, steps), device="cpu", **kwargs)
    return Schedule(tuple(float(s) for s in sched.sigmas), tuple(float(t) for t in sched.timesteps))


class StreamEngine(EngineBase):
    """Stylizes frames with a DreamLite-family bundle; see `docs/ARCHITECTURE.md`."""

    family = "dreamlite"

    def __init__(self, bundle, params: Optional[Params] = None, *, size: "int | tuple[int, int]" = 512,
                 device=None, dtype: Optional[torch.dtype] = None, encoder_image_size: int = 512,
                 max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, cache_size: int = 32,
                 compile: str = "auto", progress: bool = True, lllite=None, lllite_blocks=None,
                 lllite_source: str = "temporal", encoder_device=None, unet_compile_mode: Optional[str] = None,
                 attention: str = "fold", fp8: bool = False):
        """`compile`: `auto` (compiled CUDA graphs on a GPU, eager on the CPU), `off` (eager),
        `graphs` (CUDA graphs of eager kernels), `default` or `max-autotune` (Inductor + graphs).
        `lllite`: a ControlNet-LLLite `.safetensors` file (docs/LLLITE.md), hooked into the U-Net
        on `lllite_blocks` (all, or a comma list of down, mid, up). `encoder_device`: where the
        multimodal encoder runs (default: `device`; e.g. a second GPU). `unet_compile_mode`: an
        Inductor mode for the U-Net step alone (a benchmark lever; see engine/dreamlite/graphs.py).
        `attention`: how the masked narrow-head attentions reach a fused GPU kernel, `fold` (the
        mask carried inside the heads, flash-eligible; the default: 1.04-1.07x the frame rate of
        `pad` on an H100) or `pad` (heads padded beside the mask); both exact, see
        engine/dreamlite/attention.py. `fp8`: the U-Net's matrix products in float8
        (engine/fp8.py), a benchmark lever: measured slower and below 40 dB PSNR (BENCHMARKS.md)."""
        if attention not in ATTENTION_MODES:
            raise ValueError(f"unknown attention mode {attention!r}; one of {', '.join(ATTENTION_MODES)}")
        self._place(bundle, size, device, dtype, encoder_device)
        mode = self._resolve_compile(compile)
        self.streams = Streams(self.device)
        self.main_stream = self.streams.new_stream(priority=-1)  # frames outrank the encoder's stream
        factor = 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)
        self.latent_hw = (self.size[0] // factor, self.size[1] // factor)
        # masked cross-attention on a fused kernel (see engine/dreamlite/attention.py)
        use_aligned_heads(self.unet, fold_mask=attention == "fold")
        self.denoiser = Denoiser(self.unet, self.vae, self.size, self.dtype)
        self._say = lambda text: announce(text, enabled=progress)
        self._attach_lllite(lllite, blocks=lllite_blocks, source=lllite_source, edit_layout=True,
                            compiled=mode in ("default", "max-autotune"))
        self.fp8_modules = use_fp8(self.unet, self.device) if fp8 else 0  # after the hooks: they keep their dtype
        self.graphed = None if mode == "off" else GraphedDenoiser(
            self.denoiser, self.device, mode=mode, announce=self._say,
            unet_mode=unet_compile_mode)
        self._device_inputs: dict[str, tuple[object, object]] = {}  # name -> (host source, device copy)
        self.encoder = PromptEncoder(bundle, self.encoder_device, self.dtype, image_size=encoder_image_size,
                                     max_prompt_tokens=max_prompt_tokens, model=self.text_encoder,
                                     compile=mode in ("default", "max-autotune"),
                                     graphs=mode != "off" and self.encoder_device.type == "cuda")
        self.prompt_sets = PromptSetEncoder(self.encoder)  # blends: every prompt with the same frame(s)
        self.worker = ConditioningWorker(self.prompt_sets, self.streams, cache_size=cache_size)

        self._lock = threading.Lock()
        self._params = Params()
        self._tokens = self.prompt_sets.tokenize("")
        self._weights_of: dict[str, tuple[float, ...]] = {}  # prompt-set key -> its latest weights
        self._prompt_dirty = True
        self._schedule: Optional[Schedule] = None
        self._noise: Optional[torch.Tensor] = None
        self._seed_key = None
        self._seed_noises: dict[int, torch.Tensor] = {}
        self._cond: Optional[Conditioning] = None
        self._mixed = None  # (key, embeds, mask, prompt text) of the last blend mix (main stream only)
        self._shown: Optional[str] = None  # the prompt (or blend) of the last output
        self._last_frames: Optional[torch.Tensor] = None  # the previous batch, on the device
        self._batches = 0
        self._closed = False
        if params is None:  # a model folder may ask for its own defaults (node_server.json)
            params = with_model_defaults(bundle, None)
        self._apply(params)

    # -- parameters ------------------------------------------------------------------------
    def set_params(self, **changes) -> Params:
        """Validate and apply `changes` atomically (all or nothing); returns the new params (a
        strength above the model's `max_strength` is applied at it).

        A new prompt (set) starts encoding at once with the latest frame (when there is one), so
        its conditioning can be ready before the next frame arrives; the frame loop never waits for
        it. Blend or seed weights alone never encode."""
        with self._lock:
            new = self._params.replace(**changes)
        new = self._apply(new)
        with self._lock:
            frames = self._last_frames if self._prompt_dirty and not is_passthrough(self._tokens.prompt) else None
            if frames is not None:
                self._prompt_dirty = False
                tokens = self._tokens
        if frames is not None:
            self._request_prompt(tokens, frames, new.refresh)
        return new

    def _build_schedule(self, steps: int, strength: float):
        return flow_schedule(self.bundle.scheduler, steps, strength, self.latent_hw)

    def _apply(self, new: Params) -> Params:
        new = self._cap_strength(new)
        key, weights, tokens = self._prompt_set(new, self.prompt_sets.tokenize)
        schedule = self._schedule_for(new)
        seed_key = new.active_seeds()
        noise = self._noise
        if noise is None or seed_key != self._seed_key:
            noise = blend_noise([self._seed_noise(s) for s in seed_key[0]], seed_key[1])
        with self._lock:
            old = self._params
            self._params = new
            if tokens is not None:
                self._tokens = tokens
                self._prompt_dirty = True
            self._remember_weights(key, weights)
            if new.refresh != old.refresh and new.refresh.kind != "on-change":
                self._batches = 0
            self._schedule = schedule
            self._noise, self._seed_key = noise, seed_key
        return new

    def _seed_noise(self, seed: int) -> torch.Tensor:
        """The starting noise of one seed: the same for every frame (temporal stability), drawn on
        the CPU like the stock pipeline's `randn_tensor` with a CPU generator; kept for 16 seeds so
        a seed-blend fader never draws again."""
        cached = self._seed_noises.get(seed)
        if cached is None:
            cached = self._make_noise(seed)
            if len(self._seed_noises) >= 16:
                self._seed_noises.pop(next(iter(self._seed_noises)))
            self._seed_noises[seed] = cached
        return cached

    def _make_noise(self, seed: int) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        channels = self.vae.config.latent_channels
        gen = torch.Generator("cpu").manual_seed(seed)
        return randn_tensor((1, channels, *self.latent_hw), generator=gen, device=torch.device("cpu"),
                            dtype=self.dtype)  # moved to the device by the frame loop (`_on_device`)

    # -- state for the control side --------------------------------------------------------
    @property
    def active_prompt(self) -> Optional[str]:
        """The prompt (or `0.70*a + 0.30*b` blend) of the last output; "" while frames pass
        through unchanged; None before the first step."""
        return self._shown

    # -- the main loop's step --------------------------------------------------------------
    def _encoder_frames(self, x: torch.Tensor, policy) -> torch.Tensor:
        """The frames an encode under `policy` sees: the newest one, or (every-batch) each frame of
        the batch. Where each new encoder batch compiles and captures (`encoder.shape_bound`), a
        short batch is padded with its last frame to the batch size, so the worker only ever
        sends batch 1 or the batch size, both primed by the warm-up (`_prime_encoder`)."""
        if policy.kind != "every-batch":
            return x[-1:]
        return self._full_batch(x) if self.encoder.shape_bound else x

    def _full_batch(self, x: torch.Tensor) -> torch.Tensor:
        """`x` padded with its last frame to the batch size."""
        rows = self.params.batch_size
        if x.shape[0] < rows:
            return torch.cat([x, x[-1:].expand(rows - x.shape[0], -1, -1, -1)], 0)
        return x

    def _request_prompt(self, tokens, x: torch.Tensor, policy) -> None:
        """A prompt changed: show its cached conditioning, or encode it with the latest frame(s)."""
        if policy.kind == "on-change" and self.worker.publish_cached(tokens.prompt):
            return
        self.worker.request(tokens, self._encoder_frames(x, policy), cache=policy.kind == "on-change")

    def _conditioning(self, x: torch.Tensor, params: Params, tokens, dirty: bool, index: int) -> Conditioning:
        policy = params.refresh
        if dirty:
            self._request_prompt(tokens, x, policy)
        elif policy.due(index):
            self.worker.request(tokens, self._encoder_frames(x, policy), cache=False)
        try:
            cond = self.worker.latest() or self.worker.wait_first()
        except RuntimeError:
            with self._lock:
                self._prompt_dirty = True  # no conditioning at all yet: the next step asks again
            raise
        if self._cond is None or cond.version != self._cond.version:
            self.streams.wait(cond.event)
            self.streams.keep_alive(cond.embeds)
            self.streams.keep_alive(cond.mask)
            self._cond = cond
        return self._cond

    def _blended(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(embeds, mask, prompt text) of `cond`: a prompt set is mixed with its latest weights,
        once per new conditioning or weight change (on the main stream, never re-encoded)."""
        prompts = prompts_of_key(cond.prompt)
        if len(prompts) == 1:
            return cond.embeds, cond.mask, cond.prompt
        weights = self._weights_for(cond.prompt, len(prompts))
        key = (cond.version, weights)
        if self._mixed is None or self._mixed[0] != key:
            embeds, mask = mix_conditioning(cond.embeds, cond.mask, weights)
            self._mixed = (key, embeds, mask, describe_blend(prompts, weights))
        return self._mixed[1], self._mixed[2], self._mixed[3]

    @staticmethod
    def _fit(t: torch.Tensor, n: int) -> torch.Tensor:
        """Per-frame conditioning rows for a batch of n (one row is shared by all frames)."""
        if t.shape[0] == n:
            return t
        if t.shape[0] == 1:
            return t.expand(n, *t.shape[1:])
        if t.shape[0] > n:
            return t[:n]
        return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])], 0)

    @torch.no_grad()
    def step(self, frames: Sequence[np.ndarray], ids: Sequence[int]) -> list[FrameOut]:
        """Stylize 1..batch_size frames; outputs come back in input order with their ids. With no
        prompt (or before the first prompt's conditioning exists) frames pass through unchanged."""
        if self._closed:
            raise RuntimeError("engine is closed")
        n = len(frames)
        with self._lock:
            params, tokens, dirty = self._params, self._tokens, self._prompt_dirty
            schedule, noise = self._schedule, self._noise
            passthrough = is_passthrough(tokens.prompt) and not self._warming
            if not passthrough:  # the empty prompt is never encoded (but the warm-up's is)
                self._prompt_dirty = False
            index = self._batches
            self._batches += 1
        if len(ids) != n:
            raise ValueError(f"{n} frames but {len(ids)} ids")
        if not 1 <= n <= params.batch_size:
            raise ParamError("frames", f"a step takes 1..{params.batch_size} frames (the batch size), got {n}")

        with self.streams.use(self.main_stream):
            x = to_device_batch(frames, self.size, self.device)
            cond = None if passthrough else self._conditioning(x, params, tokens, dirty, index)
            with self._lock:
                self._last_frames = x
            if cond is None or (is_passthrough(cond.prompt) and not self._warming):
                return self._pass_through(x, ids)
            embeds, mask, prompt = self._blended(cond)
            # A graph runs at the full batch size: a short batch is padded with its last frame.
            rows = params.batch_size if self.graphed is not None else n
            if rows > n:
                x = torch.cat([x, x[-1:].expand(rows - n, -1, -1, -1)], 0)
            embeds, mask = self._fit(embeds, rows), self._fit(mask, rows)
            if self.lllite is not None:
                self.lllite.before(x, params.lllite_strength, params.lllite_refresh)
            out = self.denoise(x, embeds, mask, schedule, noise)
            out = self._blend_output(x, out, n, params, cond.prompt)  # the prompt set: weights may glide
            if self.lllite is not None:
                self.lllite.after(x, out, n)
            host = to_host_frames(out[:n], self.streams)
        self._shown = prompt
        return [FrameOut(int(i), host[k], prompt) for k, i in enumerate(ids)]

    def _after_warmup(self) -> None:
        super()._after_warmup()
        self._prime_encoder()

    def _prime_encoder(self) -> None:
        """Encode once in every prompt-length bucket at every batch the worker can send (1, for
        on-change and every:N; the batch size, for every-batch, which `/refresh` may pick live),
        so that no prompt, however long, compiles or captures after the warm-up: on the worker
        thread that takes seconds and holds the GIL, and the frame loop would stall. Only where
        shapes compile or capture (a GPU); the eager CPU forward has nothing to prime."""
        x = self._last_frames  # the warm-up's batch, on the device
        if not self.encoder.shape_bound or x is None:
            return
        frames = [x[-1:]]
        if self.params.batch_size > 1:
            frames.append(self._full_batch(x))
        probes = self.encoder.bucket_probes()
        self._say(f"warming up: the encoder's {len(probes)} prompt-length buckets at batch "
                  f"{' and '.join(str(f.shape[0]) for f in frames)}...")
        errors = self.worker.warm([(tokens, f) for tokens in probes for f in frames])
        for err in errors[:1]:
            log.warning("priming the encoder's buckets failed (%s: %s); a prompt of a new length may "
                        "stall the output once while its shape compiles", type(err).__name__, err)

    def _pass_through(self, x: torch.Tensor, ids: Sequence[int]) -> list[FrameOut]:
        """The ingested frames (cropped and resized to the engine's size) as they are."""
        self.forget_shown()  # nothing stylized was shown: the temporal adapter and blend start afresh
        host = to_host_frames(to_uint8_frames(x), self.streams)
        self._shown = ""
        return [FrameOut(int(i), host[k], "") for k, i in enumerate(ids)]

    def denoise(self, x: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, schedule: Schedule,
                noise: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] frames in [0,1] -> stylized uint8 [n,H,W,3] on the device (the main stream's work)."""
        sigmas = self._on_device("sigmas", schedule.sigmas_cpu)
        timesteps = self._on_device("timesteps", schedule.timesteps_cpu)
        noise = self._on_device("noise", noise)
        if self.graphed is not None:
            return self.graphed.run(x, embeds, mask, noise, sigmas, timesteps)
        return self.denoiser.run(x, embeds, mask, noise, sigmas, timesteps)
