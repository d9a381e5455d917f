"""Script TOP callbacks: send this TOP's input to node-server over ZeroMQ, show what comes back.

Paste into the Script TOP's callbacks DAT (build_network.py does it for you). Needs numpy (ships
with TouchDesigner) and pyzmq installed for TouchDesigner's Python (see README.md).

TouchDesigner's main thread does as little as possible here. Each cook, onCook only
- reads the Server page parameters,
- asks the input for numpyArray(delayed=True, writable=True) (no GPU stall: it hands back the
  previous frame),
- passes that array, untouched, to the link thread,
- hands the newest output, already in TouchDesigner's layout, to copyNumpyArray.
Every per-pixel step (row flip, dropping alpha, float to uint8, packing) runs on the link thread,
which also owns both ZeroMQ sockets. Keep the input small: build_network.py puts a Fit TOP in front
that scales the source to the server's frame size on the GPU, so a 1080p source costs a read-back
of 256x256 (the demo model's size), not of 1920x1080.

TouchDesigner arrays start at the bottom row and the protocol at the top: the link thread flips
rows on the way out and on the way back. Before the first output arrives the TOP shows its input.
The Server page (address, ports, Send frames) reconnects when changed.

The Script TOP only cooks when something asks it to; build_network.py adds an Execute DAT that
cooks it every frame so new outputs show up even while the input is still.
"""

import json
import random
import threading
import time

import numpy as np

try:
    import zmq
except ImportError:  # shown in the TOP's error; see README.md to install pyzmq
    zmq = None

PROTOCOL_VERSION = 1
RESTART_AFTER_S = 1.0  # a link whose thread died is replaced after this long
_links = {}  # scriptOp.path -> Link


def to_protocol(td_array):
    """A TOP's numpyArray (bottom-left origin, float 0..1 or uint8, 1-4 channels) -> the protocol's
    top-left, C-contiguous uint8 (RGB, or grey for one channel). Runs on the link thread."""
    channels = 3 if td_array.shape[2] >= 3 else 1
    rows = td_array[::-1, :, :channels]
    if rows.dtype == np.uint8:
        return np.ascontiguousarray(rows)
    scaled = np.multiply(rows, 255.0, dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    scaled += 0.5
    return scaled.astype(np.uint8)


def to_td(image):
    """A protocol image (top-left origin) -> the bottom-left, C-contiguous array copyNumpyArray
    takes. Runs on the link thread."""
    return np.ascontiguousarray(image[::-1])


class Link:
    """One server connection. Its thread owns the sockets and does all per-pixel work; the main
    thread only swaps references under a lock."""

    def __init__(self, host, in_port, out_port, poll_ms=5):
        self.key = (host, in_port, out_port)
        self.in_addr = "tcp://%s:%d" % (host, in_port)
        self.out_addr = "tcp://%s:%d" % (host, out_port)
        self.poll_ms = poll_ms
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending = None  # newest TouchDesigner array not sent yet (as numpyArray gave it)
        self._shown = None  # newest output in TouchDesigner's layout, ready for copyNumpyArray
        self._next_id = random.randrange(1, 2 ** 40)  # ids another client is unlikely to use
        self._sent_ids = set()
        self.sent = 0
        self.received = 0
        self.dropped = 0  # inputs replaced by a newer one before they were sent, or refused by ZeroMQ
        self.rejected = 0  # outputs that were not a valid protocol message
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="node-server-link", daemon=True)
        self._thread.start()

    # -- main thread: never blocks, never touches pixels ------------------------------------------
    def submit(self, td_array):
        with self._lock:
            if self._pending is not None:
                self.dropped += 1
            self._pending = td_array

    def latest(self):
        with self._lock:
            return self._shown

    @property
    def alive(self):
        return self._thread.is_alive()

    def close(self):
        self._stop.set()
        self._thread.join(1.0)

    # -- the link thread ----------------------------------------------------------------------------
    def _run(self):
        try:
            ctx = zmq.Context.instance()
            push = ctx.socket(zmq.PUSH)
            sub = ctx.socket(zmq.SUB)
        except Exception as exc:  # shown by onCook
            self.error = "%s: %s" % (type(exc).__name__, exc)
            return
        try:
            for s in (push, sub):
                s.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDHWM, 2)
            sub.setsockopt(zmq.RCVHWM, 4)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(self.out_addr)
            push.connect(self.in_addr)
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            while not self._stop.is_set():
                self._send_pending(push)
                if poller.poll(self.poll_ms):
                    self._drain(sub)
        except Exception as exc:  # shown by onCook; the link is replaced after RESTART_AFTER_S
            self.error = "%s: %s" % (type(exc).__name__, exc)
        finally:
            push.close(0)
            sub.close(0)

    def _send_pending(self, push):
        with self._lock:
            td_array, self._pending = self._pending, None
        if td_array is None:
            return
        image = to_protocol(td_array)
        h, w, c = image.shape
        frame_id = self._next_id
        self._next_id += 1
        header = {"v": PROTOCOL_VERSION, "id": frame_id, "w": w, "h": h, "c": c, "dtype": "uint8",
                  "t": time.time()}
        try:
            push.send_multipart([json.dumps(header).encode(), image], flags=zmq.NOBLOCK, copy=True)
        except zmq.Again:  # server gone or far behind: drop, a fresher frame follows
            self.dropped += 1
            return
        self.sent += 1
        self._sent_ids.add(frame_id)
        if len(self._sent_ids) > 1024:
            self._sent_ids = {i for i in self._sent_ids if i > frame_id - 1024}

    def _drain(self, sub):
        newest = None
        while True:
            try:
                parts = sub.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                if len(parts) != 2:
                    raise ValueError("not two frames")
                header = json.loads(parts[0])
                shape = (int(header["h"]), int(header["w"]), int(header["c"]))
                if header.get("id") not in self._sent_ids:
                    continue  # another client's output
                newest = np.frombuffer(parts[1], np.uint8).reshape(shape)
            except (ValueError, KeyError, TypeError):
                self.rejected += 1
                continue
        if newest is not None:
            shown = to_td(newest)
            with self._lock:
                self._shown = shown
                self.received += 1


