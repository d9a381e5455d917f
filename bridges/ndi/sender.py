"""NDI out: a thread that owns an NDI sender and sends the newest output frame.

`publish(fields, image)` is called by the server's frame loop: it only stores the frame and wakes
the sender thread (never blocks on NDI). The thread converts the RGB frame to BGRX (alpha 255:
receivers such as Resolume composite the output as opaque) or UYVY and sends it with
`send_send_video_v2`, the frame's id, `t` and latency in its metadata (`metadata.py`). When it is
slower than the engine it skips to the newest frame (`skipped` counts the frames it never sent).

The sender is created with `clock_video=False`: the runtime does not pace sends to the announced
frame rate, so each frame leaves as soon as the engine made it; the rate written into the frames
is the engine's measured output rate, for receivers that display it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from ..bridge_thread import SenderThread
from . import pixels
from ._ndilib import load_ndilib, split_list
from .metadata import format_output

MAX_NAME = 255
PIXEL_FORMATS = ("bgrx", "uyvy")


class RateMeter:
    """The engine's output rate from the times frames are published (a moving average).

    The rate it reports moves only when the measured rate leaves a band of +-`band` around it, so
    receivers are not told of a new frame rate on every frame.
    """

    def __init__(self, smoothing: float = 0.1, default: float = 30.0, band: float = 0.1):
        self.smoothing = smoothing
        self.band = band
        self._last: float | None = None
        self._interval: float | None = None
        self._fps = default

    def add(self, t: float) -> None:
        if self._last is not None and t > self._last:
            dt = t - self._last
            self._interval = dt if self._interval is None else self._interval + self.smoothing * (dt - self._interval)
        self._last = t

    def rate(self) -> tuple[int, int]:
        """(frame_rate_N, frame_rate_D) for NDI: the rate in thousandths, 1..1000 fps."""
        if self._interval:
            fps = min(max(1.0 / self._interval, 1.0), 1000.0)
            if abs(fps - self._fps) > self.band * self._fps:
                self._fps = round(fps, 2)
        return int(round(self._fps * 1000)), 1000


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "\0" in name or len(name.encode()) > MAX_NAME:
        raise ValueError(f"NDI source name must be 1..{MAX_NAME} bytes, got {name!r}")
    return name


class NdiSender(SenderThread):
    thread_name = "ndi-out"
    """Sends frames as the NDI source `name` (seen as `MACHINE (name)`) from its own thread."""

    def __init__(
        self,
        name: str,
        *,
        on_error: Callable[[str], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        groups: str | None = None,
        pixel_format: str = "bgrx",
        ndilib: Any = None,
    ):
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
        self.name = check_name(name)
        self.on_error = on_error or (lambda reason: None)
        self.on_event = on_event or (lambda text: None)
        self.groups = ",".join(split_list(groups)) or None
        self.pixel_format = pixel_format
        self.lib = load_ndilib(ndilib)
        self._init_thread()
        self._sender: Any = None
        self.meter = RateMeter()
        self.ndi_name: str | None = None  # the full name the runtime publishes, once created
        self.ready = threading.Event()  # set once the sender exists (or failed to)
        self.sent = 0
        self.failures = 0
        self._announced: tuple[int, int] | None = None  # the size last announced

    @property
    def label(self) -> str:
        return f'ndi "{self.name}"'

    def publish(self, fields: dict[str, Any], image: Any) -> None:
        """Hand over one output frame (HxWx3 uint8, top-left origin); never blocks."""
        self.meter.add(time.perf_counter())
        self._hand_over((fields, image))

    def connections(self) -> int:
        """How many NDI receivers are connected to this source now (0 before it exists)."""
        sender = self._sender
        return int(self.lib.send_get_no_connections(sender, 0)) if sender is not None else 0

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        lib = self.lib
        try:
            settings = lib.SendCreate()
            settings.ndi_name = self.name
            if self.groups:
                settings.groups = self.groups
            settings.clock_video = False
            settings.clock_audio = False
            sender = lib.send_create(settings)
        except Exception as exc:
            sender = None
            self.on_error(f"NDI sender could not be created: {type(exc).__name__}: {exc}")
        if sender is None:
            if self.failures == 0:
                self.on_error(f"{self.label}: NDI sender could not be created")
            self.failures += 1
            self.ready.set()
            return
        self._sender = sender
        try:
            try:
                source = lib.send_get_source_name(sender)
                self.ndi_name = str(getattr(source, "ndi_name", "") or "") or None
            except Exception:
                self.ndi_name = None
            self.ready.set()
            self._loop(sender)
        except Exception as exc:  # never let the thread die silently
            self.on_error(f"NDI sender stopped: {type(exc).__name__}: {exc}")
        finally:
            self._sender = None
            try:
                lib.send_destroy(sender)
            except Exception:
                pass

    def _loop(self, sender: Any) -> None:
        lib = self.lib
        code = pixels.UYVY if self.pixel_format == "uyvy" else pixels.BGRX
        fourcc = lib.FOURCC_VIDEO_TYPE_UYVY if code == pixels.UYVY else lib.FOURCC_VIDEO_TYPE_BGRX
        buffer: np.ndarray | None = None
        shape: tuple[int, int] | None = None
        while True:
            item = self._next()
            if item is None:
                return
            fields, image = item
            try:
                rgb = _as_rgb(image)
            except ValueError as exc:
                self.failures += 1
                self.on_error(f"{self.label}: output frame not sent: {exc}")
                continue
            h, w = rgb.shape[:2]
            if shape != (h, w):
                # 4:2:2 needs an even width: an odd one gets its last column repeated
                width = w + (w % 2)
                buffer = np.empty((h, width, 2), np.uint8) if code == pixels.UYVY else np.full((h, width, 4), 255, np.uint8)
                shape = (h, w)
            if w % 2:
                rgb = np.concatenate([rgb, rgb[:, -1:]], axis=1)
            if code == pixels.UYVY:
                pixels.rgb_to_uyvy(rgb, buffer)
            else:
                pixels.rgb_to_bgrx(rgb, buffer)
            frame = lib.VideoFrameV2()
            frame.data = buffer  # the binding keeps only a pointer: `buffer` outlives the send
            frame.FourCC = fourcc
            frame.frame_rate_N, frame.frame_rate_D = self.meter.rate()
            frame.timecode = lib.SEND_TIMECODE_SYNTHESIZE
            frame.metadata = format_output(fields)
            try:
                lib.send_send_video_v2(sender, frame)
            except Exception as exc:
                self.failures += 1
                if self.failures == 1:  # once, not at video rate
                    self.on_error(f"{self.label}: send failed: {type(exc).__name__}: {exc}")
                continue
            if self._announced != (w, h):
                self._announced = (w, h)
                self.on_event(f"{self.label}: sending {w}x{h} {pixels.describe(code)}")
            self.sent += 1


def _as_rgb(image: Any) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> HxWx3 (a view where possible)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"frames must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return a[:, :, :3]
