"""Finding NDI sources: what `--ndi-in` asks for, a finder that keeps looking, and `ndi-list`.

An NDI source's name is `MACHINE (STREAM)`, e.g. `STUDIO-PC (TouchDesigner)`. `--ndi-in NAME`
takes the source whose full name is NAME, or else the one whose stream name is NAME;
`--ndi-in ~TEXT` takes the first source whose full name contains TEXT (case-insensitive; `~`
alone takes the first source seen).

Why the finder is renewed: every NDI program on a machine listens on TCP port 5960 with the port
shared, so one unicast query to that machine's address (an `--ndi-extra-ips` entry, or 127.0.0.1
on loopback) reaches one program and lists only that program's sources (seen on Linux with three
programs: each new finder saw one of them). A new finder makes new connections, so while the
source sought is missing the finder is replaced every `renew` seconds until it shows up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ._ndilib import current_sources, find_settings, load_ndilib, split_list


def stream_name(name: str) -> str:
    """'MACHINE (STREAM)' -> 'STREAM' (the name itself when it has no machine part)."""
    i = name.find(" (")
    if i > 0 and name.endswith(")"):
        return name[i + 2 : -1]
    return name


@dataclass(frozen=True)
class SourceQuery:
    """The source `--ndi-in` asks for (see the module's docstring for the syntax)."""

    text: str

    @property
    def contains(self) -> str | None:
        return self.text[1:].casefold() if self.text.startswith("~") else None

    def describe(self) -> str:
        if self.contains is None:
            return f'"{self.text}"'
        return f'first source containing "{self.text[1:]}"' if self.text[1:] else "first source seen"

    def pick(self, sources: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
        """The (name, address) this query takes from `sources`, or None."""
        sources = list(sources)
        needle = self.contains
        if needle is not None:
            return next((s for s in sources if needle in s[0].casefold()), None)
        full = next((s for s in sources if s[0] == self.text), None)
        return full or next((s for s in sources if stream_name(s[0]) == self.text), None)


class Discovery:
    """An NDI finder (`find_create_v2`) that can be renewed; owned by one thread."""

    def __init__(self, lib: Any, extra_ips: str | None = None, groups: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.lib = lib
        self.extra_ips = ",".join(split_list(extra_ips)) or None
        self.groups = ",".join(split_list(groups)) or None
        self.clock = clock
        self._finder: Any = None
        self._born = 0.0
        self.renewals = 0

    def _ensure(self) -> Any:
        if self._finder is None:
            finder = self.lib.find_create_v2(find_settings(self.lib, self.extra_ips, self.groups))
            if finder is None:
                raise RuntimeError("NDI finder could not be created")
            self._finder, self._born = finder, self.clock()
        return self._finder

    def age(self) -> float:
        return self.clock() - self._born if self._finder is not None else 0.0

    def wait(self, timeout_ms: int) -> None:
        """Block up to `timeout_ms` for the source list to change (the binding releases the GIL)."""
        self.lib.find_wait_for_sources(self._ensure(), int(timeout_ms))

    def sources(self) -> list[tuple[str, str]]:
        return current_sources(self.lib, self._ensure())

    def raw_source(self, name: str, address: str) -> Any:
        """The binding's own source object for (name, address), valid until the next finder call."""
        for source in self.lib.find_get_current_sources(self._ensure()):
            if str(source.ndi_name) == name and str(source.url_address or "") == address:
                return source
        return None

    def renew(self) -> None:
        self.close()
        self.renewals += 1
        self._ensure()

    def close(self) -> None:
        if self._finder is not None:
            finder, self._finder = self._finder, None
            self.lib.find_destroy(finder)


@dataclass(frozen=True)
class SourceEntry:
    name: str
    address: str


def list_sources(extra_ips: str | None = None, groups: str | None = None, wait: float = 2.0,
                 ndilib: Any = None, renew: float = 0.5) -> list[SourceEntry]:
    """Every source seen within `wait` seconds, sorted by name.

    One finder lives for the whole wait (mDNS answers can take a moment); with extra IPs a second
    finder is renewed every `renew` seconds so that each program on those machines gets asked.
    """
    lib = load_ndilib(ndilib)
    main = Discovery(lib, extra_ips, groups)
    probe = Discovery(lib, extra_ips, groups) if main.extra_ips else None
    seen: dict[str, str] = {}
    deadline = time.monotonic() + max(0.0, wait)
    try:
        while True:
            for finder in (main, probe):
                if finder is not None:
                    for name, address in finder.sources():
                        seen.setdefault(name, address)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            main.wait(int(min(left, renew) * 1000))
            if probe is not None and probe.age() >= renew:
                probe.renew()
    finally:
        main.close()
        if probe is not None:
            probe.close()
    return [SourceEntry(name, seen[name]) for name in sorted(seen, key=str.casefold)]
