"""Finding NDI sources: what `--ndi-in` asks for, the finders that keep looking, and `ndi-list`.

An NDI source's name is `MACHINE (STREAM)`, e.g. `STUDIO-PC (TouchDesigner)`. `--ndi-in NAME`
takes the source whose full name is NAME, or else the one whose stream name is NAME;
`--ndi-in ~TEXT` takes the first source whose full name contains TEXT (case-insensitive; `~`
alone takes the first source seen).

Why probe finders: every NDI program on a machine listens on TCP port 5960 with the port shared,
so one unicast query to that machine's address (an `--ndi-extra-ips` entry, or 127.0.0.1 on
loopback) reaches one program and lists only that program's sources (seen on Linux with three
programs: each new finder saw one of them, chosen at random, its answer there within 3 ms on an
idle machine). So with extra IPs, beside the finder that lives on (mDNS answers take their time),
a new probe finder starts every `probe_every` seconds (0.25 s: four programs asked a second) and
each lives `probe_life` seconds (1 s, time to answer on a loaded machine)."""

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


class _Finder:
    """One `find_create_v2` finder, made on first use; owned by one thread."""

    def __init__(self, lib: Any, settings: Callable[[], Any], clock: Callable[[], float]):
        self.lib, self.settings, self.clock = lib, settings, clock
        self.handle: Any = None
        self.born = 0.0

    def get(self) -> Any:
        if self.handle is None:
            handle = self.lib.find_create_v2(self.settings())
            if handle is None:
                raise RuntimeError("NDI finder could not be created")
            self.handle, self.born = handle, self.clock()
        return self.handle

    def age(self) -> float:
        return self.clock() - self.born if self.handle is not None else 0.0

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            self.lib.find_destroy(handle)


class Discovery:
    """The NDI sources seen now: a finder that lives as long as this object, and with extra IPs
    probe finders started every `probe_every` seconds, each living `probe_life` seconds (see the
    module's docstring)."""

    def __init__(self, lib: Any, extra_ips: str | None = None, groups: str | None = None,
                 probe_every: float = 0.25, probe_life: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.lib = lib
        self.extra_ips = ",".join(split_list(extra_ips)) or None
        self.groups = ",".join(split_list(groups)) or None
        self.probe_every = probe_every
        self.probe_life = max(probe_life, probe_every)
        self._clock = clock

        def settings() -> Any:
            return find_settings(lib, self.extra_ips, self.groups)

        self._settings = settings
        self._main = _Finder(lib, settings, clock)
        self._probes: list[_Finder] = []  # youngest first
        self.probes = 0  # probe finders made
        self.tick()

    def _finders(self) -> list[_Finder]:
        return [*self._probes, self._main]  # the youngest answer first: the freshest

    def wait(self, timeout_ms: int) -> None:
        """Block up to `timeout_ms` for the long-lived finder's list to change (the GIL is released)."""
        self.lib.find_wait_for_sources(self._main.get(), int(timeout_ms))

    def sources(self) -> list[tuple[str, str]]:
        """(name, address) of every source seen now, each name once."""
        seen: dict[str, str] = {}
        for finder in self._finders():
            for name, address in current_sources(self.lib, finder.get()):
                seen.setdefault(name, address)
        return list(seen.items())

    def raw_source(self, name: str, address: str) -> Any:
        """The binding's own source object for (name, address), valid until the next call on it."""
        for finder in self._finders():
            for source in self.lib.find_get_current_sources(finder.get()):
                if str(source.ndi_name) == name and str(source.url_address or "") == address:
                    return source
        return None

    def tick(self) -> None:
        """Start a probe finder when the youngest is `probe_every` old; end those `probe_life` old."""
        if not self.extra_ips:
            return
        while self._probes and self._probes[-1].age() >= self.probe_life:
            self._probes.pop().close()
        if not self._probes or self._probes[0].age() >= self.probe_every:
            probe = _Finder(self.lib, self._settings, self._clock)
            probe.get()  # it starts asking now
            self._probes.insert(0, probe)
            self.probes += 1

    def close(self) -> None:
        for finder in self._finders():
            finder.close()
        self._probes.clear()


@dataclass(frozen=True)
class SourceEntry:
    name: str
    address: str


def list_sources(extra_ips: str | None = None, groups: str | None = None, wait: float = 2.0,
                 ndilib: Any = None, probe_every: float = 0.25) -> list[SourceEntry]:
    """Every source seen within `wait` seconds, sorted by name (see `Discovery`)."""
    lib = load_ndilib(ndilib)
    finders = Discovery(lib, extra_ips, groups, probe_every=probe_every)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + max(0.0, wait)
    try:
        while True:
            for name, address in finders.sources():
                seen.setdefault(name, address)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            finders.wait(int(min(left, probe_every) * 1000))
            finders.tick()
        for name, address in finders.sources():
            seen.setdefault(name, address)
    finally:
        finders.close()
    return [SourceEntry(name, seen[name]) for name in sorted(seen, key=str.casefold)]
