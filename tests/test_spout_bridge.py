"""The Spout bridge against the SpoutGL stand-in (tests/spoutgl_standin.py): receiving, sending,
listing. SpoutGL itself is Windows-only; see docs/SPOUT.md for what was run where."""

from __future__ import annotations

import inspect
import threading
import time

import numpy as np
import pytest

from bridges.spout import SPOUT_ID_BASE, SpoutReceiver, SpoutSender, list_senders
import spoutgl_standin as standin
from spoutgl_standin import DXGI_BGRA, DXGI_RGBA, GL_BGRA_EXT, GL_RGBA, world


@pytest.fixture
def spoutgl(monkeypatch):
    return standin.install(monkeypatch)


def _rgb(h: int = 6, w: int = 10, seed: int = 0) -> np.ndarray:
    """Asymmetric colours: every pixel differs, channels differ (a swap or flip shows)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(1, 255, size=(h, w, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)  # pure red top-left
    return img


def _as_texture(rgb: np.ndarray, dxgi: int) -> np.ndarray:
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    order = [2, 1, 0] if dxgi == DXGI_BGRA else [0, 1, 2]
    return np.concatenate([rgb[:, :, order], alpha], axis=2)


class Collector:
    def __init__(self):
        self.frames: list[tuple[int, np.ndarray]] = []
        self.errors: list[str] = []
        self.events: list[str] = []
        self.cond = threading.Condition()

    def on_frame(self, frame_id, rgb, recv, recv_wall):
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert recv > 0 and recv_wall > 0
        with self.cond:
            self.frames.append((frame_id, rgb))
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 5.0) -> list[tuple[int, np.ndarray]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.frames) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {len(self.frames)} of {n} frames; errors {self.errors}")
                self.cond.wait(left)
            return list(self.frames)


def _receiver(spoutgl, name: str, col: Collector, **kw) -> SpoutReceiver:
    r = SpoutReceiver(name, col.on_frame, on_error=col.errors.append, on_event=col.events.append, spoutgl=spoutgl, **kw)
    r.start()
    return r


def _calls_of(obj_prefix: str) -> list[standin.Call]:
    with world.lock:
        return [c for c in world.calls if c.obj.startswith(obj_prefix)]


@pytest.mark.parametrize("dxgi, expected_gl", [(DXGI_BGRA, GL_BGRA_EXT), (DXGI_RGBA, GL_RGBA)])
def test_receiver_reads_the_sender_format_and_keeps_colours(spoutgl, dxgi, expected_gl):
    img = _rgb()
    world.publish("Resolume", _as_texture(img, dxgi), dxgi=dxgi)
    col = Collector()
    r = _receiver(spoutgl, "Resolume", col)
    try:
        frame_id, got = col.wait(1)[0]
    finally:
        assert r.close()
    np.testing.assert_array_equal(got, img)  # same colours, same orientation (top-left origin)
    assert tuple(got[0, 0]) == (255, 0, 0)
    assert frame_id == SPOUT_ID_BASE
    assert r.sender == (10, 6, dxgi)
    reads = [c for c in world.calls_to("receiveImage") if c.args[0] is not None]
    assert reads and all(c.args[1] == expected_gl for c in reads)
    assert any("connected, 10x6" in e for e in col.events)
    assert not col.errors and not world.violations


def test_receiver_owns_its_gl_context_on_its_own_thread(spoutgl):
    world.publish("Cam", _as_texture(_rgb(), DXGI_BGRA))
    col = Collector()
    r = _receiver(spoutgl, "Cam", col)
    col.wait(1)
    assert r.close()
    calls = _calls_of("receiver")
    assert calls[0].method == "createOpenGL"
    assert calls[1] == standin.Call("spout-in", calls[0].obj, "setReceiverName", ("Cam",))
    assert {c.thread for c in calls} == {"spout-in"}
    assert [c.method for c in calls[-2:]] == ["releaseReceiver", "closeOpenGL"]
    assert not world.violations


def test_receiver_waits_for_a_sender_that_appears_late_and_follows_a_resize(spoutgl):
    col = Collector()
    r = _receiver(spoutgl, "Late", col, wait_sender=0.01)
    try:
        time.sleep(0.2)
        assert col.frames == [] and not r.connected
        first = _rgb(4, 8, seed=1)
        world.publish("Late", _as_texture(first, DXGI_BGRA))
        np.testing.assert_array_equal(col.wait(1)[0][1], first)
        world.close_sender("Late")  # the program quits ...
        deadline = time.monotonic() + 3
        while r.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not r.connected
        second = _rgb(12, 16, seed=2)  # ... and comes back at another size
        world.publish("Late", _as_texture(second, DXGI_BGRA))
        frames = col.wait(2)
    finally:
        assert r.close()
    np.testing.assert_array_equal(frames[1][1], second)
    assert [f[0] for f in frames] == [SPOUT_ID_BASE, SPOUT_ID_BASE + 1]
    assert any("sender gone" in e for e in col.events)
    assert not col.errors and not world.violations


def test_every_new_frame_is_handed_on_once_and_nothing_is_repeated(spoutgl):
    col = Collector()
    world.publish("Cam", _as_texture(_rgb(seed=0), DXGI_BGRA))
    r = _receiver(spoutgl, "Cam", col)
    try:
        col.wait(1)
        for k in range(1, 20):  # the sender draws 19 more frames, each one after the last was read
            world.publish("Cam", _as_texture(_rgb(seed=k), DXGI_BGRA))
            col.wait(k + 1)
        time.sleep(0.1)  # no new frame: nothing more may arrive
    finally:
        assert r.close()
    assert len(col.frames) == 20
    for k, (_, got) in enumerate(col.frames):
        np.testing.assert_array_equal(got, _rgb(seed=k))


def test_empty_first_read_of_a_cpu_share_sender_is_skipped(spoutgl):
    col = Collector()
    world.publish("Cpu", _as_texture(_rgb(seed=0), DXGI_BGRA), cpu_share=True)
    r = _receiver(spoutgl, "Cpu", col)
    try:
        deadline = time.monotonic() + 3
        while r.skipped_empty == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        for k in range(1, 4):
            world.publish("Cpu", _as_texture(_rgb(seed=k), DXGI_BGRA), cpu_share=True)
            col.wait(k)
    finally:
        assert r.close()
    assert r.skipped_empty == 1
    # the staging textures make reads one frame behind; the empty first read never reaches us
    for k, (_, got) in enumerate(col.frames):
        assert got.any()
        np.testing.assert_array_equal(got, _rgb(seed=k))


def test_a_black_frame_after_the_first_is_not_skipped(spoutgl):
    col = Collector()
    world.publish("Cam", _as_texture(_rgb(), DXGI_BGRA))
    r = _receiver(spoutgl, "Cam", col)
    try:
        col.wait(1)
        world.publish("Cam", np.zeros((6, 10, 4), np.uint8))
        frames = col.wait(2)
    finally:
        assert r.close()
    assert not frames[1][1].any() and r.skipped_empty == 0


def test_sender_sends_rgba_from_its_own_thread(spoutgl):
    events, errors = [], []
    s = SpoutSender("Styled", on_error=errors.append, on_event=events.append, spoutgl=spoutgl)
    s.start()
    try:
        img = _rgb(8, 8, seed=5)
        s.publish({"id": 1}, img)
        deadline = time.monotonic() + 3
        while world.texture("Styled") is None and time.monotonic() < deadline:
            time.sleep(0.005)
        rgba, frame = world.texture("Styled")
    finally:
        assert s.close()
    np.testing.assert_array_equal(rgba[:, :, :3], img)
    assert (rgba[:, :, 3] == 255).all() and frame == 1
    calls = _calls_of("sender")
    assert calls[0].method == "createOpenGL" and {c.thread for c in calls} == {"spout-out"}
    send = world.calls_to("sendImage")[0]
    assert send.args == (8, 8, GL_RGBA, False, 0)
    assert [c.method for c in calls[-2:]] == ["releaseSender", "closeOpenGL"]
    assert world.texture("Styled") is None  # releaseSender removed it
    assert events == ['spout "Styled": sending 8x8'] and not errors and not world.violations


def test_sender_skips_to_the_newest_frame(spoutgl):
    s = SpoutSender("Out", spoutgl=spoutgl)
    for k in range(3):  # the thread is not running yet: only the newest survives
        s.publish({}, _rgb(4, 4, seed=k))
    s.start()
    try:
        deadline = time.monotonic() + 3
        while s.sent == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        rgba, frame = world.texture("Out")
    finally:
        s.close()
    assert s.skipped == 2 and s.sent == 1 and frame == 1
    np.testing.assert_array_equal(rgba[:, :, :3], _rgb(4, 4, seed=2))


def test_sender_name_is_checked():
    with pytest.raises(ValueError):
        SpoutSender("", spoutgl=standin)
    with pytest.raises(ValueError):
        SpoutSender("x" * 256, spoutgl=standin)


def test_list_senders(spoutgl):
    assert list_senders(spoutgl) == []
    world.publish("A", np.zeros((2, 3, 4), np.uint8))
    world.publish("B", np.zeros((5, 7, 4), np.uint8), dxgi=DXGI_RGBA)
    got = list_senders()  # through sys.modules["SpoutGL"]
    assert [(s.name, s.width, s.height, s.active) for s in got] == [("A", 3, 2, True), ("B", 7, 5, False)]


# The stand-in must offer SpoutGL 0.1.1's calls with the binding's argument counts (pybind11
# arguments are positional; only waitFrameSync on the receiver has names, senderName and timeout=0).
BINDING = {
    "SpoutReceiver": {
        "createOpenGL": 0, "closeOpenGL": 0, "setReceiverName": 1, "releaseReceiver": 0, "receiveImage": 4,
        "getSenderList": 0, "getSenderInfo": 1, "getActiveSender": 0, "setActiveSender": 1,
        "getSenderName": 0, "getSenderWidth": 0, "getSenderHeight": 0, "getSenderFormat": 0,
        "isConnected": 0, "isUpdated": 0, "isFrameNew": 0, "isFrameCountEnabled": 0, "getSenderFrame": 0,
        "setFrameSync": 1, "readMemoryBuffer": 3, "getMemoryBufferSize": 1,
        "isGLDXReady": 0, "getAutoShare": 0, "setAutoShare": 1, "getCPUshare": 0, "setCPUshare": 1,
    },
    "SpoutSender": {
        "createOpenGL": 0, "closeOpenGL": 0, "setSenderName": 1, "releaseSender": 0, "sendImage": 6,
        "sendTexture": 6, "sendFbo": 4, "getFrame": 0, "setFrameSync": 1, "waitFrameSync": 2, "getCPU": 0,
        "getGLDX": 0, "createMemoryBuffer": 2, "writeMemoryBuffer": 3, "deleteMemoryBuffer": 0,
        "getMemoryBufferSize": 1,
    },
}


def test_standin_matches_the_binding_signatures():
    for cls_name, methods in BINDING.items():
        cls = getattr(standin, cls_name)
        for name, n in methods.items():
            params = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]
            assert len(params) == n, (cls_name, name)
            assert all(p.kind is p.POSITIONAL_ONLY for p in params), (cls_name, name)
    wait = inspect.signature(standin.SpoutReceiver.waitFrameSync).parameters
    assert list(wait)[1:] == ["senderName", "timeout"] and wait["timeout"].default == 0
    assert (standin.enums.GL_RGBA, standin.enums.GL_BGRA_EXT, standin.enums.GL_RGB, standin.enums.GL_BGR_EXT) == (
        0x1908, 0x80E1, 0x1907, 0x80E0)
    r = standin.SpoutReceiver()
    with pytest.raises(TypeError):
        r.receiveImage(None, GL_RGBA, 0, 0)  # pybind11 does not turn 0 into a bool
    with pytest.raises(BufferError):
        standin.SpoutSender().sendImage(bytes(10), 4, 4, GL_RGBA, False, 0)
