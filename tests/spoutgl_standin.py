"""A stand-in for the `SpoutGL` package (jlai/Python-SpoutGL 0.1.1) for Linux tests.

It offers the calls the real module offers, with the same positional-only signatures as the
pybind11 bindings of SpoutGL 0.1.1 (read from the wheel's signature strings and the binding
source), and behaves like the Spout 2.007 SDK in what the bridge relies on:

- every OpenGL-backed call needs `createOpenGL()` to have been called on the *calling thread*;
  a call from any other thread fails (returns False) and is recorded in `World.violations`;
- `receiveImage` with a new sender (or a changed size/format) copies nothing, returns True and
  sets `isUpdated()`; with no sender it returns False; pixels are converted from the sender's
  texture format to the GL format asked for, as Spout's copy functions do; `invert` flips rows;
- a sender marked `cpu_share` reads through two staging textures, so the first read after a
  connection is the empty (all-zero) buffer and later reads are one frame behind;
- `isFrameNew()` tells whether the last read saw a frame the sender had not sent before (always
  True for a sender without frame counting, as in Spout);
- a SpoutSender's texture is BGRA (DXGI 87, Spout's default); a name already in use gets `_1`.

Test-side helpers (not part of SpoutGL) live on `world`: `world.publish()` plays another program's
sender with any texture format, `world.texture()` reads a sender's texture back as RGBA.
Install it with `install(monkeypatch)`, which puts it in `sys.modules["SpoutGL"]`.
"""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

GL_RGBA = 0x1908
GL_BGRA_EXT = 0x80E1
GL_RGB = 0x1907
GL_BGR_EXT = 0x80E0

DXGI_RGBA = 28
DXGI_BGRA = 87

__version__ = "0.1.1-standin"

enums = types.SimpleNamespace(GL_RGBA=GL_RGBA, GL_BGRA_EXT=GL_BGRA_EXT, GL_RGB=GL_RGB, GL_BGR_EXT=GL_BGR_EXT)


# -- helpers (SpoutGL.helpers) -----------------------------------------------------------------


def _bpp(fmt: int) -> int:
    if fmt in (GL_RGBA, GL_BGRA_EXT):
        return 4
    if fmt in (GL_RGB, GL_BGR_EXT):
        return 3
    raise ValueError("Unknown GL format")  # pybind11 turns std::invalid_argument into ValueError


def _contiguous(buffer: Any) -> memoryview:
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise BufferError("Buffer must be contiguous")
    return view


def getBytesPerPixel(glFormat: int, /) -> int:
    return _bpp(glFormat)


def isBufferEmpty(buffer: Any, /) -> bool:
    view = _contiguous(buffer)
    return not np.frombuffer(view.cast("B"), np.uint8).any()


def copyToFloat32(byteBuffer: Any, floatBuffer: Any, /) -> None:
    src = np.frombuffer(_contiguous(byteBuffer).cast("B"), np.uint8)
    dst = np.frombuffer(_contiguous(floatBuffer), np.float32)
    if dst.size != src.size:
        raise BufferError("Expected float buffer to be equal size to byte buffer")
    dst[:] = src / 255.0


def copyToByteBuffer(floatBuffer: Any, byteBuffer: Any, /) -> None:
    src = np.frombuffer(_contiguous(floatBuffer), np.float32)
    dst = np.frombuffer(_contiguous(byteBuffer).cast("B"), np.uint8)
    if dst.size != src.size:
        raise BufferError("Expected float buffer to be equal size to byte buffer")
    dst[:] = (src * 255).astype(np.uint8)


helpers = types.SimpleNamespace(
    getBytesPerPixel=getBytesPerPixel, isBufferEmpty=isBufferEmpty,
    copyToFloat32=copyToFloat32, copyToByteBuffer=copyToByteBuffer,
)


# -- the shared "machine": senders and their textures ------------------------------------------


@dataclass
class _Texture:
    pixels: np.ndarray  # (h, w, 4) uint8 in the texture's own byte order, top-left origin
    dxgi: int
    frame: int = 0  # frame counter, bumped per send
    counting: bool = True  # frame counting enabled (Spout 2.007 senders)
    cpu_share: bool = False
    handle: int = 0  # changes with size/format (a new shared texture)


@dataclass
class Call:
    thread: str
    obj: str  # "receiver#N" / "sender#N"
    method: str
    args: tuple


