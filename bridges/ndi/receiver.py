"""NDI in: a thread that finds a source, receives its video and hands it on as RGB numpy arrays.

The loop:

1. no source yet: look in the finders' lists for the one `--ndi-in` asks for (`SourceQuery`); while
   it is missing, wait for list changes, the probe finder asking again four times a second (see
   `sources.py` for why), so a source that starts after the server is picked up when it appears;
2. found: `recv_connect` to it and `recv_capture_v2` video only, `timeout` at a time; each frame
   is read in the pixel format it comes in (the receiver asks the runtime for BGRX/BGRA, or UYVY
   with `color_format="uyvy"`), converted to HxWx3 RGB (`pixels.py`) and handed on with its `t`;
   a new size, pixel format or frame rate is announced, and simply followed (the engine resizes);
3. the connection gone (no connection and no video for `stale` seconds): announced once; the
   runtime keeps retrying the same address, and the finders are asked again every `stale / 2`
   seconds, so a source that comes back at a new address (a restarted program gets a new port)
   is followed.

There is no frame-rate cap: every frame is handed on at once. What happens to frames that come
faster than the engine is the server's business (its freshest-frame buffer). A frame that cannot
be read is counted and reported, and the loop goes on.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..bridge_thread import BridgeThread
from . import pixels
from ._ndilib import load_ndilib
from .metadata import frame_t
from .sources import Discovery, SourceQuery

# (id, HxWx3 RGB, recv perf_counter, recv wall clock, t)
FrameCallback = Callable[[int, np.ndarray, float, float, "float | None"], None]

# NDI frames get ids from here upward (Spout's start at 2^48), so a ZeroMQ subscriber can tell
# the sources apart.
NDI_ID_BASE = 2 << 48

COLOR_FORMATS = ("bgrx", "uyvy")


class NdiReceiver(BridgeThread):
    thread_name = "ndi-in"
    """Receives from the NDI source `source` (see `SourceQuery`) on its own thread.

    `on_frame(id, rgb, recv, recv_wall, t)` is called on that thread for every video frame;
    `on_error(reason)` gets unreadable frames and failures, `on_event(text)` connection and format
    changes. `extra_ips` and `groups` are NDI's comma-separated lists for discovery.
    """

    def __init__(
        self,
        source: str,
        on_frame: FrameCallback,
        *,
        on_error: Callable[[str], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        extra_ips: str | None = None,
        groups: str | None = None,
        color_format: str = "bgrx",
        ndilib: Any = None,
        recv_name: str = "node-server",
        timeout: float = 0.1,
        stale: float = 1.0,
        first_id: int = NDI_ID_BASE,
    ):
        if color_format not in COLOR_FORMATS:
            raise ValueError(f"color_format must be one of {COLOR_FORMATS}, got {color_format!r}")
        self.query = SourceQuery(source)
        self.on_frame = on_frame
        self.on_error = on_error or (lambda reason: None)
        self.on_event = on_event or (lambda text: None)
        self.extra_ips = extra_ips
        self.groups = groups
        self.color_format = color_format
        self.lib = load_ndilib(ndilib)
        self.recv_name = recv_name
        self.timeout = timeout
        self.stale = stale
        self._next_id = first_id
        self._init_thread()
        self.source: tuple[str, str] | None = None  # (NDI name, address) connected to
        self.format: tuple[int, int, int, int, int] | None = None  # (w, h, FourCC, rate N, rate D)
        self.connected = False  # frames are arriving
        self.gone = False  # the connection was lost and no frame has come since
        self.frames = 0  # frames handed on
        self.bad_frames = 0  # frames that could not be read
        self.connects = 0  # recv_connect calls

    @property
    def label(self) -> str:
        return f"ndi {self.query.describe()}"

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        lib = self.lib
        finder = recv = None
        try:
            finder = Discovery(lib, self.extra_ips, self.groups)
            settings = lib.RecvCreateV3()
            settings.color_format = (lib.RECV_COLOR_FORMAT_UYVY_BGRA if self.color_format == "uyvy"
                                     else lib.RECV_COLOR_FORMAT_BGRX_BGRA)
            settings.bandwidth = lib.RECV_BANDWIDTH_HIGHEST
            settings.allow_video_fields = False  # progressive frames only
            settings.ndi_recv_name = self.recv_name
            recv = lib.recv_create_v3(settings)
            if recv is None:
                self.on_error("NDI receiver could not be created")
                return
            self._loop(recv, finder)
        except Exception as exc:  # never let the thread die silently
            self.on_error(f"NDI receiver stopped: {type(exc).__name__}: {exc}")
        finally:
            try:
                if recv is not None:
                    lib.recv_destroy(recv)
                if finder is not None:
                    finder.close()
            except Exception:
                pass

    def _loop(self, recv: Any, finder: Discovery) -> None:
        lib = self.lib
        timeout_ms = max(1, int(self.timeout * 1000))
        last_video = last_check = time.monotonic()
        while not self._stop.is_set():
            try:
                if self.source is None:
                    self._look(recv, finder, timeout_ms)
                    last_video = last_check = time.monotonic()
                    continue
                kind, video, _, _ = lib.recv_capture_v2(recv, timeout_ms, True, False, False)
                now = time.monotonic()
                if kind == lib.FRAME_TYPE_VIDEO:
                    last_video = now
                    self._frame(recv, video)
                    continue
                if now - last_check < self.stale / 2:
                    continue
                last_check = now
                if lib.recv_get_no_connections(recv) > 0 or now - last_video < self.stale:
                    continue
                if self.connected:
                    self.connected, self.gone = False, True
                    self.on_event(f"{self.label}: source gone; waiting for it")
                finder.tick()
                self._follow(recv, finder)
            except Exception as exc:  # a binding failure on one call: report, slow down, go on
                self.on_error(f"NDI receive failed: {type(exc).__name__}: {exc}")
                self._stop.wait(self.timeout)

    def _look(self, recv: Any, finder: Discovery, timeout_ms: int) -> None:
        """Not connected yet: wait for the source to be listed, then connect."""
        if self._follow(recv, finder):
            return
        finder.wait(timeout_ms)
        if self._follow(recv, finder):
            return
        finder.tick()

    def _follow(self, recv: Any, finder: Discovery) -> bool:
        """Connect to the source the query picks if it is not the one connected to; True if it did."""
        pick = self.query.pick(finder.sources())
        if pick is None or pick == self.source:
            return False
        raw = finder.raw_source(*pick)
        if raw is None:
            return False
        self.lib.recv_connect(recv, raw)  # the runtime copies the source's name and address
        self.connects += 1
        moved = self.source is not None
        self.source = pick
        self.format = None
        self.on_event(f'{self.label}: {"moved to" if moved else "connecting to"} "{pick[0]}" at {pick[1] or "?"}')
        return True

    def _frame(self, recv: Any, video: Any) -> None:
        recv_t, recv_wall = time.perf_counter(), time.time()
        lib = self.lib
        try:
            code = int(video.FourCC)
            width, height = int(video.xres), int(video.yres)
            rate = (int(video.frame_rate_N), int(video.frame_rate_D))
            t = frame_t(video.metadata, video.timestamp)
            data = video.data  # ndi-python hands a copy, so the frame can be freed at once
        except Exception as exc:
            self.bad_frames += 1
            self.on_error(f"{self.label}: unreadable frame: {type(exc).__name__}: {exc}")
            return
        finally:
            lib.recv_free_video_v2(recv, video)
        fmt = (width, height, code, *rate)
        if fmt != self.format and _changed(self.format, fmt):
            self.format = fmt
            fps = f"{rate[0] / rate[1]:.2f} fps" if rate[1] > 0 else "rate unknown"
            self.on_event(f"{self.label}: {width}x{height} {pixels.describe(code)} {fps}")
        if not self.connected:
            self.connected = True
            if self.gone:
                self.gone = False
                self.on_event(f"{self.label}: receiving again")
        try:
            rgb = pixels.to_rgb(pixels.frame_view(data, code, width, height), code)
        except Exception as exc:  # a frame this bridge cannot read: count, report, go on
            self.bad_frames += 1
            self.on_error(f"{self.label}: frame rejected: {exc}")
            return
        frame_id = self._next_id
        self._next_id += 1
        self.frames += 1
        try:
            self.on_frame(frame_id, rgb, recv_t, recv_wall, t)
        except Exception as exc:  # a bug downstream must not stop receiving
            self.on_error(f"NDI frame {frame_id} rejected: {exc}")


def _fps(rate_n: int, rate_d: int) -> float:
    return rate_n / rate_d if rate_d > 0 else 0.0


def _changed(old: tuple | None, new: tuple) -> bool:
    """A new size or pixel format, or a frame rate more than 10% away from the one announced."""
    if old is None or old[:3] != new[:3]:
        return True
    before, after = _fps(*old[3:]), _fps(*new[3:])
    return abs(after - before) > 0.1 * max(before, 1e-9)
