"""Frame-loop speed with the web console closed and open (docs/CONSOLE.md).

Runs the real server (`ServerApp`) on a model, keeps its input buffer full with a photo, and counts
the frames delivered per second in alternating windows: no console page, then one page watching
(a WebSocket client asking for thumbnails, as the page does while visible), and so on. The
difference is what the console costs the show.

    python -m bench.console_overhead --model synthetic:tiny --device cpu
    python -m bench.console_overhead --model demo --device cpu --window 20
    python -m bench.console_overhead --model synthetic:paper --device cuda --size 512 --window 20
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _photo(size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(ROOT / "tests" / "data" / "coffee.png").convert("RGB").resize((size, size))
    return np.asarray(img, dtype=np.uint8).copy()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Viewer(threading.Thread):
    """A console page: one WebSocket, thumbnails on; counts what it receives."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        import websocket

        self.ws = websocket.create_connection(url, timeout=5)
        self.ws.recv()  # hello
        self.ws.send(json.dumps({"type": "watch", "frames": True}))
        self.thumbnails = 0
        self.stop = threading.Event()

    def run(self) -> None:
        self.ws.settimeout(0.5)
        while not self.stop.is_set():
            try:
                m = self.ws.recv()
            except Exception:
                continue
            if isinstance(m, bytes):
                self.thumbnails += 1

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        self.ws.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="synthetic:tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=None, help="frame size (default: the model's own, else 512)")
    p.add_argument("--window", type=float, default=10.0, help="seconds per measurement window")
    p.add_argument("--rounds", type=int, default=3, help="closed/open pairs")
    args = p.parse_args(argv)

    from node_server.models.loader import frame_size_for
    from node_server.server.app import ServerApp
    from node_server.server.config import ServeConfig

    size = args.size or frame_size_for(args.model)
    cfg = ServeConfig(model=args.model, device=args.device, size=size, zmq_in="tcp://127.0.0.1:0",
                      zmq_out="tcp://127.0.0.1:0", osc_port=0, oscquery_port=_free_port())
    app = ServerApp(cfg, out=io.StringIO(), progress=False)
    app.open()
    app.load()
    photo = _photo(size)
    stop = threading.Event()

    def feed() -> None:  # keep the freshest-frame buffer full: the engine never waits for input
        i = 0
        while not stop.is_set():
            app.submit_frame(i, photo, time.perf_counter(), time.time())
            i += 1
            time.sleep(0.001)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(min(5.0, args.window))  # warm-up
    ws_url = f"ws://127.0.0.1:{app.oscquery.port}/console/ws"
    closed, opened, thumbs = [], [], []
    cpu = {False: [], True: []}  # process CPU ms per delivered frame: robust to other load
    try:
        for _ in range(args.rounds):
            for watching in (False, True):
                viewer = Viewer(ws_url) if watching else None
                if viewer:
                    viewer.start()
                    time.sleep(0.5)
                f0, t0, c0 = app.status().frames, time.perf_counter(), time.process_time()
                time.sleep(args.window)
                frames = app.status().frames - f0
                fps = frames / (time.perf_counter() - t0)
                cpu[watching].append((time.process_time() - c0) * 1000.0 / max(frames, 1))
                if viewer:
                    thumbs.append(viewer.thumbnails / (args.window + 0.5))
                    viewer.close()
                    opened.append(fps)
                else:
                    closed.append(fps)
                print(f"  console {'open  ' if watching else 'closed'}: {fps:7.2f} fps, "
                      f"{cpu[watching][-1]:7.2f} CPU ms per frame", flush=True)
    finally:
        stop.set()
        app.close()
    c, o = statistics.median(closed), statistics.median(opened)
    print(f"{args.model} on {args.device} at {size}x{size}: console closed {c:.2f} fps, open {o:.2f} fps "
          f"({(o - c) / c * 100:+.1f}%); CPU per frame closed {statistics.median(cpu[False]):.2f} ms, "
          f"open {statistics.median(cpu[True]):.2f} ms; thumbnails {statistics.median(thumbs):.1f}/s to the page "
          f"(median of {args.rounds} windows of {args.window:g} s each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