@dataclass
class World:
    senders: dict[str, _Texture] = field(default_factory=dict)
    active: Optional[str] = None
    calls: list[Call] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _handles: int = 0
    _objects: int = 0

    def reset(self) -> None:
        with self.lock:
            self.senders.clear()
            self.active = None
            self.calls.clear()
            self.violations.clear()

    def _next_handle(self) -> int:
        self._handles += 1
        return self._handles

    # test side: another program's sender
    def publish(self, name: str, pixels: np.ndarray, *, dxgi: int = DXGI_BGRA, counting: bool = True,
                cpu_share: bool = False) -> None:
        """Draw one frame into sender `name`; `pixels` is (h, w, 4) in the texture's byte order."""
        pixels = np.ascontiguousarray(pixels, np.uint8)
        with self.lock:
            tex = self.senders.get(name)
            if tex is None or tex.pixels.shape != pixels.shape or tex.dxgi != dxgi:
                frame = tex.frame if tex is not None else 0
                tex = _Texture(pixels.copy(), dxgi, frame, counting, cpu_share, self._next_handle())
                self.senders[name] = tex
                if self.active is None:
                    self.active = name
            else:
                tex.pixels[...] = pixels
            tex.frame += 1

    def close_sender(self, name: str) -> None:
        with self.lock:
            self.senders.pop(name, None)
            if self.active == name:
                self.active = next(iter(self.senders), None)

    def texture(self, name: str) -> Optional[tuple[np.ndarray, int]]:
        """(RGBA copy of sender `name`'s texture, its frame counter) or None."""
        with self.lock:
            tex = self.senders.get(name)
            if tex is None:
                return None
            rgba = tex.pixels[:, :, [2, 1, 0, 3]] if tex.dxgi == DXGI_BGRA else tex.pixels.copy()
            return rgba, tex.frame

    def calls_to(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]


world = World()


def _to_gl(pixels: np.ndarray, dxgi: int, glFormat: int) -> np.ndarray:
    """Texture bytes (top-left, texture order) -> bytes in `glFormat` order."""
    rgba = pixels[:, :, [2, 1, 0, 3]] if dxgi == DXGI_BGRA else pixels
    if glFormat == GL_RGBA:
        return rgba
    if glFormat == GL_BGRA_EXT:
        return rgba[:, :, [2, 1, 0, 3]]
    if glFormat == GL_RGB:
        return rgba[:, :, :3]
    if glFormat == GL_BGR_EXT:
        return rgba[:, :, [2, 1, 0]]
    raise ValueError("Unknown GL format")


def _from_gl(data: np.ndarray, glFormat: int) -> np.ndarray:
    """Bytes in `glFormat` order -> BGRA texture bytes (a SpoutSender's texture is DXGI 87)."""
    if glFormat == GL_RGBA:
        return data[:, :, [2, 1, 0, 3]]
    if glFormat == GL_BGRA_EXT:
        return data.copy()
    alpha = np.full(data.shape[:2] + (1,), 255, np.uint8)
    if glFormat == GL_RGB:
        return np.concatenate([data[:, :, [2, 1, 0]], alpha], axis=2)
    if glFormat == GL_BGR_EXT:
        return np.concatenate([data, alpha], axis=2)
    raise ValueError("Unknown GL format")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, float) or not isinstance(value, int):
        raise TypeError(f"{name}: incompatible function arguments (int expected, got {type(value).__name__})")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: incompatible function arguments (bool expected, got {type(value).__name__})")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name}: incompatible function arguments (str expected, got {type(value).__name__})")


class SenderInfo:
    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height


class _GLObject:
    """What SpoutSender and SpoutReceiver share (SpoutGL's addCommonDefs, plus call recording)."""

    _kind = "object"

    def __init__(self) -> None:
        with world.lock:
            world._objects += 1
            self._label = f"{self._kind}#{world._objects}"
        self._gl_thread: Optional[int] = None
        self._cpu_share = False
        self._auto_share = True

    def _record(self, method: str, *args: Any) -> None:
        with world.lock:
            world.calls.append(Call(threading.current_thread().name, self._label, method, args))

    def _gl_ok(self, method: str) -> bool:
        if self._gl_thread != threading.get_ident():
            with world.lock:
                world.violations.append(f"{self._label}.{method} on thread {threading.current_thread().name} "
                                        "without its OpenGL context")
            return False
        return True

    def createOpenGL(self, /) -> bool:
        self._record("createOpenGL")
        self._gl_thread = threading.get_ident()
        return True

    def closeOpenGL(self, /) -> bool:
        self._record("closeOpenGL")
        ok = self._gl_thread == threading.get_ident()
        self._gl_thread = None
        return ok

    def isGLDXReady(self, /) -> bool:
        return True

    def getAutoShare(self, /) -> bool:
        return self._auto_share

    def setAutoShare(self, bAuto: bool, /) -> None:
        _check_bool("setAutoShare", bAuto)
        self._auto_share = bool(bAuto)

    def getCPUshare(self, /) -> bool:
        return self._cpu_share

    def setCPUshare(self, bCPU: bool, /) -> bool:
        _check_bool("setCPUshare", bCPU)
        self._cpu_share = bool(bCPU)
        return True


