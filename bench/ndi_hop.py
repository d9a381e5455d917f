"""The NDI hop against ZeroMQ: a 1080p source through `node-server serve`, fps and latency each way.

One server runs (a subprocess, as in a show) with ZeroMQ and NDI both on. This process plays the
visuals machine twice over, one path after the other, with the same frames at the same rate:

- ZeroMQ: 1920x1080 RGB frames PUSHed with `t` = this clock; outputs read from the PUB socket;
- NDI: the same frames as BGRX from an NDI source (`<node_server t=".."/>` in each frame's
  metadata); outputs read from the server's NDI source through the bridge's own receiver.

Latency is frame in to frame out in host memory: from just before the client hands the frame to
ZeroMQ / NDI until the output is a numpy RGB array in this process (the NDI figure includes the
NDI encode of the 1080p input, its decode in the server, the encode of the output and its decode
here). fps is outputs received per second after a warm-up. Both paths reach the engine through
the same freshest-frame buffer, so the difference of the two is what the NDI hop adds.

    python -m bench.ndi_hop --model synthetic:paper --size 512 --seconds 20 --out bench/results
    python -m bench.ndi_hop --model demo --size 512 --seconds 20 --out bench/results

Needs ndi-python (`pip install "node-server[ndi]"`); discovery runs over loopback (extra IPs
127.0.0.1), so no mDNS daemon is needed. Frames are smooth moving gradients with a little noise
(closer to camera or render output than white noise, which NDI's codec handles far worse).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def frames_1080p(count: int = 8, width: int = 1920, height: int = 1080, seed: int = 0) -> list[np.ndarray]:
    """Moving colour gradients with a bright block and mild noise, RGB uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for k in range(count):
        phase = 2 * np.pi * k / count
        rgb = np.stack([
            127 + 100 * np.sin(x / 240 + phase),
            127 + 100 * np.sin(y / 180 - phase),
            127 + 100 * np.sin((x + y) / 400 + 2 * phase),
        ], -1)
        x0 = int((width - 300) * k / max(1, count - 1))
        rgb[400:700, x0:x0 + 300] = (250, 240, 60)
        rgb += rng.normal(0, 4, rgb.shape).astype(np.float32)
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


def summary(latencies_ms: list[float], received: int, sent: int, window_s: float) -> dict:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if lat.size else (lambda q: None)
    return {
        "sent": sent, "received": received, "fps": round(received / window_s, 2) if window_s > 0 else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99),
                       "mean": round(float(lat.mean()), 2) if lat.size else None},
    }


def pace(rate: float, seconds: float, send, stop: threading.Event) -> int:
    """Call `send(k)` at `rate` per second (0: as fast as it returns) for `seconds`; returns the count."""
    t0 = time.perf_counter()
    k = 0
    while not stop.is_set():
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
        if rate > 0:
            due = t0 + k / rate
            if due > now:
                time.sleep(due - now)
        send(k)
        k += 1
    return k


def run_zmq(zin: str, zout: str, frames: list[np.ndarray], rate: float, seconds: float, warmup: float) -> dict:
    from bridges.zmq_client import ZmqClient

    lat: list[float] = []
    received = [0]
    stop = threading.Event()
    measuring_from = time.time() + warmup

    with ZmqClient(zin, zout, sndhwm=2) as client:
        if not client.wait_connected(10.0):
            raise SystemExit("bench: ZeroMQ sockets did not connect")

        def reader():
            while not stop.is_set():
                got = client.recv(timeout=0.2)
                if got is None:
                    continue
                now = time.time()
                header, _image = got  # decoded into a numpy array already
                t = header.get("t")
                if t is not None and t >= measuring_from:
                    lat.append((now - t) * 1000)
                    received[0] += 1

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        sent = pace(rate, seconds + warmup, lambda k: client.send(frames[k % len(frames)], id=k, t=time.time()), stop)
        time.sleep(1.0)  # the last outputs
        stop.set()
        th.join(2)
    return summary(lat, received[0], sent, seconds)


