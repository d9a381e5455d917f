"""`node-server feed`: push a video, image or folder to a running server and collect the output.

A test and demo client for `serve`. Sends are paced by a window of frames in flight (by default
the server's batch size, learnt from the first output header, so the server's freshest-frame
buffer never has to drop) and optionally by `--fps`. The server keeps
frame order, so when output k arrives every earlier frame still missing was dropped by it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a video, an image or a folder of images")
    p.add_argument("--out", default=None, metavar="OUTPUT", help="write the stylized frames here (video, image or folder)")
    p.add_argument("--server", default="127.0.0.1", metavar="HOST", help="server host (default 127.0.0.1, ports 5555/5556)")
    p.add_argument("--zmq-in", default=None, metavar="ADDR", help="the server's --zmq-in (default tcp://HOST:5555)")
    p.add_argument("--zmq-out", default=None, metavar="ADDR", help="the server's --zmq-out (default tcp://HOST:5556)")
    p.add_argument("--fps", type=float, default=0.0, help="send rate in frames per second (0 = as fast as the server takes them)")
    p.add_argument("--in-flight", type=int, default=0, metavar="N",
                   help="frames sent but not yet back (default: the server's batch size, which never "
                        "overflows its freshest-frame buffer; more is faster but may drop frames)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the server's first output, and for each later frame (default 30)")


@dataclass
class FeedResult:
    sent: int = 0
    received: int = 0
    lost: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)  # ids received, in arrival order (offset removed)
    prompts: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]

    @property
    def fps(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


def feed(frames, client, *, fps: float = 0.0, in_flight: int = 0, timeout: float = 30.0, on_output=None) -> FeedResult:
    """Send every frame of `frames` (iterable of (index, HxWxC uint8)) through `client`.

    `on_output(index, image)` is called for each stylized frame, in order. Ids on the wire start
    at a random base so that outputs meant for other clients of the same server are ignored.
    """
    from ..errors import NodeServerError

    base = random.randrange(1 << 40, 1 << 41)
    pending: "OrderedDict[int, float]" = OrderedDict()  # wire id -> send time
    res = FeedResult()
    window = in_flight if in_flight > 0 else 1
    auto_window = in_flight <= 0
    period = 1.0 / fps if fps > 0 else 0.0

    def take(out) -> None:
        nonlocal window
        header, image = out
        wid = header.get("id")
        if wid not in pending:
            return  # another client's frame, or a duplicate of the first frame
        now = time.perf_counter()
        while pending:  # earlier frames still missing were dropped by the server
            k, sent_at = next(iter(pending.items()))
            if k == wid:
                break
            pending.popitem(last=False)
            res.lost += 1
        sent_at = pending.pop(wid)
        res.received += 1
        res.latencies_ms.append((now - sent_at) * 1000.0)
        res.ids.append(wid - base)
        res.prompts.append(str(header.get("prompt", "")))
        batch = (header.get("server") or {}).get("batch_size")
        if auto_window and isinstance(batch, int) and batch > 0:
            window = batch
        if on_output is not None:
            on_output(wid - base, image)

    def expire() -> None:
        now = time.perf_counter()
        while pending and now - next(iter(pending.values())) > timeout:
            pending.popitem(last=False)
            res.lost += 1

    it = iter(frames)
    first = next(it, None)
    if first is None:
        return res
    # First frame: resend until an output comes back. This covers the SUB slow joiner and a
    # server that is still loading its model.
    idx, frame = first
    start = time.perf_counter()
    deadline = start + timeout
    wid = base + idx
    while True:
        if client.send(frame, id=wid) is not None and res.sent == 0:
            res.sent = 1
        pending[wid] = time.perf_counter()
        got = client.recv(timeout=min(1.0, max(0.0, deadline - time.perf_counter())))
        while got is not None:
            take(got)
            if wid not in pending:
                break
            got = client.recv(timeout=0)
        if wid not in pending:
            break
        if time.perf_counter() >= deadline:
            raise NodeServerError(f"no output from the server within {timeout:g} s; is `node-server serve` running?")
    start = time.perf_counter()  # measure the stream, not the start-up
    next_send = start
    for idx, frame in it:
        while len(pending) >= window:
            got = client.recv(timeout=0.05)
            if got is not None:
                take(got)
            expire()
        if period:
            wait = next_send - time.perf_counter()
            while wait > 0:
                got = client.recv(timeout=wait)
                if got is not None:
                    take(got)
                wait = next_send - time.perf_counter()
            next_send = max(next_send + period, time.perf_counter() - period)
        wid = base + idx
        while client.send(frame, id=wid) is None:  # local queue full: the server is far behind
            got = client.recv(timeout=0.01)
            if got is not None:
                take(got)
            expire()
        pending[wid] = time.perf_counter()
        res.sent += 1
        got = client.recv(timeout=0)
        while got is not None:
            take(got)
            got = client.recv(timeout=0)
    while pending:
        got = client.recv(timeout=0.05)
        if got is not None:
            take(got)
        expire()
    res.seconds = time.perf_counter() - start
    return res


def run(args: argparse.Namespace) -> int:
    from bridges.file import open_sink, open_source
    from bridges.zmq_client import ZmqClient

    from ..errors import NodeServerError

    zin = args.zmq_in or f"tcp://{args.server}:5555"
    zout = args.zmq_out or f"tcp://{args.server}:5556"
    source = open_source(args.input)
    sink = open_sink(args.out, fps=source.fps, source=source) if args.out else None
    client = ZmqClient(zin, zout)
    try:
        if not client.wait_connected(timeout=args.timeout):
            raise NodeServerError(f"could not connect to a server at {zin} / {zout} within {args.timeout:g} s")
        print(f"feeding {len(source)} frames from {args.input} to {zin}, reading {zout}", file=sys.stderr)
        res = feed(
            source,
            client,
            fps=args.fps,
            in_flight=args.in_flight,
            timeout=args.timeout,
            on_output=(lambda i, img: sink.write(img)) if sink is not None else None,
        )
    finally:
        client.close()
        if sink is not None:
            sink.close()
    print(
        f"sent {res.sent}, received {res.received}, lost {res.lost}, {res.fps:.1f} fps, "
        f"latency p50 {res.percentile(50):.1f} ms p95 {res.percentile(95):.1f} ms"
    )
    if args.out:
        print(f"wrote {res.received} frames to {args.out}")
    return 0 if res.received else 1