class SpoutSender(_GLObject):
    _kind = "sender"

    def __init__(self) -> None:
        super().__init__()
        self._requested = ""
        self._name = ""
        self._frame = 0
        self._sync_events: set[str] = set()

    def __enter__(self) -> "SpoutSender":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None:
        self.releaseSender()

    def setSenderName(self, sendername: str, /) -> None:
        _check_str("setSenderName", sendername)
        self._record("setSenderName", sendername)
        self._requested = sendername

    def releaseSender(self, /) -> None:
        self._record("releaseSender")
        if self._name:
            world.close_sender(self._name)
        self._name = ""

    def sendImage(self, pixels: Any, width: int, height: int, glFormat: int, bInvert: bool, hostFbo: int, /) -> bool:
        _check_int("sendImage", width)
        _check_int("sendImage", height)
        _check_int("sendImage", glFormat)
        _check_bool("sendImage", bInvert)
        _check_int("sendImage", hostFbo)
        view = memoryview(pixels)
        bpp = _bpp(glFormat)
        if view.nbytes < width * height * bpp:
            raise BufferError("Buffer not large enough")
        if not view.c_contiguous:
            raise BufferError("Buffer must be contiguous")
        self._record("sendImage", width, height, glFormat, bool(bInvert), hostFbo)
        if not self._gl_ok("sendImage") or width <= 0 or height <= 0:
            return False
        data = np.frombuffer(view.cast("B"), np.uint8, width * height * bpp).reshape(height, width, bpp)
        if bInvert:
            data = data[::-1]
        with world.lock:
            if not self._name:
                base = self._requested or "python"
                name, k = base, 0
                while name in world.senders:
                    k += 1
                    name = f"{base}_{k}"
                self._name = name
            world.publish(self._name, _from_gl(data, glFormat), dxgi=DXGI_BGRA)
        self._frame += 1
        return True

    def sendTexture(self, textureID: int, textureTarget: int, width: int, height: int, bInvert: bool, hostFBO: int, /) -> bool:
        self._record("sendTexture", textureID, textureTarget, width, height, bInvert, hostFBO)
        return False  # no textures in the stand-in

    def sendFbo(self, fboID: int, width: int, height: int, bInvert: bool, /) -> bool:
        self._record("sendFbo", fboID, width, height, bInvert)
        return False

    def getFrame(self, /) -> int:
        return self._frame

    def setFrameSync(self, senderName: str, /) -> None:
        _check_str("setFrameSync", senderName)
        self._record("setFrameSync", senderName)

    def waitFrameSync(self, senderName: str, timeout: int, /) -> bool:
        return False

    def getCPU(self, /) -> bool:
        return False

    def getGLDX(self, /) -> bool:
        return True

    def createMemoryBuffer(self, name: str, length: int, /) -> bool:
        return False

    def writeMemoryBuffer(self, name: str, data: str, length: int, /) -> bool:
        return False

    def deleteMemoryBuffer(self, /) -> bool:
        return False

    def getMemoryBufferSize(self, name: str, /) -> int:
        return 0


