"""A third-party NDI peer for the tests: a sender and a receiver written straight against the NDI
SDK's calls (ndi-python), sharing no code with `bridges.ndi`, so the bridge is checked against the
SDK's own behaviour and not against itself.

Discovery on loopback: a finder created with extra IPs 127.0.0.1 asks TCP port 5960 on this
machine, which every NDI program here listens on with the port shared; one finder therefore sees
one program's sources. `find_source` makes a new finder until the name shows up.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

ndi = pytest.importorskip("NDIlib", reason="ndi-python is not installed (pip install 'node-server[ndi]')")
assert ndi.initialize()

LOOPBACK = "127.0.0.1"


def unique(prefix: str) -> str:
    """A source name no parallel test run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def find_source(name: str, timeout: float = 60.0):
    """The (ndi_name, url_address) of the source whose stream name is `name`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        settings = ndi.FindCreate()
        settings.extra_ips = LOOPBACK
        finder = ndi.find_create_v2(settings)
        try:
            renew_at = time.monotonic() + 1.0
            while time.monotonic() < renew_at:
                ndi.find_wait_for_sources(finder, 200)
                for s in ndi.find_get_current_sources(finder):
                    if s.ndi_name.endswith(f"({name})"):
                        return s.ndi_name, s.url_address
        finally:
            ndi.find_destroy(finder)
    raise AssertionError(f"NDI source {name!r} not found in {timeout} s")


class PeerSender:
    """An NDI source sending BGRX (or UYVY) frames that the test hands it, one `send` at a time."""

    def __init__(self, name: str):
        self.name = name
        settings = ndi.SendCreate()
        settings.ndi_name = name
        settings.clock_video = False
        self.instance = ndi.send_create(settings)
        assert self.instance is not None
        self._keep = None

    def send_rgb(self, rgb: np.ndarray, metadata: str | None = None) -> None:
        h, w = rgb.shape[:2]
        bgrx = np.empty((h, w, 4), np.uint8)
        bgrx[..., 0], bgrx[..., 1], bgrx[..., 2], bgrx[..., 3] = rgb[..., 2], rgb[..., 1], rgb[..., 0], 255
        self.send_raw(bgrx, ndi.FOURCC_VIDEO_TYPE_BGRX, metadata)

    def send_raw(self, data: np.ndarray, fourcc, metadata: str | None = None) -> None:
        frame = ndi.VideoFrameV2()
        frame.data = data
        frame.FourCC = fourcc
        frame.frame_rate_N, frame.frame_rate_D = 30, 1
        frame.timecode = ndi.SEND_TIMECODE_SYNTHESIZE
        if metadata:
            frame.metadata = metadata
        self._keep = data
        ndi.send_send_video_v2(self.instance, frame)

    def connections(self) -> int:
        return ndi.send_get_no_connections(self.instance, 0)

    def close(self) -> None:
        if self.instance is not None:
            ndi.send_destroy(self.instance)
            self.instance = None


class PeerReceiver:
    """An NDI receiver connected to the source `name`, reading BGRX/BGRA frames as RGB."""

    def __init__(self, name: str, timeout: float = 60.0, color_format=None):
        self.ndi_name, self.address = find_source(name, timeout)
        settings = ndi.RecvCreateV3()
        settings.color_format = ndi.RECV_COLOR_FORMAT_BGRX_BGRA if color_format is None else color_format
        settings.allow_video_fields = False
        self.instance = ndi.recv_create_v3(settings)
        source = ndi.Source()
        source.ndi_name = self.ndi_name
        source.url_address = self.address
        ndi.recv_connect(self.instance, source)

    def frame(self, timeout: float = 30.0):
        """The next video frame: (fourcc, HxWx4 or HxWx2 array copy, metadata), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kind, video, _, _ = ndi.recv_capture_v2(self.instance, 100, True, False, False)
            if kind == ndi.FRAME_TYPE_VIDEO:
                try:
                    return int(video.FourCC), np.array(video.data), video.metadata
                finally:
                    ndi.recv_free_video_v2(self.instance, video)
        return None

    def rgb(self, timeout: float = 30.0):
        """The next frame as (HxWx3 RGB, metadata), or None."""
        got = self.frame(timeout)
        if got is None:
            return None
        fourcc, data, metadata = got
        assert fourcc in (int(ndi.FOURCC_VIDEO_TYPE_BGRX), int(ndi.FOURCC_VIDEO_TYPE_BGRA)), fourcc
        return np.ascontiguousarray(data[:, :, 2::-1]), metadata

    def close(self) -> None:
        if self.instance is not None:
            ndi.recv_destroy(self.instance)
            self.instance = None
