"""Script TOP callbacks: send this TOP's input to node-server over ZeroMQ, show what comes back.

Paste into the Script TOP's callbacks DAT (build_network.py does it for you). Needs numpy (ships
with TouchDesigner) and pyzmq installed for TouchDesigner's Python (see README.md).

How it behaves:
- a background thread owns both ZeroMQ sockets (PUSH to the server's --zmq-in, SUB to its
  --zmq-out) and keeps only the newest input waiting to be sent and the newest output received;
- onCook never blocks: it hands the input over, copies the newest output with copyNumpyArray and
  returns (before the first output arrives the TOP shows its input);
- TouchDesigner arrays have a bottom-left origin and the protocol a top-left one: rows are flipped
  on the way out and on the way back;
- the server address and ports are custom parameters (page "Server"); changing them reconnects.

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
_links = {}  # scriptOp.path -> Link


class Link:
    """One server connection; all socket work happens on its own thread."""

    def __init__(self, host, in_port, out_port, poll_ms=5):
        self.key = (host, in_port, out_port)
        self.in_addr = "tcp://%s:%d" % (host, in_port)
        self.out_addr = "tcp://%s:%d" % (host, out_port)
        self.poll_ms = poll_ms
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pending = None  # newest input not sent yet (top-left RGB uint8)
        self._output = None  # (header, top-left RGB uint8) newest output
        self._next_id = random.randrange(1, 2 ** 40)  # ids another client is unlikely to use
        self._sent_ids = set()
        self.sent = 0
        self.received = 0
        self.dropped = 0  # inputs replaced by a newer one before they were sent
        self.error = ""
        self._thread = threading.Thread(target=self._run, name="node-server-link", daemon=True)
        self._thread.start()

    # called from onCook (main thread): never blocks
    def submit(self, rgb):
        with self._lock:
            if self._pending is not None:
                self.dropped += 1
            self._pending = rgb
        self._wake.set()

    def latest(self):
        with self._lock:
            return self._output

    def close(self):
        self._stop.set()
        self._wake.set()
        self._thread.join(1.0)

    # the socket thread
    def _run(self):
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        sub = ctx.socket(zmq.SUB)
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
        except Exception as exc:  # shown by onCook
            self.error = "%s: %s" % (type(exc).__name__, exc)
        finally:
            push.close(0)
            sub.close(0)

    def _send_pending(self, push):
        with self._lock:
            rgb, self._pending = self._pending, None
        if rgb is None:
            return
        h, w, c = rgb.shape
        frame_id = self._next_id
        self._next_id += 1
        header = {"v": PROTOCOL_VERSION, "id": frame_id, "w": w, "h": h, "c": c, "dtype": "uint8", "t": time.time()}
        try:
            push.send_multipart([json.dumps(header).encode(), rgb], flags=zmq.NOBLOCK, copy=True)
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
            if len(parts) != 2:
                continue
            try:
                header = json.loads(parts[0])
                shape = (header["h"], header["w"], header["c"])
                if header.get("id") not in self._sent_ids:
                    continue  # another client's output
                image = np.frombuffer(parts[1], np.uint8).reshape(shape)
            except (ValueError, KeyError, TypeError):
                continue
            newest = (header, image)
        if newest is not None:
            with self._lock:
                self._output = newest
                self.received += 1


def _settings(scriptOp):
    p = scriptOp.par
    return (str(p.Address.eval()).strip() or "127.0.0.1", int(p.Inport.eval()), int(p.Outport.eval()))


def _link_for(scriptOp):
    key = _settings(scriptOp)
    link = _links.get(scriptOp.path)
    if link is not None and link.key != key:
        link.close()
        link = None
    if link is None:
        link = Link(*key)
        _links[scriptOp.path] = link
    return link


def to_protocol(td_array):
    """A TOP's numpyArray (bottom-left origin, float 0..1 or uint8, RGBA) -> top-left RGB uint8."""
    rgb = td_array[::-1, :, :3]
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def to_td(image):
    """A protocol image (top-left origin) -> the bottom-left array copyNumpyArray expects."""
    return np.ascontiguousarray(image[::-1])


# -- Script TOP callbacks ----------------------------------------------------------------------


def onSetupParameters(scriptOp):
    page = scriptOp.appendCustomPage("Server")
    p = page.appendStr("Address", label="Server address")
    p[0].default = "127.0.0.1"
    p = page.appendInt("Inport", label="Frames in port (--zmq-in)")
    p[0].default = 5555
    p = page.appendInt("Outport", label="Frames out port (--zmq-out)")
    p[0].default = 5556
    p = page.appendToggle("Active", label="Send frames")
    p[0].default = True
    return


def onPulse(par):
    return


def onCook(scriptOp):
    if zmq is None:
        scriptOp.addError("pyzmq is not installed for TouchDesigner's Python (see examples_td/README.md)")
        return
    link = _link_for(scriptOp)
    source = scriptOp.inputs[0] if scriptOp.inputs else None
    if source is not None and scriptOp.par.Active.eval():
        arr = source.numpyArray(delayed=True)  # delayed: last frame's pixels, no GPU stall
        if arr is not None:
            link.submit(to_protocol(arr))
    if link.error:
        scriptOp.addWarning("node-server link: " + link.error)
    out = link.latest()
    if out is not None:
        scriptOp.copyNumpyArray(to_td(out[1]))
    elif source is not None:
        arr = source.numpyArray(delayed=True)
        if arr is not None:
            scriptOp.copyNumpyArray(np.ascontiguousarray(arr))
    return


def onDestroy():  # not a Script TOP callback; call it from an Execute DAT's onExit if you like
    for link in list(_links.values()):
        link.close()
    _links.clear()
