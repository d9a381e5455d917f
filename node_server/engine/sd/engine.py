"""The streaming engine for CLIP-conditioned SD-class models (SD-Turbo, SD 1.5 + LCM-LoRA, SDXS).

Same interface as `StreamEngine` (`step`, `set_params`, `params`, `active_prompt`, `encode_count`,
`pop_encoder_error`, `warmup`, `close`), so the server, `render` and the OSC controls drive it
unchanged. The main stream's pass: ingest -> VAE encode -> noise to the first timestep index ->
1..4 U-Net steps -> VAE decode -> uint8 -> host. The CLIP encoder runs on `ConditioningWorker`'s
thread and CUDA stream; a prompt (or prompt-set) change never makes a frame wait once a first
conditioning exists.

Strength is expressed as the timestep indices a frame enters at: the scheduler's schedule of
`num_inference_steps` (50, as StreamDiffusion) is set once; strength s and k steps give the first
index `N - int(N * s)` (the diffusers img2img rule) and k indices spread evenly from it to the end
(`t_index_list`). An explicit `t_index_list` overrides both.

Every schedule value, the conditioning and the noise are tensors in fixed-shape buffers, so a
prompt, weight, seed or strength change only rewrites buffer contents (a captured CUDA graph is
never re-captured for them).

Stream batch (`stream_batch=True`, StreamDiffusion's denoising batch): with k steps, one U-Net
call holds k * B rows, the newest B frames at the first index and the B frames of each of the
previous k-1 calls one index further; a frame therefore comes out k-1 calls after it went in
(`flush()` drains the pipeline). Off (the default), each call runs its k steps one after another
and returns its own frames; with 1 step the two are the same.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ...errors import ParamError
from ...progress import step as announce
from ...quiet import quiet_diffusers
from ..base import EngineBase, FrameOut, with_model_defaults
from ..blend import blend_noise, describe_blend, is_passthrough, prompt_set_key, prompts_of_key
from ..conditioning import Conditioning, ConditioningWorker
from ..frames import to_device_batch, to_host_frames, to_uint8_frames, to_uint8_hwc
from ..params import Params
from ..streams import Streams
from .encoder import ClipPromptEncoder

DEFAULT_NUM_INFERENCE_STEPS = 50
# Columns of the per-stage coefficient table (one row per timestep index).
_IN, _EPS_OUT, _EPS_X, _S, _INV_A, _C_OUT, _C_SKIP, _NA, _NB, _NE, _SRC, _NOISE = range(12)
_NCOEF = 12


def t_index_list(steps: int, strength: float, num_inference_steps: int) -> tuple[int, ...]:
    """Timestep indices (into the scheduler's N-step schedule) for k steps at a strength.

    The first index is the diffusers img2img pipeline's `t_start = N - int(N * strength)`; k
    indices run from it towards the end, so k == N - t_start reproduces that pipeline's steps.
    """
    n = num_inference_steps
    start = min(max(n - min(int(n * strength), n), 0), n - 1)
    span = n - start
    if steps > span:
        raise ParamError("steps", f"{steps} steps need strength >= {steps / n:.2f} with a {n}-step schedule")
    return tuple(start + (j * span) // steps for j in range(steps))


@dataclass(frozen=True)
class SDSchedule:
    """One (steps, strength) setting: timestep indices, timesteps and the per-stage coefficients."""

    indices: tuple[int, ...]
    timesteps: torch.Tensor  # [k] float32 (CPU)
    coef: torch.Tensor  # [k, _NCOEF] float32 (CPU)


def _scheduler_kind(scheduler) -> str:
    name = type(scheduler).__name__
    if name.startswith("Euler"):
        return "euler"
    if name == "LCMScheduler":
        return "lcm"
    return "x0"  # DDIM/DDPM/PNDM-style alpha schedules: jump to x0, re-noise to the next index


def _quiet_from_config(cls, config):
    """`cls.from_config` without diffusers' warning about keys of another scheduler class."""
    with quiet_diffusers():
        return cls.from_config(config)


def make_schedule(scheduler, indices: Sequence[int], num_inference_steps: int) -> SDSchedule:
    """Coefficients so one generic step serves Euler (sigma space) and LCM/x0 (alpha space) schedulers.

    A row x at stage j: model input `x * IN`; eps = EPS_OUT * out + EPS_X * x;
    x0 = (x - S * eps) * INV_A; denoised = C_OUT * x0 + C_SKIP * x;
    next = NA * denoised + NB * noise_next + NE * eps. Stage 0 starts at SRC * latent + NOISE * noise.
    """
    sched = _quiet_from_config(type(scheduler), scheduler.config)
    sched.set_timesteps(num_inference_steps, device="cpu")
    kind = _scheduler_kind(sched)
    pred = sched.config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ParamError("model", f"prediction_type {pred!r} is not supported (epsilon or v_prediction)")
    timesteps = sched.timesteps
    k = len(indices)
    coef = torch.zeros(k, _NCOEF, dtype=torch.float64)
    ts = torch.tensor([float(timesteps[i]) for i in indices], dtype=torch.float32)
    if kind == "euler":
        sigmas = sched.sigmas.double()
        for j, i in enumerate(indices):
            sigma = float(sigmas[i])
            sigma_next = float(sigmas[indices[j + 1]]) if j + 1 < k else 0.0
            a = 1.0 / (sigma**2 + 1) ** 0.5
            b = sigma * a
            eps_out, eps_x = (1.0, 0.0) if pred == "epsilon" else (a, a * b)
            coef[j] = torch.tensor([a, eps_out, eps_x, sigma, 1.0, 1.0, 0.0, 1.0, 0.0, sigma_next, 1.0, sigma])
    else:
        alphas = sched.alphas_cumprod.double()
        for j, i in enumerate(indices):
            t = int(timesteps[i])
            a, b = float(alphas[t].sqrt()), float((1 - alphas[t]).sqrt())
            if kind == "lcm":
                c_skip, c_out = (float(v) for v in sched.get_scalings_for_boundary_condition_discrete(t))
            else:
                c_skip, c_out = 0.0, 1.0
            if j + 1 < k:
                t_next = int(timesteps[indices[j + 1]])
                na, nb = float(alphas[t_next].sqrt()), float((1 - alphas[t_next]).sqrt())
            else:
                na, nb = 1.0, 0.0
            eps_out, eps_x = (1.0, 0.0) if pred == "epsilon" else (a, b)
            coef[j] = torch.tensor([1.0, eps_out, eps_x, b, 1.0 / a, c_out, c_skip, na, nb, 0.0, a, b])
    return SDSchedule(tuple(int(i) for i in indices), ts, coef.float())


class SDDenoiser:
    """The main stream's work as pure tensor functions (no data-dependent branches)."""

    def __init__(self, unet, vae, dtype: torch.dtype):
        self.unet, self.vae, self.dtype = unet, vae, dtype
        self.tiny = type(vae).__name__ == "AutoencoderTiny"
        self.scaling = float(vae.config.scaling_factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[n,3,H,W] in [0,1] -> scaled latents (tiny: its latents; KL: the posterior mean)."""
        img = x.to(self.dtype) * 2 - 1
        if self.tiny:
            latents = self.vae.encode(img).latents
        else:
            latents = self.vae.encode(img).latent_dist.mode()
        return latents * self.scaling

    def start(self, latents: torch.Tensor, noise: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        c = coef.view(-1, _NCOEF, 1, 1)
        return (c[:, _SRC:_SRC + 1] * latents.float() + c[:, _NOISE:_NOISE + 1] * noise.float()).to(self.dtype)

    def unet_step(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, coef: torch.Tensor,
                  noise: torch.Tensor, noise_next: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """One step for every row (rows may be at different stages: `coef`/`t` are per row)."""
        c = coef.view(-1, _NCOEF, 1, 1)
        col = lambda i: c[:, i:i + 1]  # noqa: E731
        xf = x.float()
        out = self.unet((xf * col(_IN)).to(self.dtype), t, encoder_hidden_states=embeds, return_dict=False)[0]
        eps = col(_EPS_OUT) * out.float() + col(_EPS_X) * xf
        nf = noise.float()
        eps = nf + guidance * (eps - nf)  # residual CFG "self" (guidance 1: unchanged)
        x0 = (xf - col(_S) * eps) * col(_INV_A)
        denoised = col(_C_OUT) * x0 + col(_C_SKIP) * xf
        nxt = col(_NA) * denoised + col(_NB) * noise_next.float() + col(_NE) * eps
        return nxt.to(self.dtype)

    def decode_uint8(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8_hwc(self.vae.decode(latents / self.scaling).sample)

    def run_sequential(self, x, embeds, coef, t, noise, guidance) -> torch.Tensor:
        """k steps one after another for B frames. noise: [k+1, B or 1, C, h, w] (the last is unused)."""
        k = coef.shape[0]
        n = x.shape[0]
        lat = self.start(self.encode(x), noise[0], coef[0:1])
        for j in range(k):
            lat = self.unet_step(lat, t[j:j + 1].expand(n), embeds, coef[j:j + 1], noise[j], noise[j + 1], guidance)
        return self.decode_uint8(lat)

    def run_stream(self, x, embeds, coef_rows, t_rows, noise_rows, noise_next_rows, guidance,
                   inflight: torch.Tensor) -> torch.Tensor:
        """One denoising batch: B new frames at stage 0 plus `inflight` ((k-1)*B rows at stages 1..k-1,
        updated in place); returns the B frames that finished (uint8)."""
        n = x.shape[0]
        lat0 = self.start(self.encode(x), noise_rows[:n], coef_rows[:n])
        rows = torch.cat([lat0, inflight], 0)
        nxt = self.unet_step(rows, t_rows, embeds, coef_rows, noise_rows, noise_next_rows, guidance)
        done = nxt[-n:]
        inflight.copy_(nxt[:-n])
        return self.decode_uint8(done)


class SDStreamEngine(EngineBase):
    """Stylizes frames with an `SDBundle`; see the module docstring and docs/SD_MODELS.md."""

    family = "sd"

    def __init__(self, bundle, params: Optional[Params] = None, *, size: "int | tuple[int, int]" = 512,
                 device=None, dtype: Optional[torch.dtype] = None, encoder_image_size: int = 512,
                 cache_size: int = 32, stream_batch: bool = False,
                 num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS, t_index_list: Optional[Sequence[int]] = None,
                 scheduler: Optional[str] = None, compile: str = "auto", progress: bool = True,
                 lllite=None, lllite_blocks=None, lllite_source: str = "temporal", encoder_device=None,
                 **_ignored):
        del encoder_image_size  # text-only conditioning: the encoder never sees the frame
        self._place(bundle, size, device, dtype, encoder_device)
        mode = self._resolve_compile(compile)
        self.scheduler = self._pick_scheduler(bundle.scheduler, scheduler)
        self.kind = _scheduler_kind(self.scheduler)
        self.num_inference_steps = int(num_inference_steps)
        self.fixed_indices = tuple(int(i) for i in t_index_list) if t_index_list is not None else None
        if self.fixed_indices is not None and not (
            1 <= len(self.fixed_indices) <= 4 and all(0 <= i < self.num_inference_steps for i in self.fixed_indices)
        ):
            raise ParamError("t_index_list", f"1..4 indices in 0..{self.num_inference_steps - 1}, got {t_index_list}")
        self.stream_batch = bool(stream_batch)
        self.streams = Streams(self.device)
        cfg = self.vae.config
        blocks = cfg.encoder_block_out_channels if hasattr(cfg, "encoder_block_out_channels") else cfg.block_out_channels
        factor = 2 ** (len(blocks) - 1)
        self.latent_hw = (self.size[0] // factor, self.size[1] // factor)
        self.channels = int(self.unet.config.in_channels)
        self.den = SDDenoiser(self.unet, self.vae, self.dtype)
        self.encoder = ClipPromptEncoder(self.text_encoder, bundle.tokenizer, self.encoder_device, self.dtype)
        if lllite is not None and self.stream_batch:
            raise ParamError("lllite", "a ControlNet-LLLite adapter cannot run with stream batch (rows of "
                             "different frames share one U-Net call); turn stream batch off")
        self._attach_lllite(lllite, blocks=lllite_blocks, source=lllite_source, edit_layout=False,
                            compiled=mode in ("default", "max-autotune"))
        self._graphs = _SDGraphs(self.den, self.device, mode, progress) if mode != "off" else None
        # the worker's thread starts last, so a choice refused above leaves no thread behind
        self.worker = ConditioningWorker(self.encoder, self.streams, cache_size=cache_size)

        self._lock = threading.Lock()
        self._params = Params()
        self._tokens = None
        self._weights_of: dict[str, tuple[float, ...]] = {}  # prompt-set key -> its latest weights
        self._dirty = True
        self._schedule: Optional[SDSchedule] = None
        self._seed_key = None
        self._noise_cpu: Optional[torch.Tensor] = None  # [5, C, h, w] stage noises (fixed mode)
        self._seed_cache: dict[int, torch.Tensor] = {}
        self._frame_gen: Optional[torch.Generator] = None
        # device-side state, touched only by the frame loop
        self._cond: Optional[Conditioning] = None
        self._blend_applied = None
        self._shown: Optional[str] = None  # the prompt (or blend) of the last output; "" when passed through
        self._embeds: Optional[torch.Tensor] = None  # fixed-address [rows, 77, D]
        self._embeds_key = None
        self._device_inputs: dict[str, tuple[object, torch.Tensor]] = {}
        self._inflight: Optional[torch.Tensor] = None
        self._inflight_meta: list[list] = []  # per stage 1..k-1: [(id, prompt) or None] * B
        self._stream_key = None
        self._closed = False
        if params is None:  # a model folder may ask for its own defaults (node_server.json)
            params = with_model_defaults(bundle, None)
        self._apply(params)

    # -- setup -----------------------------------------------------------------------------
    @staticmethod
    def _pick_scheduler(scheduler, choice: Optional[str]):
        if choice in (None, "", "model"):
            return scheduler
        import diffusers

        names = {"lcm": "LCMScheduler", "euler": "EulerDiscreteScheduler"}
        if choice not in names:
            raise ParamError("scheduler", f"must be model, lcm or euler, got {choice!r}")
        return _quiet_from_config(getattr(diffusers, names[choice]), scheduler.config)

    # -- parameters ------------------------------------------------------------------------
    def set_params(self, **changes) -> Params:
        """Validate and apply atomically. A new prompt set is tokenised here, once, and its encode
        starts at once on the worker (the frame is not needed); weights alone never re-encode."""
        with self._lock:
            new = self._params.replace(**changes)
        new = self._apply(new)
        self._request_if_dirty()
        return new

    def _build_schedule(self, steps: int, strength: float):
        indices = self.fixed_indices or t_index_list(steps, strength, self.num_inference_steps)
        return make_schedule(self.scheduler, indices, self.num_inference_steps)

    def _apply(self, new: Params) -> Params:
        new = self._cap_strength(new)
        key, weights, tokens = self._prompt_set(new, self.encoder.tokenize)
        schedule = self._schedule_for(new)
        seeds, seed_weights = new.active_seeds()
        seed_key = (seeds, seed_weights)
        noise = self._noise_cpu
        if noise is None or seed_key != self._seed_key:
            noise = self._blend_noise(seeds, seed_weights)
        with self._lock:
            old = self._params
            self._params = new
            if tokens is not None:
                self._tokens = tokens
                self._dirty = True
            self._remember_weights(key, weights)
            self._schedule = schedule
            self._noise_cpu, self._seed_key = noise, seed_key
            if new.seed_mode == "per-frame" and (old.seed_mode != "per-frame" or old.seed != new.seed
                                                 or self._frame_gen is None):
                self._frame_gen = None  # re-seeded on the frame loop's device
        return new

    def _stage_noise(self, seed: int) -> torch.Tensor:
        """[5, C, h, w]: stage 0 is the diffusers pipelines' `randn_tensor` for this seed (CPU
        generator, float32), the others follow from the same generator (re-noise noises)."""
        cached = self._seed_cache.get(seed)
        if cached is None:
            gen = torch.Generator("cpu").manual_seed(seed)
            first = torch.randn((1, self.channels, *self.latent_hw), generator=gen, dtype=torch.float32)
            rest = torch.randn((4, self.channels, *self.latent_hw), generator=gen, dtype=torch.float32)
            cached = torch.cat([first, rest], 0)
            if len(self._seed_cache) >= 16:
                self._seed_cache.pop(next(iter(self._seed_cache)))
            self._seed_cache[seed] = cached
        return cached

    def _blend_noise(self, seeds, weights) -> torch.Tensor:
        """Weighted mix of the seeds' noises, rescaled to unit variance (engine/blend.py)."""
        return blend_noise([self._stage_noise(s) for s in seeds], weights)

    def _request_if_dirty(self) -> None:
        """Encode a changed prompt set (the empty prompt only for the warm-up: it passes through)."""
        with self._lock:
            tokens = self._tokens if self._dirty else None
            if tokens is not None and is_passthrough(tokens.prompt) and not self._warming:
                tokens = None  # kept dirty: a warm-up still encodes it
            else:
                self._dirty = False
        if tokens is not None and not self.worker.publish_cached(tokens.prompt):
            self.worker.request(tokens, None, cache=True)

    # -- state for the control side --------------------------------------------------------
    @property
    def active_prompt(self) -> Optional[str]:
        """The prompt (or `0.70*a + 0.30*b` blend) of the last output; "" while frames pass
        through unchanged; None before the first step."""
        return self._shown

    def _applied_prompt(self) -> str:
        applied = self._blend_applied
        return "" if applied is None else describe_blend(applied[0], applied[1])

    # -- the main loop's step --------------------------------------------------------------
    def _conditioning(self, rows: int) -> torch.Tensor:
        """The fixed-address [rows, 77, D] conditioning, rewritten only when the published
        conditioning or the blend weights changed."""
        self._request_if_dirty()
        try:
            cond = self.worker.latest() or self.worker.wait_first()
        except RuntimeError:
            with self._lock:
                self._dirty = True
            raise
        prompts = prompts_of_key(cond.prompt)
        weights = self._weights_for(cond.prompt, len(prompts))
        key = (cond.version, weights, rows)
        if self._cond is None or cond.version != self._cond.version:
            self.streams.wait(cond.event)
            self.streams.keep_alive(cond.embeds)
            self._cond = cond
        if self._embeds is None or key != self._embeds_key:
            w = torch.tensor(weights, dtype=torch.float32, device=self.device)
            w = (w / w.sum()).view(-1, 1, 1)
            mixed = (cond.embeds.float() * w).sum(0, keepdim=True).to(self.dtype)
            if self._embeds is None or self._embeds.shape[0] != rows:
                self._embeds = torch.empty((rows, *mixed.shape[1:]), device=self.device, dtype=self.dtype)
            self._embeds.copy_(mixed.expand(rows, -1, -1))
            self._embeds_key = key
            self._blend_applied = (prompts, weights)
        return self._embeds

    def _noise(self, params: Params, rows_per_stage: int, stages: int) -> torch.Tensor:
        """[stages + 1, rows_per_stage or 1, C, h, w] on the device."""
        if params.seed_mode == "per-frame":
            if self._frame_gen is None:
                self._frame_gen = torch.Generator(self.device).manual_seed(params.seed)
            return torch.randn((stages + 1, rows_per_stage, self.channels, *self.latent_hw),
                               generator=self._frame_gen, device=self.device).to(self.dtype)
        noise = self._on_device("noise", self._noise_cpu)[: stages + 1].to(self.dtype)
        if self.kind == "euler":  # a deterministic path: every stage's noise is the one added at the start
            noise = noise[:1].expand(stages + 1, -1, -1, -1)
        return noise.unsqueeze(1)

    @torch.no_grad()
    def step(self, frames: Sequence[np.ndarray], ids: Sequence[int]) -> list[FrameOut]:
        """Stylize 1..batch_size frames. Without stream batch the outputs are these frames, in order;
        with it they are the frames that finished in this call (k-1 calls late)."""
        if self._closed:
            raise RuntimeError("engine is closed")
        n = len(frames)
        if len(ids) != n:
            raise ValueError(f"{n} frames but {len(ids)} ids")
        with self._lock:
            params, schedule = self._params, self._schedule
            passthrough = is_passthrough(self._tokens.prompt) and not self._warming
        if not 1 <= n <= params.batch_size:
            raise ParamError("frames", f"a step takes 1..{params.batch_size} frames (the batch size), got {n}")
        x = to_device_batch(frames, self.size, self.device)
        if passthrough or self._shows_nothing_yet():
            return self._pass_through(x, ids)
        k = len(schedule.indices)
        if self.stream_batch and k > 1:
            return self._step_stream(x, list(ids), params, schedule)
        rows = params.batch_size if self._graphs is not None else n
        if rows > n:  # fixed shapes for a captured graph: pad with the last frame
            x = torch.cat([x, x[-1:].expand(rows - n, -1, -1, -1)], 0)
        embeds = self._conditioning(rows)
        prompt = self._applied_prompt()
        self._shown = prompt
        coef = self._on_device("coef", schedule.coef)
        t = self._on_device("t", schedule.timesteps)
        noise = self._noise(params, rows, k)
        guidance = self._guidance(params)
        if self.lllite is not None:
            self.lllite.before(x, params.lllite_strength, params.lllite_refresh)
        if self._graphs is not None:
            images = self._graphs.sequential(x, embeds, coef, t, noise, guidance)
        else:
            images = self.den.run_sequential(x, embeds, coef, t, noise, guidance)
        applied = self._blend_applied  # the prompt set (its weights may glide without a fresh start)
        images = self._blend_output(x, images, n, params, prompt_set_key(applied[0]) if applied else "")
        if self.lllite is not None:
            self.lllite.after(x, images, n)
        host = to_host_frames(images[:n], self.streams)
        return [FrameOut(int(i), host[j], prompt) for j, i in enumerate(ids)]

    def _guidance(self, params: Params) -> torch.Tensor:
        g = float(params.guidance) if params.cfg == "self" else 1.0
        cached = self._device_inputs.get("guidance")
        if cached is None or cached[0] != g:
            self._device_inputs["guidance"] = (g, torch.tensor(g, dtype=torch.float32, device=self.device))
        return self._device_inputs["guidance"][1]

    def _step_stream(self, x: torch.Tensor, ids: list, params: Params, schedule: SDSchedule) -> list[FrameOut]:
        b = params.batch_size
        k = len(schedule.indices)
        n = x.shape[0]
        if n < b:  # fixed rows: pad with the last frame; padded rows carry no id
            x = torch.cat([x, x[-1:].expand(b - n, -1, -1, -1)], 0)
        slots: list = [(i, None) for i in ids] + [None] * (b - n)
        key = (b, schedule.indices)
        if self._stream_key != key:  # first call, or a new batch size / schedule: start empty
            self._inflight = torch.zeros(((k - 1) * b, self.channels, *self.latent_hw), device=self.device,
                                         dtype=self.dtype)
            self._inflight_meta = [[None] * b for _ in range(k - 1)]
            self._stream_key = key
        embeds = self._conditioning(k * b)
        prompt = self._applied_prompt()
        self._shown = prompt
        coef_rows = self._on_device("coef", schedule.coef).repeat_interleave(b, 0)
        t_rows = self._on_device("t", schedule.timesteps).repeat_interleave(b, 0)
        noise = self._noise(params, b, k).expand(-1, b, -1, -1, -1)
        noise_rows = noise[:k].reshape(k * b, *noise.shape[2:])
        noise_next_rows = noise[1:k + 1].reshape(k * b, *noise.shape[2:])
        guidance = self._guidance(params)
        if self._graphs is not None:
            images = self._graphs.stream(x, embeds, coef_rows, t_rows, noise_rows, noise_next_rows, guidance,
                                         self._inflight)
        else:
            images = self.den.run_stream(x, embeds, coef_rows, t_rows, noise_rows, noise_next_rows, guidance,
                                         self._inflight)
        finished = self._inflight_meta[-1]
        self._inflight_meta = [[(s[0], prompt) if s is not None else None for s in slots]] + self._inflight_meta[:-1]
        keep = [(j, s) for j, s in enumerate(finished) if s is not None]
        if not keep:
            return []
        host = to_host_frames(images, self.streams)
        return [FrameOut(int(s[0]), host[j], s[1]) for j, s in keep]

    def _shows_nothing_yet(self) -> bool:
        """A new prompt was asked for after a start without one: until its conditioning is ready
        the latest conditioning is the warm-up's empty prompt, so frames keep passing through."""
        if self._warming:
            return False
        self._request_if_dirty()
        try:
            cond = self.worker.latest()
        except RuntimeError:  # no conditioning at all and the encode failed: ask again next time
            with self._lock:
                self._dirty = True
            raise
        return cond is not None and is_passthrough(cond.prompt)

    def _pass_through(self, x: torch.Tensor, ids: Sequence[int]) -> list[FrameOut]:
        """The ingested frames as they are; frames still in the stream-batch pipeline come out
        first (stylized), so the order of ids is kept."""
        outs = self.flush() if self.stream_batch else []
        self.forget_shown()
        host = to_host_frames(to_uint8_frames(x), self.streams)
        self._shown = ""
        return outs + [FrameOut(int(i), host[k], "") for k, i in enumerate(ids)]

    def flush(self) -> list[FrameOut]:
        """Stream batch: run the in-flight frames to the end (feeding grey padding); [] otherwise."""
        outs: list[FrameOut] = []
        if not self.stream_batch or self._inflight is None:
            return outs
        grey = np.full((*self.size, 3), 128, np.uint8)
        while any(s is not None for stage in self._inflight_meta for s in stage):
            with self._lock:
                params, schedule = self._params, self._schedule
            x = to_device_batch([grey], self.size, self.device)
            outs += self._step_stream(x, [], params, schedule)
        return outs

    # -- lifecycle -------------------------------------------------------------------------
    def _after_warmup(self) -> None:
        """The warm-up batch must not stay in the stream-batch pipeline."""
        if self.stream_batch:
            self.flush()
            self._stream_key = None


class _SDGraphs:
    """CUDA-graph replay of the denoiser's pass per (path, shapes); pieces compiled by Inductor
    unless the mode is `graphs`. Any capture failure falls back to eager, with a warning."""

    def __init__(self, den: SDDenoiser, device: torch.device, mode: str, progress: bool):
        self.den, self.device, self.mode, self.progress = den, torch.device(device), mode, progress
        if mode == "graphs":
            self.fns = {"encode": den.encode, "step": den.unet_step, "decode": den.decode_uint8}
        else:
            inductor = "max-autotune-no-cudagraphs" if mode == "max-autotune" else None
            self.fns = {name: torch.compile(fn, dynamic=False, mode=inductor)
                        for name, fn in (("encode", den.encode), ("step", den.unet_step), ("decode", den.decode_uint8))}
        self.pool = torch.cuda.graph_pool_handle()
        self._captured: dict = {}
        self.failed = False

    def _pass(self, path: str, args: list) -> torch.Tensor:
        den, f = self.den, self.fns
        if path == "seq":
            x, embeds, coef, t, noise, guidance = args
            k, n = coef.shape[0], x.shape[0]
            lat = den.start(f["encode"](x), noise[0], coef[0:1])
            for j in range(k):
                lat = f["step"](lat, t[j:j + 1].expand(n), embeds, coef[j:j + 1], noise[j], noise[j + 1], guidance)
            return f["decode"](lat)
        x, embeds, coef_rows, t_rows, noise_rows, noise_next_rows, guidance, inflight = args
        n = x.shape[0]
        lat0 = den.start(f["encode"](x), noise_rows[:n], coef_rows[:n])
        nxt = f["step"](torch.cat([lat0, inflight], 0), t_rows, embeds, coef_rows, noise_rows, noise_next_rows,
                        guidance)
        inflight.copy_(nxt[:-n])
        return f["decode"](nxt[-n:])

    def _run(self, path: str, args: list) -> torch.Tensor:
        eager = (lambda: self.den.run_sequential(*args)) if path == "seq" else (lambda: self.den.run_stream(*args))
        if self.failed:
            return eager()
        key = (path,) + tuple((tuple(a.shape), a.dtype) for a in args)
        entry = self._captured.get(key)
        if entry is None:
            try:
                entry = self._capture(path, args)
            except Exception as exc:  # keep the show going, eagerly
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running eager")
                self.failed = True
                return eager()
            self._captured[key] = entry
        graph, static, out = entry
        for dst, src in zip(static, args):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src, non_blocking=True)
        graph.replay()
        if path == "stream":  # the graph updated its own copy of the in-flight latents
            args[-1].copy_(static[-1], non_blocking=True)
        return out

    def _capture(self, path: str, args: list):
        announce(f"capturing the SD denoiser ({path}, batch {args[0].shape[0]})"
                 + (" (compiling first: about a minute)..." if not self._captured and self.mode != "graphs" else "..."),
                 enabled=self.progress)
        static = [a.clone() for a in args]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                warm = [a.clone() for a in static]
                self._pass(path, warm)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = self._pass(path, static)
        return graph, static, out

    def sequential(self, *args) -> torch.Tensor:
        return self._run("seq", list(args))

    def stream(self, *args) -> torch.Tensor:
        return self._run("stream", list(args))
