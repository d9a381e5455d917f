"""Soak test: a live `node-server serve` under show load and hostile traffic for N minutes.

    python -m tools.soak --model demo --minutes 30 --device cpu
    python -m tools.soak --model synthetic:paper --minutes 30 --device cuda --size 512 --max-stall 1

What it does, all at once, against a server it starts as a subprocess:
- sends frames over ZeroMQ at `--fps` (30) and reads every output back;
- changes the prompt over OSC every 100 ms and sends `/ping` every second;
- mixes in malformed traffic: bad OSC datagrams (issue 16's negative-size bundle and its nested
  variant, truncated packets, unknown type tags, a 65,000-byte datagram), bad ZeroMQ messages
  (deeply nested headers, a `t` too large for a float, bad JSON, wrong sizes, extra frames, a
  message over the size limit) and HTTP junk on the OSCQuery port;
- every 5 s prints the server's RSS, frames sent/received/dropped/lost and the output intervals.

At the end it stops sending, lets the last frames come back and reports: good frames sent,
received, dropped by the freshest-frame policy (the server's own `/status/dropped`) and lost
(sent, not dropped by the policy, never received), output-interval percentiles, stalls (gaps
over 1 s between outputs), RSS growth, whether every server thread is alive
(`/status/threads_down`, `/status/restarts`) and whether the server still answers `/ping`; then
it stops the server with SIGINT and checks it exits 0 within 2 s. The exit status is 1 when a
frame was lost, a thread died or was restarted, `/ping` went unanswered, the server crashed or
did not stop cleanly, or a `--max-stall` / `--max-rss-growth` limit was passed.

Why a subprocess: the RSS is the server's alone, the traffic generators do not compete with the
server's threads for the GIL (which would distort the intervals), and the stop at the end is
the real signal path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from pythonosc import osc_message_builder, osc_packet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridges.zmq_protocol import MAX_HEADER_BYTES, MAX_PIXEL_BYTES, encode_frame, parse_header  # noqa: E402

REPORT_EVERY = 5.0
STALL_S = 1.0
PROMPTS = ["turn it into a pencil sketch", "make it sepia", "make it a blueprint", "thermal camera look",
           "pixel art", "invert the colours", "a watercolor painting", "neon glow", "night vision", "emboss it"]


# -- bad traffic -------------------------------------------------------------------------------

def _osc(address: str, *args: Any, tags: str | None = None) -> bytes:
    b = osc_message_builder.OscMessageBuilder(address=address)
    for i, a in enumerate(args):
        b.add_arg(a, tags[i] if tags else None)
    return b.build().dgram


_BUNDLE_HEAD = b"#bundle\0" + (1).to_bytes(8, "big")


def _nested_bundle(message: bytes, depth: int) -> bytes:
    for _ in range(depth):
        message = _BUNDLE_HEAD + len(message).to_bytes(4, "big") + message
    return message


BAD_OSC: dict[str, bytes] = {
    "bundle-negative-size": bytes.fromhex("2362756e646c65000000000000000001fffffffc"),  # issue 16
    "bundle-nested-negative-size": _BUNDLE_HEAD + (20).to_bytes(4, "big") + bytes.fromhex(
        "2362756e646c65000000000000000001fffffffc"),
    "bundle-size-past-end": _BUNDLE_HEAD + (4096).to_bytes(4, "big") + b"/x\0\0,\0\0\0",
    "truncated": _osc("/strength", 0.5)[:-3],
    "float-tag-no-data": b"/strength\0\0\0,f\0\0",
    "unknown-type-tags": b"/prompt\0" + b"," + b"Q" * 40 + b"\0" * 3,
    "huge-unknown-tags": b"/prompt\0" + (b"," + b"Q" * 64_991 + b"\0" * 4)[:64_996],
    "unknown-address": _osc("/no/such/address", 1),
    "wrong-type": _osc("/steps", "many"),
    "out-of-range": _osc("/steps", 99),
    "pattern": _osc("/st*", 1),
    "not-osc": b"GET / HTTP/1.1\r\n\r\n",
    "empty": b"",
    "deep-bundle": _nested_bundle(_osc("/seed", 1), 200),
}

_GOOD_HEADER = {"v": 1, "id": -1, "w": 8, "h": 8, "c": 3, "dtype": "uint8"}
BAD_ZMQ: dict[str, list[bytes]] = {
    "deep-array": [b"[" * 5000 + b"]" * 5000, bytes(192)],
    "deep-object": [b'{"a":' * 5000 + b"1" + b"}" * 5000, bytes(192)],
    "t-too-large": [json.dumps({**_GOOD_HEADER, "t": 10**400}).encode(), bytes(192)],
    "t-infinite": [json.dumps(_GOOD_HEADER)[:-1].encode() + b',"t":1e999}', bytes(192)],
    "not-json": [b"{not json", bytes(192)],
    "not-utf8": [b"\xff\xfe\xfd", bytes(192)],
    "header-too-big": [json.dumps({**_GOOD_HEADER, "pad": "x" * MAX_HEADER_BYTES}).encode(), bytes(192)],
    "escaped-quotes": [b'"' + b'\\"' * 30000, bytes(192)],
    "size-mismatch": [json.dumps(_GOOD_HEADER).encode(), bytes(191)],
    "negative-size": [json.dumps({**_GOOD_HEADER, "w": -8}).encode(), bytes(192)],
    "huge-size": [json.dumps({**_GOOD_HEADER, "w": 2**40, "h": 2**40}).encode(), b""],
    "three-frames": [json.dumps(_GOOD_HEADER).encode(), bytes(192), b"extra"],
    "one-frame": [json.dumps(_GOOD_HEADER).encode()],
}

HTTP_JUNK: dict[str, bytes] = {
    "garbage": bytes(range(256)) * 4,
    "half-request": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    "bad-method": b"BREW /coffee HTCPCP/1.0\r\n\r\n",
    "long-line": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    "foreign-host": b"GET /?HOST_INFO HTTP/1.1\r\nHost: evil.example\r\n\r\n",
}


# -- the run -----------------------------------------------------------------------------------

@dataclass
class Tally:
    sent: int = 0  # good frames handed to ZeroMQ
    not_sent: int = 0  # the PUSH queue was full (never entered the count above)
    received: set[int] = field(default_factory=set)
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each output
    latencies_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    bad_outputs: int = 0
    faults: Counter = field(default_factory=Counter)
    pongs: int = 0
    prompt_changes: int = 0
    osc_errors: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    status_at: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t = Tally()
        self.lock = threading.Lock()
        self.stop_faults = threading.Event()
        self.stop_frames = threading.Event()
        self.stop_all = threading.Event()
        self.log: deque[str] = deque(maxlen=400)
        self.log_file = open(args.log, "w", encoding="utf-8", errors="replace") if args.log else None
        self.ctx = zmq.Context()
        self.proc: subprocess.Popen | None = None
        self.endpoints: dict[str, Any] = {}
        self.started = 0.0
        self.threads: list[threading.Thread] = []

    # -- server ------------------------------------------------------------------------------
    def start_server(self) -> None:
        self.fb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.fb.bind(("127.0.0.1", 0))
        self.fb.settimeout(0.2)
        self.fb.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        query_port = _free_tcp_port()
        cmd = [sys.executable, "-m", "node_server", "serve", "--model", self.args.model,
               "--device", self.args.device, "--zmq-in", "tcp://127.0.0.1:0", "--zmq-out", "tcp://127.0.0.1:0",
               "--osc-port", "0", "--oscquery-port", str(query_port),
               "--feedback", f"127.0.0.1:{self.fb.getsockname()[1]}"]
        if self.args.size:
            cmd += ["--size", str(self.args.size)]
        if self.args.batch_size:
            cmd += ["--batch-size", str(self.args.batch_size)]
        cmd += self.args.serve_args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.say("soak: " + " ".join(cmd[1:]))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, errors="replace")
        ready = threading.Event()
        self._spawn(self._read_server_output, ready)
        if not ready.wait(self.args.start_timeout) or self.proc.poll() is not None:
            raise SystemExit("soak: the server did not start:\n" + "\n".join(self.log))
        text = "\n".join(self.log)
        self.endpoints = {
            "zmq_in": re.search(r"frames in\s+(\S+)", text).group(1),
            "zmq_out": re.search(r"frames out\s+(\S+)", text).group(1),
            "osc": ("127.0.0.1", int(re.search(r"OSC in\s+udp://127\.0\.0\.1:(\d+)", text).group(1))),
            "oscquery": ("127.0.0.1", query_port),
        }

    def _read_server_output(self, ready: threading.Event) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            if self.log_file is not None:
                self.log_file.write(line + "\n")
            if "serve: running" in line:
                ready.set()

    def rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
        except (OSError, AttributeError):
            try:
                import psutil  # optional: other platforms

                return psutil.Process(self.proc.pid).memory_info().rss / 2**20
            except Exception:
                return None

    # -- traffic -----------------------------------------------------------------------------
    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=target.__name__, daemon=True)
        t.start()
        self.threads.append(t)

    def send_frames(self) -> None:
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 64)
        push.connect(self.endpoints["zmq_in"])
        size = self.args.frame_size
        base = np.indices((size, size)).sum(axis=0).astype(np.uint8)
        period = 1.0 / self.args.fps
        next_at = time.monotonic()
        i = 0
        while not self.stop_frames.is_set():
            k = np.uint8(i % 256)
            frame = np.stack([base + k, base * np.uint8(2) - k, np.full_like(base, (i * 3) % 256)], axis=-1)
            parts = encode_frame(frame, id=i, t=time.time())
            try:
                push.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                with self.lock:
                    self.t.sent += 1
            except zmq.Again:
                with self.lock:
                    self.t.not_sent += 1
            i += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_frames.wait(delay)
            else:
                next_at = time.monotonic()  # fell behind: no burst to catch up
        push.close(0)

    def receive_frames(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.endpoints["zmq_out"])
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while not self.stop_all.is_set():
            if not poller.poll(100):
                continue
            head, _ = sub.recv_multipart()
            now = time.monotonic()
            try:
                h = parse_header(head)
            except Exception:
                with self.lock:
                    self.t.bad_outputs += 1
                continue
            with self.lock:
                if h.id in self.t.received:
                    self.t.duplicates += 1
                    continue
                self.t.received.add(h.id)
                self.t.arrivals.append(now)
                if h.t is not None:
                    self.t.latencies_ms.append((time.time() - h.t) * 1000.0)
        sub.close(0)

    def osc_control(self) -> None:
        """A prompt change every 100 ms and a /ping every second, from one UDP socket."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        self.osc_sock = sock
        k = 0
        next_at = time.monotonic()
        while not self.stop_faults.is_set():
            if time.monotonic() >= next_at:
                sock.sendto(_osc("/prompt", PROMPTS[k % len(PROMPTS)]), self.endpoints["osc"])
                with self.lock:
                    self.t.prompt_changes += 1
                if k % 10 == 0:
                    sock.sendto(_osc("/ping"), self.endpoints["osc"])
                k += 1
                next_at += 0.1
            self._read_osc_replies(sock)

    def _read_osc_replies(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (socket.timeout, OSError):
            return
        for address, _ in _messages(data):
            with self.lock:
                if address.endswith("/pong"):
                    self.t.pongs += 1
                elif address.endswith("/error"):
                    self.t.osc_errors += 1

    def listen_feedback(self) -> None:
        while not self.stop_all.is_set():
            try:
                data = self.fb.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            update = {a.rsplit("/", 1)[-1]: (p[0] if p else None)
                      for a, p in _messages(data) if "/status/" in a}
            if update:
                with self.lock:
                    self.t.status.update(update)
                    self.t.status_at = time.monotonic()

    def inject_faults(self) -> None:
        """One malformed input every `--fault-every` seconds, cycling through every kind."""
        osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        osc.bind(("127.0.0.1", 0))
        osc.setblocking(False)
        push = self.ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 16)
        push.connect(self.endpoints["zmq_in"])
        kinds = [("osc", k) for k in BAD_OSC if k not in self.args.skip_fault] + \
                [("zmq", k) for k in BAD_ZMQ if k not in self.args.skip_fault] + \
                [("http", k) for k in HTTP_JUNK if k not in self.args.skip_fault]
        oversized_every = 30.0
        last_oversized = time.monotonic()
        rng = random.Random(16)
        while not self.stop_faults.wait(self.args.fault_every):
            kind, name = rng.choice(kinds)
            try:
                if kind == "osc":
                    osc.sendto(BAD_OSC[name], self.endpoints["osc"])
                elif kind == "zmq":
                    push.send_multipart(BAD_ZMQ[name], flags=zmq.NOBLOCK)
                else:
                    self._http_junk(HTTP_JUNK[name])
                with self.lock:
                    self.t.faults[f"{kind}:{name}"] += 1
            except (OSError, zmq.ZMQError):
                with self.lock:
                    self.t.faults[f"{kind}:{name}:not-delivered"] += 1
            try:  # drain the /error answers so the socket buffer never fills
                while osc.recv(65536):
                    pass
            except OSError:
                pass
            if "zmq:oversized" not in self.args.skip_fault and time.monotonic() - last_oversized > oversized_every:
                last_oversized = time.monotonic()
                self._oversized()
        push.close(0)
        osc.close()

    def _http_junk(self, payload: bytes) -> None:
        with socket.create_connection(self.endpoints["oscquery"], timeout=0.3) as s:
            s.sendall(payload)
            try:
                s.recv(4096)
            except OSError:
                pass

    def _oversized(self) -> None:
        """A message over the server's size limit (ZeroMQ drops the connection before buffering)."""
        big = self.ctx.socket(zmq.PUSH)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(self.endpoints["zmq_in"])
        try:
            big.send_multipart([json.dumps(_GOOD_HEADER).encode(), bytes(MAX_PIXEL_BYTES + MAX_HEADER_BYTES + 1)],
                               flags=zmq.NOBLOCK, copy=False)
            with self.lock:
                self.t.faults["zmq:oversized"] += 1
        except zmq.ZMQError:
            pass
        threading.Timer(5.0, big.close, kwargs={"linger": 0}).start()

    # -- checks ------------------------------------------------------------------------------
    def ping(self, timeout: float = 3.0) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                sock.sendto(_osc("/ping"), self.endpoints["osc"])
                try:
                    if any(a.endswith("/pong") for a, _ in _messages(sock.recv(65536))):
                        return True
                except socket.timeout:
                    continue
            return False
        finally:
            sock.close()

    def oscquery_answers(self) -> bool:
        try:
            with socket.create_connection(self.endpoints["oscquery"], timeout=2.0) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                head = s.recv(64)
                return head.startswith(b"HTTP/1.") and head[9:12] == b"200"
        except OSError:
            return False

    def status(self, max_age: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + max_age + 1.0
        while time.monotonic() < deadline:
            with self.lock:
                if time.monotonic() - self.t.status_at < max_age:
                    return dict(self.t.status)
            time.sleep(0.05)
        with self.lock:
            return dict(self.t.status)

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        self.start_server()
        self.started = time.monotonic()
        self.load_start = _loadavg()
        self._spawn(self.listen_feedback)
        self._spawn(self.receive_frames)
        time.sleep(0.3)  # slow joiner: the subscription reaches the server first
        self._spawn(self.send_frames)
        self._spawn(self.osc_control)
        self._spawn(self.inject_faults)
        end = self.started + a.minutes * 60.0
        next_report = self.started
        crashed = False
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                crashed = True
                break
            if time.monotonic() >= next_report:
                self.report_line()
                next_report += REPORT_EVERY
            time.sleep(0.05)
        self.stop_faults.set()
        self.stop_frames.set()
        summary: dict[str, Any] = {"crashed": crashed}
        if not crashed:
            self.drain()
            self.report_line()
            st = self.status()
            summary.update(self.summary(st))
            summary["ping"] = self.ping()
            summary["oscquery_answers"] = self.oscquery_answers()
            summary.update(self.stop_server())
        else:
            summary["exit_code"] = self.proc.returncode
            summary.update(self.summary(self.t.status))
        self.stop_all.set()
        return self.verdict(summary)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every sent frame is either received or counted as dropped by the server."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(max_age=0.6)
            with self.lock:
                accounted = len(self.t.received) + int(st.get("dropped") or 0)
                if accounted >= self.t.sent and time.monotonic() - (self.t.arrivals[-1] if self.t.arrivals else 0) > 0.5:
                    return
            time.sleep(0.25)

    def stop_server(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "hung"
        return {"exit_code": code, "stop_s": round(time.monotonic() - t0, 3)}

    def report_line(self) -> None:
        rss = self.rss_mb()
        now = time.monotonic()
        if rss is not None:
            self.t.rss_mb.append((now - self.started, rss))
        with self.lock:
            st = dict(self.t.status)
            recv = len(self.t.received)
            sent = self.t.sent
            last = self.t.arrivals[-200:]
            recent = [b - a for a, b in zip(last, last[1:])]
        dropped = int(st.get("dropped") or 0)
        p50 = _pct(recent, 50) * 1000 if recent else float("nan")
        self.say(f"soak: t={now - self.started:7.1f}s rss={rss if rss is not None else float('nan'):8.1f}MB "
                 f"sent={sent} recv={recv} dropped={dropped} in-flight/lost={sent - recv - dropped} "
                 f"fps={st.get('fps', 0):.1f} interval_p50={p50:.0f}ms errors={st.get('errors')} "
                 f"threads_down={st.get('threads_down')} restarts={st.get('restarts')} state={st.get('state')}")

    def summary(self, st: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            arrivals = list(self.t.arrivals)
            lat = list(self.t.latencies_ms)
            t = self.t
            intervals = [b - a for a, b in zip(arrivals, arrivals[1:])]
            dropped = int(st.get("dropped") or 0)
            received = len(t.received)
            lost = max(0, t.sent - received - dropped)
            rss = [r for _, r in t.rss_mb]
            after_warm = [r for s, r in t.rss_mb if s >= min(60.0, self.args.minutes * 60 / 4)] or rss
            return {
                "minutes": self.args.minutes,
                "model": self.args.model,
                "device": self.args.device,
                "host": {"cpus": os.cpu_count(), "loadavg_start": getattr(self, "load_start", None),
                         "loadavg_end": _loadavg()},
                "frames_sent": t.sent,
                "frames_not_sent_queue_full": t.not_sent,
                "frames_received": received,
                "frames_dropped_by_policy": dropped,
                "frames_lost": lost,
                "duplicates": t.duplicates,
                "bad_outputs": t.bad_outputs,
                "server_frames": st.get("frames"),
                "server_errors": st.get("errors"),
                "threads_down": st.get("threads_down"),
                "restarts": st.get("restarts"),
                "state": st.get("state"),
                "interval_ms": {p: round(_pct(intervals, p) * 1000, 1) for p in (50, 90, 99, 100)} if intervals else {},
                "latency_ms": {p: round(_pct(lat, p), 1) for p in (50, 90, 99)} if lat else {},
                "stalls_over_1s": sum(1 for d in intervals if d > STALL_S),
                "stalls": [[round(a - self.started, 1), round(b - a, 2)]  # [seconds into the run, gap]
                           for a, b in zip(arrivals, arrivals[1:]) if b - a > STALL_S][:100],
                "longest_gap_s": round(max(intervals), 3) if intervals else None,
                "rss_mb_first": round(after_warm[0], 1) if after_warm else None,
                "rss_mb_last": round(rss[-1], 1) if rss else None,
                "rss_mb_max": round(max(rss), 1) if rss else None,
                "rss_growth_pct": round((rss[-1] / after_warm[0] - 1) * 100, 2) if after_warm and rss else None,
                "faults_sent": sum(n for k, n in t.faults.items() if not k.endswith("not-delivered")),
                "fault_kinds": dict(sorted(t.faults.items())),
                "prompt_changes": t.prompt_changes,
                "pongs": t.pongs,
                "osc_errors_answered": t.osc_errors,
            }

    def verdict(self, s: dict[str, Any]) -> int:
        problems = []
        if s.get("crashed"):
            problems.append(f"the server exited during the run (status {s.get('exit_code')})")
        if s.get("frames_lost"):
            problems.append(f"{s['frames_lost']} good frames lost")
        if s.get("threads_down"):
            problems.append(f"{s['threads_down']} server threads down")
        if s.get("restarts"):
            problems.append(f"{s['restarts']} server thread restarts")
        if s.get("frames_received", 0) == 0:
            problems.append("no frame came back")
        if s.get("state") != "running":
            problems.append(f"/status/state is {s.get('state')!r} at the end, not 'running'")
        if not s.get("crashed"):
            if not s.get("ping"):
                problems.append("/ping not answered at the end")
            if s.get("exit_code") != 0 or (s.get("stop_s") or 0) >= 2.0:
                problems.append(f"stop: status {s.get('exit_code')} after {s.get('stop_s')} s (want 0 within 2 s)")
        if self.args.max_stall and (s.get("longest_gap_s") or 0) > self.args.max_stall:
            problems.append(f"a gap of {s['longest_gap_s']} s between outputs (limit {self.args.max_stall} s)")
        growth = s.get("rss_growth_pct")
        if self.args.max_rss_growth is not None and growth is not None and growth > self.args.max_rss_growth:
            problems.append(f"RSS grew {growth}% (limit {self.args.max_rss_growth}%)")
        s["problems"] = problems
        s["ok"] = not problems
        self.say("soak: summary " + json.dumps(s, indent=1))
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(s, indent=1) + "\n")
        if problems:
            self.say("soak: FAILED: " + "; ".join(problems))
            self.say("soak: last server output:\n" + "\n".join(list(self.log)[-40:]))
            return 1
        self.say("soak: OK")
        return 0

    def say(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        self.stop_faults.set()
        self.stop_frames.set()
        self.stop_all.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(2.0)
        self.ctx.term()
        if self.log_file is not None:
            self.log_file.close()


def _messages(data: bytes) -> list[tuple[str, list]]:
    try:
        return [(m.message.address, list(m.message.params)) for m in osc_packet.OscPacket(data).messages]
    except Exception:
        return []


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="synthetic:tiny", help="passed to serve --model (default synthetic:tiny)")
    p.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    p.add_argument("--device", default="cpu", help="serve --device (default cpu)")
    p.add_argument("--size", type=int, default=None, help="serve --size (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=None, help="serve --batch-size")
    p.add_argument("--fps", type=float, default=30.0, help="frames sent per second (default 30)")
    p.add_argument("--frame-size", type=int, default=256, help="side of the square frames sent (default 256)")
    p.add_argument("--fault-every", type=float, default=0.05, help="seconds between malformed inputs (default 0.05)")
    p.add_argument("--skip-fault", action="append", default=[], metavar="NAME",
                   help="leave out one kind of bad input (e.g. bundle-negative-size, oversized); repeatable")
    p.add_argument("--max-stall", type=float, default=0.0, help="fail when outputs stop for longer (s; 0 = report only)")
    p.add_argument("--max-rss-growth", type=float, default=None, help="fail when RSS grows more (percent)")
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the server to run")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary here")
    p.add_argument("--log", default=None, metavar="FILE", help="write the server's output here")
    p.add_argument("serve_args", nargs="*", help="more serve flags, after --")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.fps <= 0:
        p.error("--minutes and --fps must be positive")
    soak = Soak(args)
    try:
        return soak.run()
    finally:
        soak.close()


if __name__ == "__main__":
    sys.exit(main())
