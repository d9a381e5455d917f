"""The NDI bridge over real NDI on loopback: `NdiReceiver` and `NdiSender` against a peer written
straight on the NDI SDK (tests/ndi_peer.py). Discovery uses extra IPs 127.0.0.1 (no mDNS here).

NDI's video codec is lossy (SpeedHQ, 4:2:2), so pictures are compared block by block: the mean of
each block's interior (edges excluded) must be within TOL levels of what was sent. Measured here:
the runtime's own decode to BGRX moves a saturated blue block by up to 12 levels, its UYVY
output read with our BT.709 conversion by up to 4. Any two colours of the pattern differ by at least
60 levels, so a flipped, transposed or channel-swapped picture fails by far.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

from ndi_peer import LOOPBACK, PeerReceiver, PeerSender, ndi, unique

from bridges.ndi import NDI_ID_BASE, NdiReceiver, NdiSender, list_sources, pixels
from node_server.cli import main

TOL = 16  # levels (of 255) a block's interior mean may move through NDI's codec
BLOCK = 16
COLOURS = np.array([[230, 30, 30], [30, 200, 40], [40, 40, 220], [240, 240, 240], [250, 220, 20], [20, 210, 220],
                    [200, 40, 200], [30, 30, 30], [128, 128, 128], [250, 140, 20], [90, 30, 160], [120, 200, 120]],
                   np.uint8)


def pattern(w: int = 64, h: int = 48, shift: int = 0) -> np.ndarray:
    """A grid of distinct colours (no symmetry: a flip, transpose or channel swap changes it)."""
    rows, cols = h // BLOCK, w // BLOCK
    grid = (np.arange(rows * cols).reshape(rows, cols) + shift) % len(COLOURS)
    return np.repeat(np.repeat(COLOURS[grid], BLOCK, 0), BLOCK, 1)


def test_pattern_colours_are_far_apart():
    d = np.abs(COLOURS[:, None].astype(int) - COLOURS[None].astype(int)).max(-1)
    assert d[~np.eye(len(COLOURS), dtype=bool)].min() >= 60 > 3 * TOL


def block_means(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = BLOCK // 4
    return np.array([[rgb[r + m:r + BLOCK - m, c + m:c + BLOCK - m].reshape(-1, 3).mean(0)
                      for c in range(0, w, BLOCK)] for r in range(0, h, BLOCK)])


def assert_same_picture(got: np.ndarray, sent: np.ndarray) -> None:
    assert got.shape == sent.shape
    err = np.abs(block_means(got) - block_means(sent)).max()
    assert err <= TOL, f"block means differ by {err:.1f} levels"


class Collect:
    """The receiver's callbacks: frames, errors and events, thread-safe enough for tests."""

    def __init__(self):
        self.frames: list[tuple] = []
        self.errors: list[str] = []
        self.events: list[str] = []
        self.lock = threading.Lock()

    def on_frame(self, *args):
        with self.lock:
            self.frames.append(args)

    def wait(self, pred, timeout=60.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self):
                    return
            time.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}; events {self.events}, errors {self.errors}")


def feed(sender: PeerSender, picture: np.ndarray, until, metadata=None, timeout=60.0, what="frames"):
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out feeding {what}")
        sender.send_rgb(picture, metadata)
        time.sleep(0.02)


@pytest.fixture
def receiver_for():
    made = []

    def make(name, **kw):
        got = Collect()
        r = NdiReceiver(name, got.on_frame, on_error=got.errors.append, on_event=got.events.append,
                        extra_ips=LOOPBACK, **kw)
        r.start()
        made.append(r)
        return r, got

    yield make
    for r in made:
        assert r.close(timeout=5.0)


def test_late_source_is_picked_up_with_colours_orientation_and_t(receiver_for):
    name = unique("late")
    receiver, got = receiver_for(name)
    time.sleep(1.5)  # nothing there yet: the receiver keeps looking
    assert got.frames == [] and receiver.source is None and receiver.connects == 0
    sender = PeerSender(name)
    try:
        picture = pattern(64, 48)
        feed(sender, picture, lambda: len(got.frames) >= 3, metadata='<node_server t="42.5"/>')
    finally:
        sender.close()
    frame_id, rgb, recv, recv_wall, t = got.frames[-1]
    assert got.frames[0][0] == NDI_ID_BASE and frame_id == NDI_ID_BASE + len(got.frames) - 1
    assert rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert_same_picture(rgb, picture)
    assert t == 42.5  # the sender's own clock, echoed as the frame's t
    assert recv_wall == pytest.approx(time.time(), abs=60)
    assert receiver.source[0].endswith(f"({name})") and receiver.source[1].startswith("127.0.0.1:")
    assert any("connecting to" in e for e in got.events)
    assert any(e.endswith("64x48 BGRX 30.00 fps") for e in got.events), got.events
    assert got.errors == []


