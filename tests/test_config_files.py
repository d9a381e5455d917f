"""`--config` files and addresses (issue 16, defect 7): one line for any bad input, no traceback.

On main (d041857) a folder, non-UTF-8 bytes, binary junk or a deep nesting given to `--config`
printed a traceback, and `--zmq-in tcp://127.0.0.1:70000` was bound as port 4464.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_server.cli import main
from node_server.errors import NodeServerError
from node_server.server.config import check_zmq_address, load_config_file, resolve
from node_server.toml_file import read_toml

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: bytes, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


BAD_FILES = {
    "non-utf8": (b"\xff\xfe\x00osc_port = 1", "is not UTF-8 text (byte 0xff at offset 0)"),
    "binary junk": (bytes(range(256)) * 8, "is not UTF-8 text"),
    "deep array": (b"osc_port = " + b"[" * 5000 + b"]" * 5000, "values nest too deeply"),
    "deep inline table": (b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000, "values nest too deeply"),
    "huge number": (b"osc_port = 1" + b"0" * 5000, "not valid TOML"),
    "port out of range": (b"osc_port = 99999999999999999999999999999", "osc_port must be 0..65535"),
    "zmq port over 65535": (b'zmq_in = "tcp://127.0.0.1:70000"', "zmq_in port must be 0..65535"),
    "zmq port wraps": (b'zmq-out = "tcp://127.0.0.1:65536"', "zmq_out port must be 0..65535"),
    "zmq no transport": (b'zmq_in = "127.0.0.1:5555"', "zmq_in must be tcp://HOST:PORT"),
    "truncated": (b'zmq_in = "tcp://127.0', "not valid TOML"),
    "nul byte": (b'model = "a\x00b"', "not valid TOML"),
    "too big": (b"# " + b"x" * (1024 * 1024), "is larger than 1024 KiB"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_config_files_are_one_line_errors(tmp_path, name):
    data, message = BAD_FILES[name]
    with pytest.raises(NodeServerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config_file(_write(tmp_path, data))


def test_a_folder_a_device_and_a_missing_file(tmp_path):
    with pytest.raises(NodeServerError, match="is a folder, not a file"):
        load_config_file(tmp_path)
    with pytest.raises(NodeServerError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")
    if os.path.exists("/dev/zero"):  # reading would never end
        with pytest.raises(NodeServerError, match="is not a regular file"):
            load_config_file("/dev/zero")


def test_an_unreadable_file(tmp_path, monkeypatch):
    import node_server.toml_file as toml_file

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(toml_file, "open", denied, raising=False)  # as for a mode-000 file
    with pytest.raises(NodeServerError, match="cannot be read: Permission denied"):
        load_config_file(_write(tmp_path, b"osc_port = 1\n"))


@pytest.mark.parametrize("addr", ["tcp://127.0.0.1:0", "tcp://*:5555", "tcp://[::1]:65535", "tcp://eth0:*",
                                  "ipc:///tmp/node-server.ipc", "inproc://frames"])
def test_good_zmq_addresses(addr):
    assert check_zmq_address(addr, "--zmq-in") == addr


@pytest.mark.parametrize("addr", ["tcp://127.0.0.1:70000", "tcp://127.0.0.1:-1", "tcp://127.0.0.1:", "tcp://:5555",
                                  "tcp://127.0.0.1", "udp://127.0.0.1:5555", "tcp://127.0.0.1:５５５５", ""])
def test_bad_zmq_addresses(addr):
    with pytest.raises(NodeServerError, match="--zmq-in"):
        check_zmq_address(addr, "--zmq-in")


def test_flags_are_checked_as_the_file_is():
    with pytest.raises(NodeServerError, match="--zmq-out: zmq_out port must be 0..65535"):
        resolve({"zmq_out": "tcp://127.0.0.1:99999"})


@pytest.mark.parametrize("name", ["folder", "non-utf8", "binary junk", "deep array", "zmq port over 65535"])
def test_the_command_prints_one_line(tmp_path, name, capsys):
    """Through the real CLI: status 1, one `error:` line on stderr, no traceback."""
    path = tmp_path if name == "folder" else _write(tmp_path, BAD_FILES[name][0])
    assert main(["serve", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("node-server serve: error: config file ")


def test_the_process_prints_one_line_for_a_port_flag():
    """In a subprocess, as the user runs it: nothing is bound, one line, status 1."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    r = subprocess.run([sys.executable, "-m", "node_server", "serve", "--zmq-in", "tcp://127.0.0.1:70000"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "node-server serve: error: --zmq-in: zmq_in port must be 0..65535 (0 or * = any free port), "
        "got 'tcp://127.0.0.1:70000'"]


# -- properties (hypothesis) -------------------------------------------------------------------

_toml_value = st.recursive(
    st.integers(min_value=-(10**40), max_value=10**40) | st.floats(allow_nan=False) | st.booleans()
    | st.text(max_size=10).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    lambda inner: st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    max_leaves=10,
)
_keys = st.sampled_from(["osc_port", "osc-port", "zmq_in", "zmq-out", "size", "batch_size", "device",
                         "feedback", "no_zmq", "lllite_strength", "osc_prefix", "oscquery_port", "nope"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_keys, _toml_value), max_size=4))
def test_any_config_is_loaded_or_refused_in_one_line(tmp_path_factory, pairs):
    text = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in dict(pairs).items())
    p = tmp_path_factory.mktemp("cfg") / "c.toml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        values = load_config_file(p)
    except NodeServerError as exc:
        assert "\n" not in str(exc)
        return
    for key in ("osc_port", "oscquery_port"):
        assert key not in values or 0 <= values[key] <= 65535


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_table_or_a_one_line_error(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("raw") / "c.toml"
    p.write_bytes(data)
    try:
        read_toml(p, "config file c.toml")
    except NodeServerError:
        pass


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=6000), st.sampled_from(["[", "{a = "]), st.booleans())
def test_any_nesting_depth_is_a_table_or_a_one_line_error(tmp_path_factory, depth, opener, closed):
    closer = {"[": "]", "{a = ": "}"}[opener]
    text = "x = " + opener * depth + "1" + (closer * depth if closed else "")
    p = tmp_path_factory.mktemp("deep") / "c.toml"
    p.write_text(text)
    try:
        read_toml(p, "config file c.toml")
    except NodeServerError:
        pass
