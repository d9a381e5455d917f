"""`node-server ndi-list`: the NDI sources seen from this machine now, with their addresses
(names to pass to --ndi-in)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ndi-extra-ips", default=None, metavar="IPS",
                   help="comma-separated machines to ask directly (networks without mDNS; 127.0.0.1 for this machine)")
    p.add_argument("--ndi-groups", default=None, metavar="GROUPS", help="comma-separated NDI groups to look in (default: public)")
    p.add_argument("--wait", type=float, default=2.0, metavar="SECONDS", help="how long to look (default 2)")


def run(args: argparse.Namespace) -> int:
    from bridges.ndi import NdiUnavailable, list_sources

    from ..errors import NodeServerError
    from ..server.config import check_ndi

    if not 0 <= args.wait <= 60:
        raise NodeServerError(f"--wait must be 0..60 seconds, got {args.wait}")
    if args.ndi_extra_ips is not None:
        check_ndi("ndi_extra_ips", args.ndi_extra_ips, "--ndi-extra-ips")
    try:
        sources = list_sources(args.ndi_extra_ips, args.ndi_groups, wait=args.wait)
    except NdiUnavailable as exc:
        raise NodeServerError(str(exc)) from None
    if not sources:
        hint = "" if args.ndi_extra_ips else "; without mDNS, name the machines with --ndi-extra-ips"
        print(f"no NDI sources seen in {args.wait:g} s{hint}")
        return 0
    for s in sources:
        print(f'"{s.name}"  {s.address or "(no address)"}')
    return 0
