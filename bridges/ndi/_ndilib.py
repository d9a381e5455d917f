"""Loading the NDI binding (lazily) and the discovery settings shared by the receiver, sender and list.

The binding is `ndi-python` (https://pypi.org/project/ndi-python/, module `NDIlib`), a one-to-one
pybind11 wrapper of the NDI SDK whose wheels carry the NDI runtime (libndi 6.3) for Linux x86_64
and aarch64, Windows x64 and macOS arm64, so nobody installs the SDK by hand. It is chosen over
`cyndilib` because it exposes the SDK's own creation settings: a finder's extra IPs and groups and
a sender's groups, per instance, which `--ndi-extra-ips` and `--ndi-groups` need (cyndilib's
`Finder()` takes no settings, so extra IPs would mean rewriting the user's NDI config file).
See docs/NDI.md.

Nothing imports the binding at module import time: `load_ndilib()` does, when an NDI input,
output or listing is asked for, and turns a missing module (or a runtime that cannot load) into
one clear error. Tests may pass a module with the same calls (`load_ndilib(module)`).
"""

from __future__ import annotations

import sys
import threading
from typing import Any

INSTALL_HINT = 'pip install "node-server[ndi]"'

_init_lock = threading.Lock()
_initialised: set[int] = set()  # id() of binding modules whose runtime is initialised


class NdiUnavailable(RuntimeError):
    """The NDI binding cannot be imported or its runtime cannot start on this machine."""


WHEEL_PLATFORMS = {("linux", "x86_64"), ("linux", "aarch64"), ("win32", "amd64"), ("darwin", "arm64")}


def unavailable_message(exc: BaseException | None = None, platform: str | None = None,
                        machine: str | None = None) -> str:
    """One line saying why NDI cannot be used here and what to do."""
    import platform as _platform

    platform = platform or sys.platform
    machine = (machine or _platform.machine()).lower()
    text = str(exc or "")
    if "avahi" in text:  # the Linux runtime links the Avahi client library (mDNS)
        return ("the NDI runtime needs the Avahi client library (libavahi-client3); install it with "
                "your package manager, e.g. apt-get install libavahi-client3")
    if (platform, machine) not in WHEEL_PLATFORMS:
        return (f"NDI is not available on {platform} {machine}: the ndi-python wheels that carry the NDI runtime "
                "exist for Linux x86_64/aarch64, Windows x64 and macOS arm64; use ZeroMQ (--zmq-in/--zmq-out) here")
    if sys.version_info < (3, 11):
        return (f"NDI needs Python 3.11 or newer (the ndi-python wheels that carry the NDI runtime start at 3.11); "
                f"this is {sys.version.split()[0]}")
    if exc is not None and not isinstance(exc, ModuleNotFoundError):
        return f"the NDI binding (ndi-python) could not load: {text}"
    return f"the NDI binding is not installed; install it with {INSTALL_HINT} (or pip install ndi-python)"


def load_ndilib(module: Any = None) -> Any:
    """The binding module, its runtime initialised once: `module` when given, else `import NDIlib`."""
    if module is None:
        try:
            import NDIlib as module  # type: ignore[import-not-found,no-redef]
        except ImportError as exc:  # also OSError-like loader failures surface as ImportError
            raise NdiUnavailable(unavailable_message(exc)) from exc
        except OSError as exc:
            raise NdiUnavailable(unavailable_message(exc)) from exc
    with _init_lock:
        if id(module) not in _initialised:
            if not module.initialize():
                raise NdiUnavailable("the NDI runtime did not start (NDIlib_initialize failed: this CPU "
                                     "lacks the SSE4.2/NEON instructions NDI needs)")
            _initialised.add(id(module))  # never destroyed: the runtime lives as long as the process
    return module


def split_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'] (NDI's comma-separated IP and group lists)."""
    if not text:
        return []
    return [part.strip() for part in str(text).split(",") if part.strip()]


def find_settings(lib: Any, extra_ips: str | None = None, groups: str | None = None) -> Any:
    """A `FindCreate` that shows local sources, looks in `groups` (None: NDI's default, "public")
    and also asks the machines in `extra_ips` directly (unicast discovery, no mDNS needed)."""
    settings = lib.FindCreate()
    settings.show_local_sources = True
    if split_list(groups):
        settings.groups = ",".join(split_list(groups))
    if split_list(extra_ips):
        settings.extra_ips = ",".join(split_list(extra_ips))
    return settings


def current_sources(lib: Any, finder: Any) -> list[tuple[str, str]]:
    """(NDI name, address) of every source the finder knows now."""
    out = []
    for source in lib.find_get_current_sources(finder):
        out.append((str(source.ndi_name), str(source.url_address or "")))
    return out
