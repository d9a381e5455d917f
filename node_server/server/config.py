"""`serve` settings: defaults, an optional TOML file, then command-line flags (flags win).

The frame size has one more source between the default and the file: the model folder's own
`node_server.json` ("size", e.g. 256 for the demo model), used when neither the file nor a flag
gives one.

The file uses the flags' names (`osc-port = 9000` or `osc_port = 9000`); an unknown key or a
value of the wrong type is an error that names the key, so a typo never silently does nothing.
Whatever the file holds (or whatever `--config` points at), the error is one line
(`node_server.toml_file`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NodeServerError
from ..toml_file import read_toml


def default_presets_dir() -> Path:
    """User presets: $NODE_SERVER_PRESETS, else the control side's per-user folder
    (~/.config/node-server/presets, or under $XDG_CONFIG_HOME / %APPDATA% when set)."""
    env = os.environ.get("NODE_SERVER_PRESETS")
    if env:
        return Path(env).expanduser()
    from ..control.presets import default_user_dir

    return default_user_dir()


@dataclass
class ServeConfig:
    """Everything `node-server serve` needs to start."""

    model: str | None = None  # None: node_server.models.DEFAULT_MODEL
    osc_host: str = "127.0.0.1"
    osc_port: int = 9000  # 0: any free port
    osc_prefix: str = ""  # e.g. "/ns": then /ns/prompt
    osc_allow: str | None = None  # "ADDR,NET/BITS,...": OSC only from these sources; None: any
    feedback: str | None = None  # "HOST:PORT" for /status/* and replies; None: reply to sender
    zmq_in: str = "tcp://127.0.0.1:5555"
    zmq_out: str = "tcp://127.0.0.1:5556"
    oscquery_port: int = 9001  # 0: off (and the web console with it)
    console_token: str | None = None  # the web console accepts changes only from pages with this token
    preset: str | None = None
    prompt: str | None = None  # the prompt at start (wins over the preset's); None: the preset's, else none
    presets_dir: str | None = None  # None: default_presets_dir()
    size: int | tuple[int, int] = 512  # a side, or (height, width) when not square ("448x256");
    # resolve(): the model folder's own size (node_server.json) when none is given
    encoder_size: int = 512  # the encoder's view of the frame: 512 (the stock pipeline's) or 256
    batch_size: int | None = None  # None: the engine's default
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    encoder_device: str | None = None  # cpu | cuda | cuda:N for the encoder; None: the engine's device
    spout_in: str | None = None  # Spout sender to receive from ("" = Spout's active sender); Windows
    spout_out: str | None = None  # Spout sender name to send outputs under; Windows
    no_zmq: bool = False  # True: no ZeroMQ sockets (frames only over Spout/NDI)
    ndi_in: str | None = None  # NDI source to receive from: a name, or ~TEXT (docs/NDI.md)
    ndi_out: str | None = None  # NDI source name to send outputs under
    ndi_extra_ips: str | None = None  # comma-separated machines to ask for sources (no mDNS needed)
    ndi_groups: str | None = None  # comma-separated NDI groups to look in and send to (None: public)
    ndi_out_format: str = "bgrx"  # bgrx | uyvy: the pixel format the NDI output sends
    lllite: str | None = None  # a ControlNet-LLLite adapter file (docs/LLLITE.md)
    lllite_blocks: str | None = None  # None: every hook in the file
    lllite_source: str | None = None  # None: temporal
    lllite_refresh: int | None = None  # None: the parameter's default (every batch)
    lllite_strength: float | None = None  # None: 1
    temporal_blend: float | None = None  # None: 0 (off); the temporal output blend (OSC /temporal/blend)

    def feedback_address(self) -> tuple[str, int] | None:
        if not self.feedback:
            return None
        return parse_host_port(self.feedback, "feedback")

    def presets_path(self) -> Path:
        return Path(self.presets_dir).expanduser() if self.presets_dir else default_presets_dir()


_FIELDS = {f.name: f for f in dataclasses.fields(ServeConfig)}
_INT_KEYS = {"osc_port", "oscquery_port", "encoder_size", "batch_size", "lllite_refresh"}
_FLOAT_KEYS = {"lllite_strength", "temporal_blend"}
_BOOL_KEYS = {"no_zmq"}


_ZMQ_TRANSPORTS = ("tcp", "ipc", "inproc")


def check_zmq_address(text: str, what: str) -> str:
    """A ZeroMQ bind address: `tcp://HOST:PORT` with PORT 0..65535 (0 or `*`: any free port),
    `ipc://PATH` or `inproc://NAME`. libzmq itself would bind port 70000 as 70000 % 65536."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _ZMQ_TRANSPORTS or not rest:
        raise NodeServerError(f"{what} must be tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {text!r}")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise NodeServerError(f"{what} must be tcp://HOST:PORT, got {text!r}")
        if port != "*" and not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise NodeServerError(f"{what} port must be 0..65535 (0 or * = any free port), got {text!r}")
    return text


