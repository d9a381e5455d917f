"""`node-server` command line: one sub-command per module in `node_server.commands`.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; modules are imported
lazily so that `node-server --help` stays fast and a command's heavy imports cost nothing elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import NodeServerError

# sub-command name -> (module under node_server.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve live frames over ZeroMQ with OSC control (the main job)"),
    "render": ("render", "stylize a video, an image or a folder of images offline"),
    "feed": ("feed", "push a video, image or folder to a running server and collect the output"),
    "synth-model": ("synth_model", "write a random-weight model folder (DreamLite tiny|paper, SD sd-turbo-tiny|"
                                   "sd-turbo|sd-turbo-kl shapes)"),
    "synth-lllite": ("synth_lllite", "write a random ControlNet-LLLite adapter file for a model"),
    "spout-list": ("spout_list", "list the Spout senders running on this machine (Windows)"),
    "ndi-list": ("ndi_list", "list the NDI sources seen from this machine, with their addresses"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="node-server",
        description="Real-time AI stylization server for live visuals.",
    )
    parser.add_argument("--version", action="version", version=f"node-server {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"node_server.commands.{module_name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Run one command; `own_process=True` (the `node-server` program itself, not a caller in
    the same process) lets a command end the process when it is done (`serve` does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.own_process = own_process
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except NodeServerError as exc:
        print(f"node-server {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"node-server {args.command}: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `node-server` program (console script and `python -m node_server`)."""
    sys.exit(main(own_process=True))


if __name__ == "__main__":  # pragma: no cover
    entry()