def test_size_change_mid_stream_is_followed(receiver_for):
    name = unique("resize")
    receiver, got = receiver_for(name)
    sender = PeerSender(name)
    try:
        small, large = pattern(64, 48), pattern(96, 64, shift=5)
        feed(sender, small, lambda: len(got.frames) >= 2)
        feed(sender, large, lambda: got.frames[-1][1].shape == (64, 96, 3))
    finally:
        sender.close()
    assert_same_picture(got.frames[-1][1], large)
    sizes = [e.split(": ")[-1] for e in got.events if "fps" in e]
    assert sizes[:2] == ["64x48 BGRX 30.00 fps", "96x64 BGRX 30.00 fps"], got.events
    assert got.errors == []


def test_sender_gone_and_back_at_a_new_address(receiver_for):
    name = unique("comeback")
    receiver, got = receiver_for(name, stale=0.5)
    first, second = pattern(64, 48), pattern(64, 48, shift=3)
    sender = PeerSender(name)
    feed(sender, first, lambda: len(got.frames) >= 2)
    old_address = receiver.source[1]
    sender.close()
    got.wait(lambda g: any("source gone" in e for e in g.events), what="the receiver to see the source gone")
    n = len(got.frames)
    blocker = PeerSender(unique("blocker"))  # likely takes the old port, so the source comes back elsewhere
    sender = PeerSender(name)
    try:
        feed(sender, second, lambda: len(got.frames) > n + 2, timeout=90)
    finally:
        sender.close()
        blocker.close()
    assert_same_picture(got.frames[-1][1], second)
    back = [e for e in got.events if "moved to" in e or "receiving again" in e]
    assert back, got.events
    if receiver.source[1] != old_address:
        assert any("moved to" in e for e in got.events)
    assert got.errors == []


def test_uyvy_in_agrees_with_the_runtime(receiver_for):
    """The runtime turns a BGRX source into UYVY for this receiver; our BT.709 conversion back to RGB
    must give the colours sent (a BT.601 reading would be off by tens of levels)."""
    name = unique("uyvy-in")
    receiver, got = receiver_for(name, color_format="uyvy")
    sender = PeerSender(name)
    try:
        picture = pattern(64, 48)
        feed(sender, picture, lambda: len(got.frames) >= 2)
    finally:
        sender.close()
    assert receiver.format[2] == pixels.UYVY
    assert_same_picture(got.frames[-1][1], picture)


@pytest.mark.parametrize("pixel_format", ["bgrx", "uyvy"])
def test_sender_output_read_by_the_runtime(pixel_format):
    """Our NDI output, decoded by the runtime to BGRX: colours, orientation and the metadata."""
    name = unique(f"out-{pixel_format}")
    errors, events = [], []
    sender = NdiSender(name, on_error=errors.append, on_event=events.append, pixel_format=pixel_format)
    sender.start()
    stop = threading.Event()
    picture = pattern(96, 64)

    def pump():
        k = 0
        while not stop.is_set():
            sender.publish({"id": 7 + k, "t": 123.25, "server": {"latency_ms": 1.5}}, picture)
            k += 1
            time.sleep(0.02)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    peer = None
    try:
        peer = PeerReceiver(name)
        got = peer.rgb()
        got = peer.rgb()  # the second frame: the first may predate the connection's settling
        assert got is not None
        rgb, metadata = got
        assert_same_picture(rgb, picture)
        assert 'node_server id="' in metadata and 't="123.25"' in metadata and 'latency_ms="1.500"' in metadata
        assert sender.connections() >= 1
    finally:
        stop.set()
        pumper.join(5)
        if peer is not None:
            peer.close()
        assert sender.close(timeout=5.0)
    assert sender.sent >= 2 and errors == []
    assert events[0] == f'ndi "{name}": sending 96x64 {pixel_format.upper()}'


def test_sender_survives_bad_frames_and_odd_widths():
    name = unique("bad-out")
    errors = []
    sender = NdiSender(name, on_error=errors.append)
    sender.start()
    peer = None
    try:
        sender.publish({"id": 1}, np.zeros((8, 8, 3), np.float32))  # wrong dtype
        sender.publish({"id": 2}, np.zeros((2, 3, 5, 7), np.uint8))  # wrong shape (replaces the pending one)
        deadline = time.monotonic() + 10
        while sender.failures < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sender.failures >= 1 and errors
        picture = pattern(64, 48)[:, :63]  # odd width: the last column is repeated
        stop = threading.Event()

        def pump():
            while not stop.is_set():
                sender.publish({"id": 3}, picture)
                time.sleep(0.02)

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        try:
            peer = PeerReceiver(name)
            rgb, _ = peer.rgb()
            rgb, _ = peer.rgb()
        finally:
            stop.set()
            pumper.join(5)
        assert rgb.shape == (48, 64, 3)
        assert_same_picture(rgb[:, :48], picture[:, :48])
    finally:
        if peer is not None:
            peer.close()
        assert sender.close(timeout=5.0)