def parse_host_port(text: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise NodeServerError(f"{what} must be HOST:PORT with a port 1..65535, got {text!r}")
    return host.strip("[]"), int(port)


def _check(key: str, value: Any, origin: str) -> Any:
    if key == "size":  # 512 or "WxH" (width x height), multiples of 32
        from ..errors import ParamError
        from ..frame_size import parse_size

        if not isinstance(value, (int, str)):
            raise NodeServerError(f"{origin}: size must be 512 or \"WxH\" such as \"448x256\", got {value!r}")
        try:
            h, w = parse_size(value)
        except ParamError as exc:
            raise NodeServerError(f"{origin}: size {exc.reason}") from None
        return h if h == w else (h, w)
    if key == "prompt":
        from ..engine.params import ParamError, Params

        if not isinstance(value, str):
            raise NodeServerError(f"{origin}: prompt must be a string, got {value!r}")
        try:
            Params().replace(prompt=value)
        except ParamError as exc:
            raise NodeServerError(f"{origin}: prompt {exc.reason}") from None
        return value
    if key in _BOOL_KEYS:
        if not isinstance(value, bool):
            raise NodeServerError(f"{origin}: {key} must be true or false, got {value!r}")
        return value
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NodeServerError(f"{origin}: {key} must be a number, got {value!r}")
        return float(value)
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise NodeServerError(f"{origin}: {key} must be an integer, got {value!r}")
        if key.endswith("port") and not 0 <= value <= 65535:
            raise NodeServerError(f"{origin}: {key} must be 0..65535, got {value}")
        if key == "encoder_size" and not (32 <= value <= 4096 and value % 32 == 0):
            raise NodeServerError(f"{origin}: {key} must be a multiple of 32 in 32..4096, got {value}")
        if key == "batch_size" and value < 1:
            raise NodeServerError(f"{origin}: batch_size must be at least 1, got {value}")
        return value
    if key == "osc_allow":  # a string as on the command line, or a TOML list of them
        from ..control.osc import parse_allow

        parse_allow(value, f"{origin}: osc_allow" if origin.startswith("config") else origin)
        return value if isinstance(value, str) else ",".join(value)
    if not isinstance(value, str):
        raise NodeServerError(f"{origin}: {key} must be a string, got {value!r}")
    if key == "osc_prefix" and value and not value.startswith("/"):
        raise NodeServerError(f"{origin}: osc_prefix must start with '/', got {value!r}")
    if key == "device":
        v = value.lower()
        if not (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())):
            raise NodeServerError(f"{origin}: device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return v
    if key == "encoder_device":
        v = value.lower()
        if not (v in ("cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())):
            raise NodeServerError(f"{origin}: encoder_device must be cpu, cuda or cuda:N, got {value!r}")
        return v
    if key == "feedback":
        parse_host_port(value, f"{origin}: feedback")
    if key == "console_token" and not (8 <= len(value) <= 256 and value.isprintable() and " " not in value):
        raise NodeServerError(f"{origin}: console_token must be 8..256 printable characters without spaces")
    if key.startswith("ndi_"):
        check_ndi(key, value, origin)
    if key in ("zmq_in", "zmq_out"):
        check_zmq_address(value, f"{origin}: {key}")
    if key in ("spout_in", "spout_out"):
        if len(value.encode()) > 255 or "\0" in value:
            raise NodeServerError(f"{origin}: {key} must be a Spout sender name of at most 255 bytes, got {value!r}")
        if key == "spout_out" and not value:
            raise NodeServerError(f"{origin}: spout_out needs a sender name")
    return value


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a TOML file; returns {field name: value}."""
    p = Path(path).expanduser()
    raw = read_toml(p, f"config file {p}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            known = ", ".join(n.replace("_", "-") for n in _FIELDS)
            raise NodeServerError(f"config file {p}: unknown key {key!r}; known keys: {known}")
        out[name] = _check(name, value, f"config file {p}")
    return out


def resolve(flags: dict[str, Any], config_file: str | None = None) -> ServeConfig:
    """Defaults < the model's own frame size < file < flags; `flags` holds only the flags given
    (None means not given)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    for key, value in flags.items():
        if value is not None and key in _FIELDS:
            values[key] = _check(key, value, "--" + key.replace("_", "-"))
    config = ServeConfig(**values)
    check_frame_paths(config)
    from .lllite_settings import check_lllite

    check_lllite(values)  # before a model loads: a missing adapter file fails at once
    if "size" not in values:  # read from the model folder without loading the model
        from ..models.loader import frame_size_for

        config.size = frame_size_for(config.model)
    return config


def check_ndi(key: str, value: str, origin: str) -> None:
    """The NDI keys: names of at most 255 bytes, address lists without spaces, a known format."""
    if key in ("ndi_in", "ndi_out") and (not value or len(value.encode()) > 255 or "\0" in value):
        what = "a source name or ~TEXT" if key == "ndi_in" else "a source name"
        raise NodeServerError(f"{origin}: {key} needs {what} of 1..255 bytes, got {value!r}")
    if key == "ndi_extra_ips":
        bad = [a for a in value.split(",") if a.strip() and not re.fullmatch(r"[A-Za-z0-9.:%\[\]-]+", a.strip())]
        if bad:
            raise NodeServerError(f"{origin}: ndi_extra_ips must be comma-separated IP addresses or host names, "
                                  f"got {bad[0]!r}")
    if key == "ndi_out_format" and value not in ("bgrx", "uyvy"):
        raise NodeServerError(f"{origin}: ndi_out_format must be bgrx or uyvy, got {value!r}")


def check_frame_paths(config: ServeConfig) -> None:
    """Without ZeroMQ, Spout or NDI must bring frames in and take them out."""
    if not config.no_zmq:
        return
    missing = [side for side, given in (("in", (config.spout_in, config.ndi_in)),
                                        ("out", (config.spout_out, config.ndi_out))) if all(v is None for v in given)]
    if missing:
        spout = " and ".join(f"--spout-{side} NAME" for side in missing)
        ndi = " and ".join(f"--ndi-{side} NAME" for side in missing)
        raise NodeServerError(f"--no-zmq turns ZeroMQ off, so frames need {spout} (Spout) or {ndi} (NDI) "
                              "to come in and go out")
