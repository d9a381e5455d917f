"""A small fake of the TouchDesigner objects examples_td/ touches, to run the kit under pytest.

Only what the kit uses: a Script TOP (`scriptOp`) with custom parameter pages
(`appendCustomPage(...).appendStr/appendInt/appendToggle`, each returning a tuple of Par whose
`.default` sets the value), `par.Name.eval()`, `inputs`, `copyNumpyArray`, `addError`/`addWarning`,
`path`; and an input TOP whose `numpyArray(delayed=False, writable=False)` returns float32 RGBA
with TouchDesigner's bottom-left origin (row 0 is the bottom row of the picture).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np


class Par:
    def __init__(self, name: str, style: str, label: str = ""):
        self.name, self.style, self.label = name, style, label
        self.val = None

    @property
    def default(self):
        return self.val

    @default.setter
    def default(self, value):
        self.val = value

    def eval(self):
        return self.val


class ParCollection:
    def __init__(self):
        object.__setattr__(self, "_pars", {})

    def __getattr__(self, name):
        try:
            return self._pars[name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}") from None

    def _add(self, par: Par):
        if not (par.name[:1].isupper() and par.name[1:].islower() or par.name[1:] == ""):
            raise ValueError(f"custom parameter names are Capitalised lowercase: {par.name!r}")
        self._pars[par.name] = par


class Page:
    def __init__(self, owner: "ScriptTOP", name: str):
        self.owner, self.name = owner, name

    def _append(self, name: str, style: str, label: str):
        par = Par(name, style, label)
        self.owner.par._add(par)
        return (par,)

    def appendStr(self, name, label="", **kw):
        return self._append(name, "Str", label)

    def appendInt(self, name, label="", **kw):
        return self._append(name, "Int", label)

    def appendToggle(self, name, label="", **kw):
        return self._append(name, "Toggle", label)


class InputTOP:
    """An input TOP holding an image; `numpyArray` answers in TouchDesigner's layout."""

    def __init__(self, rgb_top_left: np.ndarray):
        self.set(rgb_top_left)

    def set(self, rgb_top_left: np.ndarray) -> None:
        h, w = rgb_top_left.shape[:2]
        rgba = np.ones((h, w, 4), np.float32)
        rgba[:, :, :3] = rgb_top_left.astype(np.float32) / 255.0
        self._array = rgba[::-1].copy()  # bottom-left origin

    def numpyArray(self, delayed=False, writable=False):
        return self._array.copy()


class ScriptTOP:
    def __init__(self, path: str = "/project1/node_server"):
        self.path = path
        self.par = ParCollection()
        self.inputs: list[InputTOP] = []
        self.pages: list[Page] = []
        self.copied: list[np.ndarray] = []
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def appendCustomPage(self, name: str) -> Page:
        page = Page(self, name)
        self.pages.append(page)
        return page

    def copyNumpyArray(self, arr: np.ndarray) -> None:
        if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError("copyNumpyArray takes a (height, width, 3 or 4) array")
        if arr.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"copyNumpyArray: unsupported dtype {arr.dtype}")
        self.copied.append(arr.copy())

    def addError(self, msg: str) -> None:
        self.errors.append(msg)

    def addWarning(self, msg: str) -> None:
        self.warnings.append(msg)


def load_kit_module(path: Path, name: str) -> ModuleType:
    """Import a kit file the way a DAT module is: by its own name, from its text."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