def run_ndi(src: str, dst: str, frames: list[np.ndarray], rate: float, seconds: float, warmup: float) -> dict:
    import NDIlib as ndi

    from bridges.ndi import NdiReceiver, load_ndilib, pixels

    load_ndilib(ndi)
    bgrx = [pixels.rgb_to_bgrx(f) for f in frames]  # the visuals machine's frames, in host memory
    settings = ndi.SendCreate()
    settings.ndi_name = src
    settings.clock_video = False
    sender = ndi.send_create(settings)
    lat: list[float] = []
    received = [0]
    lock = threading.Lock()
    measuring_from = time.time() + warmup

    def on_frame(frame_id, rgb, recv, recv_wall, t):
        now = time.time()  # `rgb` is already the RGB numpy array
        if t is not None and t >= measuring_from:
            with lock:
                lat.append((now - t) * 1000)
                received[0] += 1

    events: list[str] = []
    receiver = NdiReceiver(dst, on_frame, extra_ips="127.0.0.1", on_event=events.append, on_error=events.append)
    receiver.start()
    frame = ndi.VideoFrameV2()
    frame.FourCC = ndi.FOURCC_VIDEO_TYPE_BGRX
    frame.frame_rate_N, frame.frame_rate_D = int(round((rate or 60) * 1000)), 1000
    frame.timecode = ndi.SEND_TIMECODE_SYNTHESIZE
    stop = threading.Event()

    def send(k: int) -> None:
        frame.data = bgrx[k % len(bgrx)]
        frame.metadata = f'<node_server t="{time.time()!r}"/>'
        ndi.send_send_video_v2(sender, frame)

    try:
        # until the server has found this source and this receiver the server's output
        deadline = time.monotonic() + 60
        while (receiver.frames == 0) and time.monotonic() < deadline:
            send(0)
            time.sleep(0.05)
        if receiver.frames == 0:
            raise SystemExit(f"bench: no NDI output from the server in 60 s; events: {events}")
        measuring_from = time.time() + warmup
        sent = pace(rate, seconds + warmup, send, stop)
        time.sleep(1.0)
    finally:
        receiver.close(2.0)
        ndi.send_destroy(sender)
    out = summary(lat, received[0], sent, seconds)
    out["receiver_events"] = events[-5:]
    return out


def start_server(args, src: str, dst: str) -> tuple[subprocess.Popen, str, str, list[str]]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "node_server", "serve", "--size", str(args.size), "--device", args.device,
           "--zmq-in", "tcp://127.0.0.1:0", "--zmq-out", "tcp://127.0.0.1:0", "--osc-port", "0",
           "--oscquery-port", "0", "--ndi-in", src, "--ndi-out", dst, "--ndi-extra-ips", "127.0.0.1",
           "--ndi-out-format", args.ndi_out_format]
    if args.model:
        cmd += ["--model", args.model]
    cmd += args.serve_args
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            print("  server| " + line.rstrip(), file=sys.stderr, flush=True)
            if "node-server serve: running" in line:
                ready.set()

    threading.Thread(target=reader, daemon=True).start()
    if not ready.wait(args.start_timeout) or proc.poll() is not None:
        proc.kill()
        raise SystemExit("bench: the server did not start:\n" + "".join(lines[-30:]))
    text = "".join(lines)
    zin = re.search(r"frames in\s+(tcp://\S+)", text).group(1)
    zout = re.search(r"frames out\s+(tcp://\S+)", text).group(1)
    return proc, zin, zout, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="synthetic:paper", help="serve's --model ('' for the default model)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rate", type=float, default=60.0, help="input frames per second (0: as fast as they go)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per path")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds per path before measuring")
    ap.add_argument("--ndi-out-format", default="bgrx", choices=("bgrx", "uyvy"))
    ap.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for 'running'")
    ap.add_argument("--commit", default=os.environ.get("BENCH_COMMIT", "unknown"))
    ap.add_argument("--out", default=None, help="folder for the JSON result")
    ap.add_argument("serve_args", nargs="*", help="more serve flags after --, e.g. -- --batch-size 1")
    args = ap.parse_args(argv)

    from bridges.ndi import NdiUnavailable, load_ndilib

    try:
        import NDIlib as _  # noqa: F401
        load_ndilib()
    except (ImportError, NdiUnavailable) as exc:
        from bridges.ndi import unavailable_message

        raise SystemExit(f"bench: {exc if isinstance(exc, NdiUnavailable) else unavailable_message(exc)}")

    frames = frames_1080p()
    tag = uuid.uuid4().hex[:8]
    src, dst = f"bench-in-{tag}", f"bench-out-{tag}"
    proc, zin, zout, lines = start_server(args, src, dst)
    try:
        zmq_result = run_zmq(zin, zout, frames, args.rate, args.seconds, args.warmup)
        ndi_result = run_ndi(src, dst, frames, args.rate, args.seconds, args.warmup)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    gpu = "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    z50, n50 = zmq_result["latency_ms"]["p50"], ndi_result["latency_ms"]["p50"]
    result = {
        "bench": "ndi_hop", "date": _dt.date.today().isoformat(), "commit": args.commit, "device": gpu,
        "model": args.model or "default", "size": args.size, "input": "1920x1080", "rate": args.rate,
        "seconds": args.seconds, "ndi_out_format": args.ndi_out_format, "serve_args": args.serve_args,
        "zmq": zmq_result, "ndi": ndi_result,
        "ndi_added_latency_p50_ms": round(n50 - z50, 2) if None not in (z50, n50) else None,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{result['date']}-{gpu.replace(' ', '_')}-{args.commit}-ndi-hop-{(args.model or 'default').replace(':', '_')}{args.size}.json"
        (out / name).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