def _settings(scriptOp):
    p = scriptOp.par
    return (str(p.Address.eval()).strip() or "127.0.0.1", int(p.Inport.eval()), int(p.Outport.eval()))


def _link_for(scriptOp):
    key = _settings(scriptOp)
    link = _links.get(scriptOp.path)
    if link is not None and (link.key != key or
                             (not link.alive and time.monotonic() - link.started > RESTART_AFTER_S)):
        link.close()
        link = None
    if link is None:
        link = Link(*key)
        _links[scriptOp.path] = link
    return link


# -- Script TOP callbacks ----------------------------------------------------------------------


def _append(page, kind, name, label, value):
    par = getattr(page, "append" + kind)(name, label=label)[0]
    par.default = value  # what "Reset" goes back to
    par.val = value  # a new parameter does not take its default by itself


def onSetupParameters(scriptOp):
    page = scriptOp.appendCustomPage("Server")
    _append(page, "Str", "Address", "Server address", "127.0.0.1")
    _append(page, "Int", "Inport", "Frames in port (--zmq-in)", 5555)
    _append(page, "Int", "Outport", "Frames out port (--zmq-out)", 5556)
    _append(page, "Toggle", "Active", "Send frames", True)
    return


def onPulse(par):
    return


def onCook(scriptOp):
    if zmq is None:
        scriptOp.addError("pyzmq is not installed for TouchDesigner's Python (see examples_td/README.md)")
        return
    link = _link_for(scriptOp)
    source = scriptOp.inputs[0] if scriptOp.inputs else None
    # delayed: last frame's pixels, no GPU stall (None on the first call); writable: ordinary memory
    # (by default it may be allocated so that touching it is slow), read later on the link thread
    frame = source.numpyArray(delayed=True, writable=True) if source is not None else None
    if frame is not None and scriptOp.par.Active.eval():
        link.submit(frame)
    if link.error:
        scriptOp.addWarning("node-server link: " + link.error)
    shown = link.latest()
    if shown is not None:
        scriptOp.copyNumpyArray(shown)
        if frame is not None and frame.shape[:2] != shown.shape[:2]:
            scriptOp.addWarning(
                "the server sends %dx%d but this TOP's input is %dx%d: set the Fit TOP in front to "
                "%dx%d so TouchDesigner reads back no more than the server uses"
                % (shown.shape[1], shown.shape[0], frame.shape[1], frame.shape[0], shown.shape[1], shown.shape[0]))
    elif frame is not None:
        scriptOp.copyNumpyArray(frame)  # no output yet: show the input as TouchDesigner gave it
    return


def close_links():
    """Not a Script TOP callback: stop every link (e.g. from an Execute DAT's onExit)."""
    for link in list(_links.values()):
        link.close()
    _links.clear()


onDestroy = close_links  # the name earlier versions of this kit used
