"""The conditioning worker: re-encodes only when asked, on its own thread and CUDA stream.

The frame loop never waits for it once a first conditioning exists. Requests coalesce (the
newest wins), a finished conditioning is published with a CUDA event that the main stream waits
on *on the device*, and the previous one stays referenced until the swap, so the denoiser always
reads a complete buffer (double buffering). Text-with-frame embeddings of earlier prompts are
kept in an LRU cache, so returning to a prompt costs no encode under the `on-change` policy.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

from .streams import Streams, canonical


class Tokens(Protocol):
    """A prompt (set) tokenised by an encoder; `prompt` is the key its conditioning is cached by."""

    prompt: str


class Encoder(Protocol):
    """What the worker runs: DreamLite's `PromptSetEncoder` or SD's `ClipPromptEncoder`. It may have
    a `device` (where it runs; default: the engine's)."""

    def encode(self, tokens: Tokens, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Conditioning:
    """One finished conditioning: what the denoiser reads, and how it was made."""

    prompt: str
    embeds: torch.Tensor  # [n, Lc, D], n = 1 (one representative frame) or the batch size
    mask: torch.Tensor  # [n, Lc]
    event: Optional[object] = None  # CUDA event recorded on the side stream after the encode
    version: int = 0  # increases with every publish
    encode_ms: float = 0.0
    created: float = field(default_factory=time.perf_counter)


@dataclass
class _Request:
    tokens: Tokens
    frames: torch.Tensor  # [n,3,H,W] in [0,1] on the device
    ready: Optional[object]  # event after the frames were written on the main stream
    cache: bool  # store the result in the prompt cache
    ticket: int  # order of the request among requests and cache publishes


@dataclass
class _Warm:
    """An encode whose result nobody uses: it only makes its shape compile and capture now."""

    request: _Request
    done: threading.Event = field(default_factory=threading.Event)
    error: Optional[BaseException] = None


class ConditioningWorker:
    """Owns the encoder, its thread, its stream and the prompt cache."""

    # Test hook: hand every conditioning over through the copy path even when the encoder shares
    # the engine's device (the two-device path, run on one GPU or the CPU).
    always_transfer = False

    def __init__(self, encoder: Encoder, streams: Streams, *, cache_size: int = 32):
        self.encoder = encoder
        self.streams = streams  # the engine's (main) device
        # The encoder may live on another device (`--encoder-device`): its thread's stream lives
        # there, and frames and conditionings cross over with one copy each (`_handover`).
        self.encoder_streams = Streams(getattr(encoder, "device", streams.device))
        self.stream = self.encoder_streams.new_stream()
        self.transfer = self.always_transfer or canonical(self.encoder_streams.device) != canonical(streams.device)
        self.copy_stream = streams.new_stream() if self.transfer else None  # main-device side of a copy
        self.cache_size = cache_size
        self._cache: "OrderedDict[str, Conditioning]" = OrderedDict()
        self._lock = threading.Condition()
        self._pending: Optional[_Request] = None
        self._warm: list[_Warm] = []  # `warm` jobs, run when no request waits
        self._latest: Optional[Conditioning] = None
        self._version = 0
        self._tickets = 0  # handed out in order to requests and cached publishes
        self._shown_ticket = 0  # ticket of what is published now: older encodes are not shown
        self._busy = False
        self._error: Optional[BaseException] = None  # last failure (fatal before a first success)
        self._unreported: Optional[BaseException] = None
        self.failures = 0
        self._closed = False
        self.encode_count = 0
        self._thread = threading.Thread(target=self._run, name="conditioning-worker", daemon=True)
        self._thread.start()

    def limit_sms(self, sms: int) -> Optional[str]:
        """Run the encodes on at most `sms` multiprocessors of the encoder's GPU (a CUDA green
        context; see streams.partitioned_stream). Call before the first encode. Returns None when
        done, else why not (the plain stream stays)."""
        from .streams import partitioned_stream

        stream, reason = partitioned_stream(self.encoder_streams.device, sms)
        if stream is not None:
            self.stream = stream
        return reason

    # -- called by the frame loop ----------------------------------------------------------
    def cached(self, prompt: str) -> Optional[Conditioning]:
        with self._lock:
            cond = self._cache.get(prompt)
            if cond is not None:
                self._cache.move_to_end(prompt)
            return cond

    def publish_cached(self, prompt: str) -> bool:
        """Make a cached conditioning current without encoding; False if `prompt` is not cached."""
        with self._lock:
            cond = self._cache.get(prompt)
            if cond is None:
                return False
            self._cache.move_to_end(prompt)
            self._pending = None  # an older request must not overwrite this newer choice
            self._tickets += 1
            self._shown_ticket = self._tickets
            self._publish(Conditioning(cond.prompt, cond.embeds, cond.mask, cond.event, 0, cond.encode_ms))
            return True

    def request(self, tokens: Tokens, frames: torch.Tensor, *, cache: bool) -> None:
        """Ask for an encode of `tokens` with `frames`; replaces any request not yet started."""
        ready = self.streams.record()
        with self._lock:
            self._tickets += 1
            self._pending = _Request(tokens, frames, ready, cache, self._tickets)
            self._lock.notify_all()

    def warm(self, jobs, timeout: Optional[float] = None) -> list[BaseException]:
        """Encode each `(tokens, frames)` once on the worker's thread and stream, publishing and
        caching nothing and not counted in `encode_count`, and wait for them: a shape that
        compiles or captures does it now (the warm-up), not when a prompt first needs it. Returns
        the failures (the show can go on without a primed shape)."""
        ready = self.streams.record()
        items = [_Warm(_Request(tokens, frames, ready, False, 0)) for tokens, frames in jobs]
        with self._lock:
            if self._closed:
                return []
            self._warm.extend(items)
            self._lock.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for item in items:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not item.done.wait(left):
                raise TimeoutError("the encoder warm-up did not finish in time")
        return [item.error for item in items if item.error is not None]

    def latest(self) -> Optional[Conditioning]:
        """The newest published conditioning. A failed encode leaves the previous one in place."""
        with self._lock:
            if self._latest is None and self._error is not None:
                self._raise_failure()
            return self._latest

    def _raise_failure(self) -> None:
        """No conditioning exists and the encode failed: raise once, so a retry can follow."""
        err, self._error, self._unreported = self._error, None, None
        raise RuntimeError(f"the conditioning encoder failed: {type(err).__name__}: {err}") from err

    def pop_error(self) -> Optional[BaseException]:
        """The last encode failure not yet reported (then forgotten), or None."""
        with self._lock:
            err, self._unreported = self._unreported, None
            return err

    def wait_first(self, timeout: Optional[float] = None) -> Conditioning:
        """Block until a conditioning exists (only the very first frames ever wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._latest is None:
                if self._error is not None:
                    self._raise_failure()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no conditioning was produced in time")
                self._lock.wait(left)
            return self._latest

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._busy or self._pending is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for item in self._warm:  # nobody waits for a warm-up that will not run
                item.done.set()
            self._warm.clear()
            self._lock.notify_all()
        self._thread.join(timeout=10)

    # -- the worker thread -----------------------------------------------------------------
    def _publish(self, cond: Conditioning) -> None:
        self._version += 1
        cond.version = self._version
        self._latest = cond
        self._lock.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._warm and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                if self._pending is None:  # a warm-up job, when no real request waits
                    self._run_warm(self._warm.pop(0))
                    continue
                req, self._pending = self._pending, None
                self._busy = True
            try:
                cond = self._encode(req)
            except Exception as exc:  # e.g. out of memory: keep the show going on the old conditioning
                with self._lock:
                    self._error = self._unreported = exc
                    self.failures += 1
                    self._busy = False
                    self._lock.notify_all()
                continue
            with self._lock:
                self._busy = False
                if req.cache:
                    self._cache[cond.prompt] = cond
                    self._cache.move_to_end(cond.prompt)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
                if req.ticket > self._shown_ticket:  # a newer choice may already be showing
                    self._shown_ticket = req.ticket
                    self._publish(cond)

    def _run_warm(self, item: _Warm) -> None:
        """One `warm` job (called holding the lock, released for the encode)."""
        self._busy = True
        self._lock.release()
        try:
            self._encode(item.request, counted=False)
        except Exception as exc:  # reported by `warm`; the worker goes on
            item.error = exc
        finally:
            self._lock.acquire()
            self._busy = False
            item.done.set()

    def _encode(self, req: _Request, counted: bool = True) -> Conditioning:
        start = time.perf_counter()
        if self.transfer:
            embeds, mask, event = self._encode_elsewhere(req)
        else:
            with self.streams.use(self.stream):
                self.streams.wait(req.ready, self.stream)
                self.streams.keep_alive(req.frames, self.stream)
                embeds, mask = self.encoder.encode(req.tokens, req.frames)
                event = self.streams.record(self.stream)
        if counted:
            self.encode_count += 1
        return Conditioning(req.tokens.prompt, embeds, mask, event, 0, (time.perf_counter() - start) * 1e3)

    def _encode_elsewhere(self, req: _Request):
        """The encode on the encoder's device: the frames go there and the conditioning comes back
        with one copy each, ordered by events on the device (the host never waits). The copies run
        on `copy_stream`, a side stream of the main device, so the frame loop's stream only ever
        waits for the finished conditioning's event."""
        main, side = self.streams, self.encoder_streams
        frames = req.frames
        copied = None
        if frames is not None:
            with side.use(self.stream), main.use(self.copy_stream):
                main.wait(req.ready, self.copy_stream)  # the frames were written on the main stream
                main.keep_alive(frames, self.copy_stream)
                frames = _copy_to(frames, side.device)  # lands in the encoder thread's stream's memory
                copied = main.record(self.copy_stream)
        with side.use(self.stream):
            side.wait(copied, self.stream)
            side.keep_alive(frames, self.stream)
            embeds, mask = self.encoder.encode(req.tokens, frames)
            done = side.record(self.stream)
        with side.use(self.stream), main.use(self.copy_stream):
            main.wait(done, self.copy_stream)
            side.keep_alive(embeds, self.copy_stream)
            side.keep_alive(mask, self.copy_stream)
            embeds, mask = _copy_to(embeds, main.device), _copy_to(mask, main.device)
            event = main.record(self.copy_stream)
        return embeds, mask, event


def _copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One asynchronous copy of `tensor` onto `device` (a new tensor even on the same device). On
    the current streams: across two GPUs PyTorch runs it on the source device's stream and orders
    it against the destination's with events; the host does not wait."""
    return tensor.to(device, copy=True, non_blocking=True)