class SpoutReceiver(_GLObject):
    _kind = "receiver"

    def __init__(self) -> None:
        super().__init__()
        self._setup_name = ""
        self._name = ""
        self._handle = 0
        self._width = 0
        self._height = 0
        self._dxgi = 0
        self._updated = False
        self._connected = False
        self._frame_new = False
        self._last_frame = 0
        self._staging: Optional[np.ndarray] = None

    def __enter__(self) -> "SpoutReceiver":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None:
        self.releaseReceiver()

    def setReceiverName(self, senderName: str, /) -> None:
        _check_str("setReceiverName", senderName)
        self._record("setReceiverName", senderName)
        self._setup_name = senderName
        self._name = ""  # connect afresh

    def releaseReceiver(self, /) -> None:
        self._record("releaseReceiver")
        self._name = ""
        self._handle = 0
        self._connected = False
        self._staging = None

    def receiveImage(self, buffer: Any, glFormat: int, bInvert: bool, hostFbo: int, /) -> bool:
        _check_int("receiveImage", glFormat)
        _check_bool("receiveImage", bInvert)
        _check_int("receiveImage", hostFbo)
        view = None
        if buffer is not None:
            view = memoryview(buffer)
            if view.nbytes == 0:
                view = None
        if view is not None:  # the binding checks the size against the connected sender's
            if view.nbytes < self._width * self._height * _bpp(glFormat):
                raise BufferError("Buffer not large enough")
            if not view.c_contiguous:
                raise BufferError("Buffer must be contiguous")
        self._record("receiveImage", None if view is None else view.nbytes, glFormat, bool(bInvert), hostFbo)
        self._updated = False
        self._frame_new = False
        if not self._gl_ok("receiveImage"):
            return False
        with world.lock:
            name = self._setup_name or world.active
            tex = world.senders.get(name) if name else None
            if tex is None:
                self.releaseReceiver()
                self._connected = False
                return False
            if name != self._name or tex.handle != self._handle:
                self._name, self._handle = name, tex.handle
                self._height, self._width = tex.pixels.shape[:2]
                self._dxgi = tex.dxgi
                self._last_frame = tex.frame - 1 if tex.frame else 0  # the current frame is new
                self._staging = np.zeros_like(tex.pixels) if tex.cpu_share else None
                self._updated = True
                return True
            if view is None:
                return False
            new = tex.frame != self._last_frame
            self._frame_new = new or not tex.counting
            self._last_frame = tex.frame
            if new or not tex.counting:
                if tex.cpu_share:  # two staging textures: the read is one frame behind
                    shown, self._staging = self._staging, tex.pixels.copy()
                else:
                    shown = tex.pixels
                data = _to_gl(shown, tex.dxgi, glFormat)
                if bInvert:
                    data = data[::-1]
                out = np.frombuffer(view.cast("B"), np.uint8, data.size)
                out[:] = np.ascontiguousarray(data).reshape(-1)
        self._connected = True
        return True

    def receiveTexture(self, *args: Any) -> bool:  # two overloads in the binding: () and (id, target, invert, fbo)
        if args and len(args) != 4:
            raise TypeError("receiveTexture(): incompatible function arguments")
        self._record("receiveTexture", *args)
        return False

    def getSenderList(self, /) -> list[str]:
        with world.lock:
            return list(world.senders)

    def getSenderInfo(self, senderName: str, /) -> Optional[SenderInfo]:
        _check_str("getSenderInfo", senderName)
        with world.lock:
            tex = world.senders.get(senderName)
            if tex is None:
                return None
            h, w = tex.pixels.shape[:2]
            return SenderInfo(w, h)

    def getActiveSender(self, /) -> Optional[str]:
        with world.lock:
            return world.active

    def setActiveSender(self, senderName: str, /) -> bool:
        _check_str("setActiveSender", senderName)
        with world.lock:
            if senderName not in world.senders:
                return False
            world.active = senderName
            return True

    def getSenderName(self, /) -> str:
        return self._name

    def getSenderWidth(self, /) -> int:
        return self._width

    def getSenderHeight(self, /) -> int:
        return self._height

    def getSenderFormat(self, /) -> int:
        return self._dxgi

    def isConnected(self, /) -> bool:
        return self._connected

    def isUpdated(self, /) -> bool:
        return self._updated

    def isFrameNew(self, /) -> bool:
        return self._frame_new

    def isFrameCountEnabled(self, /) -> bool:
        with world.lock:
            tex = world.senders.get(self._name)
            return bool(tex and tex.counting)

    def getSenderFrame(self, /) -> int:
        return self._last_frame

    def setFrameSync(self, senderName: str, /) -> None:
        _check_str("setFrameSync", senderName)

    def waitFrameSync(self, senderName: str, timeout: int = 0) -> bool:
        _check_str("waitFrameSync", senderName)
        return False

    def readMemoryBuffer(self, name: str, buffer: Any, length: int, /) -> int:
        if buffer is None:
            raise TypeError("Must provide a buffer")
        return 0

    def getMemoryBufferSize(self, name: str, /) -> int:
        return 0


def install(monkeypatch: Any) -> types.ModuleType:
    """Put this module in `sys.modules["SpoutGL"]` (undone by monkeypatch) with a fresh world."""
    world.reset()
    module = sys.modules[__name__]
    monkeypatch.setitem(sys.modules, "SpoutGL", module)
    return module
