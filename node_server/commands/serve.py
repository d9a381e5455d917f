"""`node-server serve`: frames over ZeroMQ, Spout and/or NDI, control over OSC, until SIGINT/SIGTERM.

Start-up, the model load, signals and shutdown are `node_server.server.lifecycle`'s job: a
signal at any moment ends the process with status 0 within 2 s.
"""

from __future__ import annotations

import argparse

from .lllite_args import add_lllite_arguments, add_temporal_blend_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that a value from --config is only overridden by flags actually given.
    p.add_argument("--model", default=None,
                   help="demo (the default: the embedded demo model), synthetic:tiny|paper|sd-turbo-tiny|sd-turbo, "
                        "a model folder or a hub id")
    p.add_argument("--osc-host", default=None, help="address the OSC server binds (default 127.0.0.1)")
    p.add_argument("--osc-port", type=int, default=None, help="OSC UDP port (default 9000; 0 = any free port)")
    p.add_argument("--osc-prefix", default=None, metavar="/PREFIX", help="prefix for every OSC address, e.g. /ns")
    p.add_argument("--feedback", default=None, metavar="HOST:PORT", help="send /status/* and /error to this OSC target")
    p.add_argument("--osc-allow", default=None, metavar="ADDR[,NET/BITS...]",
                   help="take OSC only from these addresses/networks, e.g. 127.0.0.1,192.168.1.0/24 "
                        "(default: any source that can reach --osc-host)")
    p.add_argument("--zmq-in", default=None, metavar="ADDR", help="ZeroMQ PULL address for frames in (default tcp://127.0.0.1:5555)")
    p.add_argument("--zmq-out", default=None, metavar="ADDR", help="ZeroMQ PUB address for frames out (default tcp://127.0.0.1:5556)")
    p.add_argument("--spout-in", default=None, metavar="NAME",
                   help="also take frames from this Spout sender (Windows; \"\" = Spout's active sender; "
                        "node-server spout-list shows the senders)")
    p.add_argument("--spout-out", default=None, metavar="NAME", help="also send every output as this Spout sender (Windows)")
    p.add_argument("--ndi-in", default=None, metavar="NAME",
                   help="also take frames from this NDI source: its name (\"MACHINE (STREAM)\" or STREAM) or "
                        "~TEXT for the first source containing TEXT; waits for it (node-server ndi-list shows them)")
    p.add_argument("--ndi-out", default=None, metavar="NAME", help="also send every output as this NDI source")
    p.add_argument("--ndi-extra-ips", default=None, metavar="IPS",
                   help="comma-separated machines to ask for NDI sources directly (networks without mDNS; "
                        "127.0.0.1 for this machine)")
    p.add_argument("--ndi-groups", default=None, metavar="GROUPS",
                   help="comma-separated NDI groups to find sources in and to send to (default: public)")
    p.add_argument("--ndi-out-format", default=None, choices=("bgrx", "uyvy"),
                   help="pixel format of the NDI output (default bgrx)")
    p.add_argument("--no-zmq", action="store_const", const=True, default=None,
                   help="no ZeroMQ sockets: frames only over Spout/NDI (needs an input and an output)")
    p.add_argument("--oscquery-port", type=int, default=None,
                   help="OSCQuery HTTP/WebSocket port, also the web console's (default 9001; 0 = off)")
    p.add_argument("--console-token", default=None, metavar="TOKEN",
                   help="the web console (/console) accepts changes only from pages opened with ?token=TOKEN; "
                        "without it the console is read-only when bound off loopback (docs/CONSOLE.md)")
    p.add_argument("--preset", default=None, help="preset to recall at start-up")
    p.add_argument("--prompt", default=None, metavar="TEXT",
                   help="prompt at start-up (wins over the preset's); with neither, frames pass through "
                        "unchanged until a prompt arrives over OSC")
    p.add_argument("--presets-dir", default=None, metavar="DIR",
                   help="user presets (default $NODE_SERVER_PRESETS or ~/.config/node-server/presets)")
    p.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file with the same keys as these flags (flags win)")
    p.add_argument("--size", default=None, metavar="SIZE",
                   help="output size: 512 (square) or WxH such as 448x256 (16:9), multiples of 32 (default: the "
                        "model folder's own size from its node_server.json, 256 for the demo model; else 512)")
    p.add_argument("--encoder-size", type=int, default=None, metavar="PX",
                   help="size of the frame the vision-language encoder sees: 512 (default, as the stock "
                        "pipeline) or 256 (64 image tokens instead of 256: a cheaper encode)")
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="frames per engine step (default 1)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--encoder-device", default=None, metavar="DEV",
                   help="where the vision-language encoder runs: cpu, cuda or cuda:N, e.g. a second GPU "
                        "(default: the engine's device)")
    add_lllite_arguments(p)
    add_temporal_blend_argument(p)


_KEYS = ("model", "osc_host", "osc_port", "osc_prefix", "osc_allow", "feedback", "zmq_in", "zmq_out", "oscquery_port",
         "console_token",
         "preset", "prompt", "presets_dir", "size", "encoder_size", "batch_size", "device", "encoder_device", "spout_in", "spout_out", "no_zmq",
         "ndi_in", "ndi_out", "ndi_extra_ips", "ndi_groups", "ndi_out_format",
         "lllite", "lllite_blocks", "lllite_source", "lllite_refresh", "lllite_strength", "temporal_blend")


def config_from_args(args: argparse.Namespace):
    """The `ServeConfig` for these arguments: defaults < the model folder's own size < --config < flags."""
    from ..server.config import resolve

    return resolve({k: getattr(args, k, None) for k in _KEYS}, args.config)


def run(args: argparse.Namespace) -> int:
    from ..server.lifecycle import Lifecycle

    def make_app():
        from ..server.app import ServerApp

        return ServerApp(config_from_args(args))

    # Signals are taken over before anything slow (the config reads the model folder, torch
    # loads): from here on a Ctrl-C exits 0. As its own process, serve ends it inside `run`.
    return Lifecycle(owns_process=getattr(args, "own_process", False)).run(make_app)