class _Video:
    """A received-frame stand-in whose fields can be anything the network could bring."""

    def __init__(self, fourcc, w, h, data, metadata="", timestamp=0, rate=(30, 1)):
        self.FourCC, self.xres, self.yres, self.data = fourcc, w, h, data
        self.metadata, self.timestamp = metadata, timestamp
        self.frame_rate_N, self.frame_rate_D = rate


class _Broken(_Video):
    @property
    def data(self):
        raise RuntimeError("buffer gone")

    @data.setter
    def data(self, value):
        pass


def test_receiver_counts_bad_frames_and_goes_on():
    freed = []
    lib = types.SimpleNamespace(initialize=lambda: True, recv_free_video_v2=lambda recv, v: freed.append(v))
    got = Collect()

    def on_frame(*args):
        got.on_frame(*args)
        raise RuntimeError("downstream bug")

    r = NdiReceiver("x", on_frame, on_error=got.errors.append, on_event=got.events.append, ndilib=lib)
    good = np.zeros((4, 8, 4), np.uint8)
    bad = [
        _Video(pixels.fourcc("NV12"), 8, 4, good),
        _Video(pixels.BGRX, 0, 4, good),
        _Video(pixels.BGRX, 8, 400, good),
        _Video(pixels.UYVY, 7, 4, good),
        _Video(pixels.BGRX, 8, 4, good.astype(np.float32)),
        _Video(pixels.BGRX, 8, 4, good, metadata=b"\xff" * 10, timestamp="x", rate=(30, 0)),
        _Broken(pixels.BGRX, 8, 4, None),
        _Video(pixels.BGRX, 8, 4, good, metadata="<node_server t='9'/>"),
    ]
    for video in bad:
        r._frame(None, video)
    assert len(freed) == len(bad)  # every frame went back to the runtime
    assert r.bad_frames == 6 and len(got.frames) == 2 and got.frames[-1][4] == 9.0
    assert len(got.errors) == 8 and "downstream bug" in got.errors[-1]
    assert "rate unknown" in " ".join(got.events)


def test_ndi_list_shows_sources_with_addresses(capsys):
    name = unique("listed")
    sender = PeerSender(name)
    try:
        rc = main(["ndi-list", "--ndi-extra-ips", LOOPBACK, "--wait", "4"])
    finally:
        sender.close()
    out = capsys.readouterr().out
    assert rc == 0
    line = next((l for l in out.splitlines() if f"({name})" in l), None)
    assert line is not None, out
    assert line.startswith('"') and "127.0.0.1:59" in line


def test_groups_partition_sources(receiver_for):
    """--ndi-groups: the output is published in the group and the receiver looks there; a finder
    looking in the default group (public) does not see it."""
    group, name = unique("group"), unique("grouped")
    sender = NdiSender(name, groups=group)
    sender.start()
    stop = threading.Event()
    picture = pattern(64, 48)

    def pump():
        while not stop.is_set():
            sender.publish({"id": 1}, picture)
            time.sleep(0.03)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    try:
        receiver, got = receiver_for(name, groups=group)
        got.wait(lambda g: len(g.frames) >= 2, what="frames from a source in a group")
        assert_same_picture(got.frames[-1][1], picture)
        in_group = [s.name for s in list_sources(LOOPBACK, group, wait=3.0)]
        public = [s.name for s in list_sources(LOOPBACK, None, wait=3.0)]
    finally:
        stop.set()
        pumper.join(5)
        assert sender.close(timeout=5.0)
    assert any(n.endswith(f"({name})") for n in in_group), in_group
    assert not any(n.endswith(f"({name})") for n in public), public


_SENDER_PROGRAM = """
import sys, time
import numpy as np, NDIlib as ndi
assert ndi.initialize()
settings = ndi.SendCreate()
settings.ndi_name = sys.argv[1]
sender = ndi.send_create(settings)
frame = ndi.VideoFrameV2()
frame.data = np.zeros((16, 16, 4), np.uint8)
frame.FourCC = ndi.FOURCC_VIDEO_TYPE_BGRX
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_ndi_list_sees_every_program_on_the_machine(capsys):
    """Three NDI programs on one machine share TCP 5960; one query reaches one of them. ndi-list
    asks again and again, so it lists all three programs' sources."""
    names = [unique("prog") for _ in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", _SENDER_PROGRAM, n], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for n in names[1:]]
    sender = PeerSender(names[0])
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        listed = {s.name for s in list_sources(LOOPBACK, wait=6.0)}
    finally:
        sender.close()
        for p in procs:
            p.stdin.close()
            p.wait(10)
    for n in names:
        assert any(s.endswith(f"({n})") for s in listed), (n, listed)
