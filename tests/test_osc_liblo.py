"""OSC with a third-party implementation: liblo's `oscsend` drives the server, `oscdump` reads
its feedback, and what `oscsend` encodes (every type tag liblo has) goes through our parser.

liblo-tools is a Debian package (`apt-get install liblo-tools`); `.ci/run` installs it, so these
tests skip only where the binaries are missing.
"""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import threading
import time

import pytest

from fakes import FakeTarget
from node_server.control import OscControl
from node_server.control.osc_packet import Char, Message, Midi, parse_packet
from node_server.control.presets import BUILTIN_DIR, PresetStore
from test_osc import udp_socket, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("oscsend") is None or shutil.which("oscdump") is None,
    reason="liblo-tools is not installed (apt-get install liblo-tools; .ci/run installs it)",
)


def oscsend(port: int, address: str, types: str = "", *values: str, host: str = "localhost") -> None:
    subprocess.run(["oscsend", host, str(port), address, types, *values], check=True, timeout=10,
                   capture_output=True)


@pytest.fixture
def target(tmp_path):
    return FakeTarget(PresetStore(BUILTIN_DIR, tmp_path / "user"))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dump:
    """`oscdump -L PORT` in the background; `expect(text)` waits for a line holding `text`."""

    def __init__(self):
        self.port = _free_udp_port()
        self.proc = subprocess.Popen(["oscdump", "-L", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.3)  # let it bind
        assert self.proc.poll() is None, "".join(self.lines)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = 3.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.02)
        pytest.fail(f"oscdump never printed {text!r}; got: {self.lines[-10:]}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def dump():
    d = Dump()
    yield d
    d.close()


def test_oscsend_drives_every_kind_of_control(target):
    ctl = OscControl(target, port=0).start()
    try:
        sent = [
            (("/prompt", "s", "turn it into a watercolour"), ("prompt", "turn it into a watercolour")),
            (("/strength", "f", "0.25"), ("strength", 0.25)),
            (("/strength", "d", "0.5"), ("strength", 0.5)),
            (("/seed", "i", "1234"), ("seed", 1234)),
            (("/seed", "h", "77"), ("seed", 77)),
            (("/steps", "i", "3"), ("steps", 3)),
            (("/seed_mode", "S", "per-frame"), ("seed_mode", "per-frame")),
            (("/temporal/blend", "f", "0.4"), ("temporal_blend", pytest.approx(0.4))),
            (("/blend", "sfsf", "oil", "0.7", "neon", "0.3"), ("blend", [("oil", pytest.approx(0.7)),
                                                                    ("neon", pytest.approx(0.3))])),
        ]
        for args, (param, value) in sent:
            oscsend(ctl.port, *args)
            wait_for(lambda: target.params[param] == value, timeout=3.0)
        oscsend(ctl.port, "/pause", "T")
        wait_for(lambda: target.paused, timeout=3.0)
        assert ctl.errors == 0
    finally:
        ctl.close()


def test_oscdump_reads_the_feedback_and_the_errors(target, dump):
    ctl = OscControl(target, port=0, feedback=("127.0.0.1", dump.port)).start()
    try:
        assert dump.expect("/status/state s").endswith('"running"')
        dump.expect("/status/fps f 29.5")
        oscsend(ctl.port, "/steps", "i", "9")
        dump.expect('/error s "/steps: must be 1..4, got 9"')
        oscsend(ctl.port, "/prompt", "c", "x")  # a char is not a string
        dump.expect("/error s \"/prompt: expected a string, got Char(char='x')\"")
        oscsend(ctl.port, "/strength", "I")  # infinitum
        dump.expect('/error s "/strength: expected a finite number, got inf"')
        oscsend(ctl.port, "/temporal/blend", "f", "0.95")
        dump.expect('/error s "/temporal/blend: ')
        assert target.calls == []
    finally:
        ctl.close()


def test_what_oscsend_encodes_our_parser_reads(tmp_path):
    rx = udp_socket()
    try:
        port = rx.getsockname()[1]
        oscsend(port, "/a", "ifsTcmhdSNIF", "1", "2.5", "hé llo", "x", "00901020", "-7", "1.5", "sym",
                host="127.0.0.1")
        data, _ = rx.recvfrom(65535)
        (message,) = parse_packet(data)
        assert message == Message("/a", (1, 2.5, "hé llo", True, Char("x"), Midi((0, 0x90, 0x10, 0x20)), -7, 1.5,
                                         "sym", None, math.inf, False))
    finally:
        rx.close()
