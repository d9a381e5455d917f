"""CUDA streams and events that degrade to no-ops on the CPU.

The engine is written once against this module: on a CUDA device the conditioning encoder runs on
its own stream and hands its result over through an event; on the CPU the same calls do nothing
and plain threads provide the concurrency.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch


def canonical(device) -> torch.device:
    """`device` with its index (`cuda` -> `cuda:N`, the current device), so equal devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Streams:
    """Stream helpers bound to one device."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def new_stream(self, priority: int = 0) -> Optional["torch.cuda.Stream"]:
        """A new stream (None on the CPU); a negative `priority` is served first by the GPU."""
        return torch.cuda.Stream(device=self.device, priority=priority) if self.cuda else None

    def current(self) -> Optional["torch.cuda.Stream"]:
        return torch.cuda.current_stream(self.device) if self.cuda else None

    def use(self, stream) -> contextlib.AbstractContextManager:
        """Run the enclosed work on `stream` (no-op on the CPU)."""
        if self.cuda and stream is not None:
            return torch.cuda.stream(stream)
        return contextlib.nullcontext()

    def record(self, stream=None) -> Optional["torch.cuda.Event"]:
        """An event marking the work queued so far on `stream` (the current one by default)."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(stream if stream is not None else self.current())
        return event

    def wait(self, event, stream=None) -> None:
        """Make `stream` wait for `event` on the device; the host never blocks."""
        if self.cuda and event is not None:
            (stream if stream is not None else self.current()).wait_event(event)

    def keep_alive(self, tensor: torch.Tensor, stream=None) -> None:
        """Tell the caching allocator that `tensor` is used on `stream` too (a stream of another
        device than the tensor's needs nothing: a copy between devices is ordered by events)."""
        if self.cuda and tensor is not None and tensor.is_cuda:
            stream = stream if stream is not None else self.current()
            if stream.device == tensor.device:
                tensor.record_stream(stream)


_GREEN_CONTEXTS: list = []


def partitioned_stream(device: torch.device, sms: int):
    """A stream whose kernels run on at most `sms` of the GPU's multiprocessors (a CUDA green
    context), so work on it (the encoder) cannot take the SMs the frame stream needs. Returns
    (stream, None) or (None, reason) where the platform or this torch build cannot: the caller
    keeps its plain stream. The CPU has no such thing (None, "cpu")."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, "not a CUDA device"
    try:
        from torch.cuda import green_contexts
    except ImportError:
        return None, f"torch {torch.__version__} has no torch.cuda.green_contexts"
    if not getattr(green_contexts, "SUPPORTED", True):
        return None, "this torch build has no green-context support"
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).multi_processor_count
    if not 0 < sms < total:
        return None, f"sms must be between 1 and {total - 1} (this GPU has {total}), got {sms}"
    cls = green_contexts.GreenContext
    try:
        try:
            context = cls.create(num_sms=sms, device_id=index)  # torch >= 2.12: keyword-only
        except TypeError:
            context = cls.create(sms, index)  # torch 2.10's positional form
        if not hasattr(context, "Stream"):  # 2.10: only set_context(), which swaps in the legacy stream
            return None, f"torch {torch.__version__}'s GreenContext has no Stream()"
        stream = context.Stream()
    except Exception as exc:  # driver or runtime refused (old driver, MIG, no support)
        return None, f"{type(exc).__name__}: {exc}"
    _GREEN_CONTEXTS.append(context)  # a context must outlive its stream: keep it for the process
    return stream, None
