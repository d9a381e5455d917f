"""A strict stand-in for the parts of TouchDesigner's Python API that examples_td/ uses.

Written from docs.derivative.ca (the pages of the 2025.30000 series, read through the
`cacheflowe/td-docs-mcp` mirror and the `docs`/`pages` search corpora), not from the kit. Each
class names the page it follows. What the docs leave open is marked "stand-in choice".

Strict, so that a kit written against the wrong API fails here:
- only the operator types below exist (`td.namespace()` holds them as the type objects
  `COMP.create()` takes); a string type name that is not one of them raises;
- `op.par.<name>` for a name the operator's docs page does not list raises AttributeError, and is
  recorded in `td.unknown_pars` (so a lenient `getattr(op.par, name, None)` is caught too);
  tuplet groups expose their members only (`resolutionw`, not `resolution`);
- a menu parameter refuses a value outside its documented menu;
- `default` can only be set on custom parameters, and setting it does not change the value
  (Par Class: `val` and `default` are separate members);
- callbacks are called positionally with the documented number of arguments; one that cannot
  take them raises CallbackSignatureError;
- any TouchDesigner object touched from a thread other than the main one raises
  (Python_threading_in_TouchDesigner: do not access TouchDesigner objects from other threads);
- addError/addWarning only while the operator cooks (OP Class), copyNumpyArray only inside
  onCook (scriptTOP Class), with shape (h, w, 1..4) and dtype uint8, uint16 or float32;
- TOP.numpyArray() is float32 RGBA with a bottom-left origin, a new array per call; with
  delayed=True it returns None on the first call and the previous call's image after (TOP Class).

Images are kept top-left, float32 RGBA in 0..1 inside the stand-in; only numpyArray and
copyNumpyArray use TouchDesigner's bottom-left layout.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import socket
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

DOCS = "https://docs.derivative.ca/"


class CallbackSignatureError(TypeError):
    """A kit callback cannot take the arguments TouchDesigner passes it."""


class WrongThreadError(RuntimeError):
    """A TouchDesigner object was touched from a thread other than the main one."""


# -- parameter specs, from each operator's "Parameters" sections ----------------------------


@dataclass(frozen=True)
class Spec:
    style: str  # Str Int Float Toggle Menu StrMenu Pulse OP Header Any
    default: Any = None
    menu: tuple[str, ...] | None = None


def _any(*names: str) -> dict[str, Spec]:
    return {n: Spec("Any") for n in names}


_FORMATS = ("useinput", "rgba8fixed", "srgba8fixed", "rgba16float", "rgba32float", "rgb10a2fixed",
            "rgba16fixed", "rgba11float", "rgb16float", "rgb32float", "mono8fixed", "mono16fixed",
            "mono16float", "mono32float", "rg8fixed", "rg16fixed", "rg16float", "rg32float", "a8fixed",
            "a16fixed", "a16float", "a32float", "monoalpha8fixed", "monoalpha16fixed",
            "monoalpha16float", "monoalpha32float")

# "Parameters - Common Page" of every TOP (e.g. Fit_TOP, Script_TOP, NDI_Out_TOP). The default
# custom resolution (256x256) and other defaults are stand-in choices.
TOP_COMMON = {
    "outputresolution": Spec("Menu", "useinput", ("useinput", "eighth", "quarter", "half", "2x", "4x",
                                                 "8x", "fit", "limit", "custom")),
    "resolutionw": Spec("Int", 256), "resolutionh": Spec("Int", 256),
    "resmenu": Spec("Pulse"), "resmult": Spec("Toggle", True),
    "outputaspect": Spec("Menu", "useinput", ("useinput", "resolution", "custom")),
    "aspect1": Spec("Float", 1.0), "aspect2": Spec("Float", 1.0), "armenu": Spec("Pulse"),
    "inputfiltertype": Spec("Menu", "linear", ("nearest", "linear", "mipmap")),
    "fillmode": Spec("Menu", "useinput", ("useinput", "fill", "width", "height", "best", "outside",
                                          "nativeres")),
    "filtertype": Spec("Menu", "linear", ("nearest", "linear", "mipmap")),
    "npasses": Spec("Int", 1), "chanmask": Spec("Any"), "format": Spec("Menu", "useinput", _FORMATS),
}
# "Parameters - Common Page" of DATs (Text_DAT, OSC_In_DAT, ...).
DAT_COMMON = {
    "language": Spec("Menu", "input", ("input", "node")),
    "extension": Spec("Any"), "customext": Spec("Str", ""), "wordwrap": Spec("Any"),
}
# "Parameters - Common Page" of CHOPs (Constant_CHOP, OSC_Out_CHOP).
CHOP_COMMON = {
    "timeslice": Spec("Toggle", False), "scope": Spec("Str", "*"),
    "srselect": Spec("Menu", "first", ("first", "max", "min", "err")),
    "exportmethod": Spec("Menu", "datindex", ("datindex", "datname", "autoname")),
    "autoexportroot": Spec("Any"), "exporttable": Spec("Any"),
}
_PROTOCOLS = ("msging", "multicastmsging", "reliablemsging")
_EXECUTELOC = ("current", "callbacks", "op")
_FILE_PAGE = {"edit": Spec("Pulse"), "file": Spec("Str", ""), "syncfile": Spec("Toggle", False),
              "loadonstart": Spec("Toggle", False), "loadonstartpulse": Spec("Pulse"),
              "write": Spec("Toggle", False), "writepulse": Spec("Pulse")}
_OSC_DAT = {  # OSC_In_DAT / OSC_Out_DAT: Connect and Received Messages pages
    "active": Spec("Toggle", True), "protocol": Spec("Menu", "msging", _PROTOCOLS),
    "address": Spec("Str", ""), "port": Spec("Int", 0), "localaddress": Spec("Str", ""),
    "shared": Spec("Toggle", False), "addscope": Spec("Str", "*"), "typetag": Spec("Toggle", False),
    "splitbundle": Spec("Toggle", False), "splitmessage": Spec("Toggle", False),
    "bundletimestamp": Spec("Toggle", False), "callbacks": Spec("OP", ""),
    "executeloc": Spec("Menu", "current", _EXECUTELOC), "fromop": Spec("OP", ""),
    "clamp": Spec("Toggle", False), "maxlines": Spec("Int", 100), "clear": Spec("Pulse"),
    "bytes": Spec("Toggle", False),
}

# operator type -> (family, doc page, parameters, sequences {name: (block suffixes, first block, max)})
OPS: dict[str, tuple[str, str, dict[str, Spec], dict]] = {
    "baseCOMP": ("COMP", "Base_COMP", _any(
        "reinitextensions", "initextonstart", "ext0object", "ext0name", "ext0promote", "parentshortcut",
        "opshortcut", "iop0shortcut", "iop0op", "opviewer", "enablecloning", "enablecloningpulse", "clone",
        "loadondemand", "enableexternaltox", "enableexternaltoxpulse", "externaltox", "reloadcustom",
        "reloadbuiltin", "savebackup", "subcompname", "relpath"), {}),
    "moviefileinTOP": ("TOP", "Movie_File_In_TOP", {**_any(
        "reload", "reloadpulse", "playmode", "play", "speed", "cue", "cuepulse", "cuepoint", "cuepointunit",
        "cuebehavior", "index", "indexunit", "loopcrossfade", "loopcrossfadeunit", "stepsize", "audioloop",
        "imageindexing", "timecodemode", "timecodeop", "interp", "deinterlace", "precedence",
        "bottomhalfalpha", "multalpha", "premultrgbbyalpha", "inputcolorspace", "inputreferencewhite",
        "loadingerrorimage", "decodepixelformat", "trim", "tstart", "tstartunit", "tend", "tendunit",
        "textendleft", "textendright", "overridesample", "samplerate", "prereadframes", "frametimeout",
        "frametimeoutstrat", "alwaysloadinitial", "opentimeout", "uselatestontimeout", "predownloadhttp",
        "updateimage", "maxdecodecpus", "highperfread", "highperfreadfactor", "hwdecode", "asyncupload"),
        "file": Spec("Str", ""), **TOP_COMMON}, {}),
    "fitTOP": ("TOP", "Fit_TOP", {
        "fit": Spec("Menu", "fitbest", ("fill", "fithorz", "fitvert", "fitbest", "fitoutside", "nativeres")),
        "justifyh": Spec("Menu", "center", ("left", "center", "right")),
        "justifyv": Spec("Menu", "center", ("bottom", "center", "top")),
        "xord": Spec("Menu", "srt", ("srt", "str", "rst", "rts", "tsr", "trs")),
        "tx": Spec("Float", 0.0), "ty": Spec("Float", 0.0), "tunit": Spec("Any"), "r": Spec("Float", 0.0),
        "sx": Spec("Float", 1.0), "sy": Spec("Float", 1.0), "px": Spec("Float", 0.0), "py": Spec("Float", 0.0),
        "punit": Spec("Any"), "bgcolorr": Spec("Float", 0.0), "bgcolorg": Spec("Float", 0.0),
        "bgcolorb": Spec("Float", 0.0), "bgcolora": Spec("Float", 0.0),
        "premultrgbbyalpha": Spec("Toggle", False), "legacyxform": Spec("Toggle", False), **TOP_COMMON}, {}),
    "nullTOP": ("TOP", "Null_TOP", dict(TOP_COMMON), {}),
    "scriptTOP": ("TOP", "Script_TOP", {"callbacks": Spec("OP", ""), "setuppars": Spec("Pulse"),
                                        "modoutsidecook": Spec("Toggle", False), **TOP_COMMON}, {}),
    "syphonspoutoutTOP": ("TOP", "Syphon_Spout_Out_TOP", {"active": Spec("Toggle", True),
                                                           "sendername": Spec("Str", ""), **TOP_COMMON}, {}),
    "syphonspoutinTOP": ("TOP", "Syphon_Spout_In_TOP", {"usespoutactivesender": Spec("Toggle", False),
                                                         "sendername": Spec("Str", ""), **TOP_COMMON}, {}),
    "ndioutTOP": ("TOP", "NDI_Out_TOP", {
        "active": Spec("Toggle", True), "name": Spec("Str", ""), "failovername": Spec("Str", ""),
        "fps": Spec("Float", 60.0),
        "lowperformancebehavior": Spec("Menu", "stallmainthread", ("stallmainthread", "skipframes")),
        "outputpixelformat": Spec("Menu", "fixed8", ("fixed8", "fixed16")),
        "includealpha": Spec("Toggle", False), "grouptable": Spec("OP", ""), "audiochop": Spec("OP", ""),
        "metadata": Spec("OP", ""), "outputcolorspace": Spec("Any"), "outputreferencewhite": Spec("Any"),
        **TOP_COMMON}, {}),
    "ndiinTOP": ("TOP", "NDI_In_TOP", {
        "active": Spec("Toggle", True), "name": Spec("StrMenu", ""), "extraips": Spec("Str", ""),
        "bandwidth": Spec("Menu", "high", ("high", "low")), "hwdecode": Spec("Toggle", False),
        "inputpixelformat": Spec("Menu", "native", ("native", "fixed8")), "inputcolorspace": Spec("Any"),
        "grouptable": Spec("OP", ""), "audiobuflen": Spec("Float", 0.1), **TOP_COMMON}, {}),
    "textDAT": ("DAT", "Text_DAT", {**_FILE_PAGE, **DAT_COMMON}, {}),
    "tableDAT": ("DAT", "Table_DAT", {**_any("defaultreadencoding", "removeblank", "fill", "rows", "cols",
                                              "cellexpr", "includenames", "fills0names", "fills0expr"),
                                      **{k: v for k, v in _FILE_PAGE.items() if k not in ("loadonstartpulse", "writepulse")},
                                      **DAT_COMMON}, {}),
    "executeDAT": ("DAT", "Execute_DAT", {
        "active": Spec("Toggle", True), "executeloc": Spec("Menu", "here", ("current", "here", "op")),
        "fromop": Spec("OP", ""), "start": Spec("Toggle", False), "create": Spec("Toggle", False),
        "exit": Spec("Toggle", False), "framestart": Spec("Toggle", False), "frameend": Spec("Toggle", False),
        "playstatechange": Spec("Toggle", False), "devicechange": Spec("Toggle", False),
        **_FILE_PAGE, **DAT_COMMON}, {}),
    "oscoutDAT": ("DAT", "OSC_Out_DAT", {**_OSC_DAT, **DAT_COMMON}, {}),
    "oscinDAT": ("DAT", "OSC_In_DAT", {**_OSC_DAT, **DAT_COMMON}, {}),
    "constantCHOP": ("CHOP", "Constant_CHOP", {
        "snap": Spec("Pulse"), "first": Spec("Int", 0), "current": Spec("Toggle", False),
        "single": Spec("Toggle", True), "start": Spec("Float", 0.0), "startunit": Spec("Any"),
        "end": Spec("Float", 0.0), "endunit": Spec("Any"), "rate": Spec("Float", 60.0), "left": Spec("Any"),
        "right": Spec("Any"), "defval": Spec("Float", 0.0), **CHOP_COMMON},
        # "Constant const - Sequence of name/value pairs"; the first channel is "chan1"; the Snap
        # page calls 40 channels the most one Constant CHOP holds.
        {"const": ((("name", Spec("Str", "")), ("value", Spec("Float", 0.0))), {"name": "chan1"}, 40)}),
    "oscoutCHOP": ("CHOP", "OSC_Out_CHOP", {
        "active": Spec("Toggle", True), "protocol": Spec("Menu", "msging", _PROTOCOLS),
        "netaddress": Spec("Str", ""), "port": Spec("Int", 0), "localaddress": Spec("Str", ""),
        "maxsize": Spec("Any"), "maxsizeunit": Spec("Any"), "cookalways": Spec("Toggle", False),
        "numericformat": Spec("Menu", "float", ("int", "float", "double")),
        "format": Spec("Menu", "sample", ("sample", "timeslice", "transpose")),
        "maxbytes": Spec("Int", 0), "sendevents": Spec("Toggle", False),
        "commonrenamefrom": Spec("Str", ""), "commonrenameto": Spec("Str", ""), **CHOP_COMMON}, {}),
}
# Tuplet groups: docs list the group (e.g. Resolution `resolution`), the settable parameters are
# its members. Used only to check the spec tables against operators.json.
GROUPS = {"resolution": ("resolutionw", "resolutionh"), "aspect": ("aspect1", "aspect2"),
          "t": ("tx", "ty"), "s": ("sx", "sy"), "p": ("px", "py"),
          "bgcolor": ("bgcolorr", "bgcolorg", "bgcolorb", "bgcolora")}

# Custom_Parameters: names start with an upper-case letter, the rest lower case or digits.
_CUSTOM_NAME = re.compile(r"^[A-Z][a-z0-9]*$")


# -- Par, ParCollection, Page, Sequence (Par Class, ParCollection Class, Page Class, Sequence Class)


class _Guarded:
    """Every public attribute refuses threads other than the TouchDesigner main thread."""

    _td: "TouchDesigner"

    def __getattribute__(self, name):
        if not name.startswith("_"):
            td = object.__getattribute__(self, "_td")
            if threading.current_thread() is not td.main_thread:
                raise WrongThreadError(f"{type(self).__name__}.{name} used from thread "
                                       f"{threading.current_thread().name!r}; TouchDesigner objects "
                                       "belong to the main thread")
        return object.__getattribute__(self, name)


class Par(_Guarded):
    def __init__(self, owner: "OP", name: str, spec: Spec, *, custom=False, label=None, sequence=None):
        self._td = owner._td
        self._owner, self._name, self._spec, self._custom = owner, name, spec, custom
        self._label = label if label is not None else name
        self._val = spec.default
        self._default = spec.default
        self._sequence = sequence

    owner = property(lambda self: self._owner)
    name = property(lambda self: self._name)
    label = property(lambda self: self._label)
    style = property(lambda self: self._spec.style)
    isCustom = property(lambda self: self._custom)
    isMenu = property(lambda self: self._spec.style in ("Menu", "StrMenu"))
    isSequence = property(lambda self: self._spec.style == "Header")
    sequence = property(lambda self: self._sequence)
    valid = property(lambda self: True)

    @property
    def val(self):
        return self._val

    @val.setter
    def val(self, value):
        self._val = self._check(value)
        self._owner._par_changed(self._name)

    def eval(self):
        return self._val

    @property
    def default(self):
        return self._default

    @default.setter
    def default(self, value):
        if not self._custom:
            raise AttributeError(f"{self._owner.path}: default can only be set on custom parameters "
                                 f"({self._name} is built in)")
        self._default = self._check(value)  # the value itself is unchanged

    @property
    def menuNames(self):
        if self._spec.style == "Menu":
            return list(self._spec.menu)
        if self._spec.style == "StrMenu":
            return list(self._owner._menu_names(self._name))
        return None

    def pulse(self, value=1, frames=0, seconds=0):
        if self._spec.style == "Pulse":
            self._owner._pulsed(self._name)
            return
        previous = self._val
        self.val = value
        self._owner.cook(force=True)
        self._val = previous

    def _check(self, value):
        style = self._spec.style
        if isinstance(value, Par):
            value = value._val
        if style == "Header":
            raise NotImplementedError(f"{self._owner.path}.par.{self._name}: sequence header values are "
                                      f"not modelled; use seq.{self._name}.numBlocks (Sequence Class)")
        if style == "Menu":
            if isinstance(value, int) and not isinstance(value, bool):
                if not 0 <= value < len(self._spec.menu):
                    raise ValueError(f"{self._name}: menu index {value} out of range")
                return self._spec.menu[value]
            if value not in self._spec.menu:
                raise ValueError(f"{self._owner.path}.par.{self._name}: {value!r} is not one of "
                                 f"{list(self._spec.menu)}")
            return value
        if style == "Toggle":
            if not isinstance(value, (bool, int)):
                raise TypeError(f"{self._name} is a toggle, got {value!r}")
            return bool(value)
        if style == "Int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{self._name} is an int parameter, got {value!r}")
            return value
        if style == "Float":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{self._name} is a float parameter, got {value!r}")
            return float(value)
        if style in ("Str", "StrMenu"):
            return str(value)
        if style == "OP":
            return value.path if isinstance(value, OP) else str(value)
        if style == "Pulse":
            raise TypeError(f"{self._name} is a pulse parameter: call .pulse()")
        return value

    def __repr__(self):
        return f"<Par {self._owner.path}.{self._name}={self._val!r}>"


class ParGroup(tuple):
    """What Page.append* returns (Page Class): the created parameters, in order."""


class ParCollection(_Guarded):
    def __init__(self, owner: "OP"):
        object.__setattr__(self, "_td", owner._td)
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_pars", {})

    def __getattr__(self, name):
        pars = object.__getattribute__(self, "_pars")
        owner = object.__getattribute__(self, "_owner")
        if name in pars:
            if not pars[name]._custom:
                owner._td.pars_used.add((owner.OPType, name))
            return pars[name]
        owner._td.unknown_pars.append((owner.OPType, name))
        raise AttributeError(f"{owner.OPType} ({owner.path}) has no parameter {name!r}; "
                             f"see {DOCS}{OPS[owner.OPType][1]}")

    def __setattr__(self, name, value):
        getattr(self, name).val = value

    def __getitem__(self, name):  # ParCollection: n.par['tx'] gives None for an unknown name
        return object.__getattribute__(self, "_pars").get(name)

    def _add(self, par: Par):
        object.__getattribute__(self, "_pars")[par._name] = par

    def _remove(self, name):
        object.__getattribute__(self, "_pars").pop(name, None)


class Page(_Guarded):
    def __init__(self, owner: "OP", name: str):
        self._td, self._owner, self._name, self._pars = owner._td, owner, name, []

    name = property(lambda self: self._name)
    owner = property(lambda self: self._owner)
    pars = property(lambda self: list(self._pars))
    isCustom = property(lambda self: True)

    def _append(self, name, label, style, default, replace=True):
        if not isinstance(name, str) or not _CUSTOM_NAME.match(name):
            raise ValueError(f"custom parameter names start with an upper-case letter, the rest lower "
                             f"case or digits: {name!r}")
        if self._owner.par[name] is not None and not replace:
            raise ValueError(f"parameter {name!r} already exists")
        par = Par(self._owner, name, Spec(style, default), custom=True, label=label)
        self._owner.par._add(par)
        self._pars.append(par)
        return ParGroup((par,))

    def appendStr(self, name, label=None, order=None, replace=True):
        return self._append(name, label, "Str", "", replace)

    def appendInt(self, name, label=None, size=1, order=None, replace=True):
        if size != 1:
            raise NotImplementedError("size > 1 is not modelled")
        return self._append(name, label, "Int", 0, replace)

    def appendFloat(self, name, label=None, size=1, order=None, replace=True):
        if size != 1:
            raise NotImplementedError("size > 1 is not modelled")
        return self._append(name, label, "Float", 0.0, replace)

    def appendToggle(self, name, label=None, order=None, replace=True):
        return self._append(name, label, "Toggle", False, replace)

    def appendPulse(self, name, label=None, order=None, replace=True):
        return self._append(name, label, "Pulse", None, replace)


class Sequence(_Guarded):
    def __init__(self, owner: "OP", name: str, block: tuple, first: dict, max_blocks: int):
        self._td, self._owner, self._name = owner._td, owner, name
        self._block, self._max = block, max_blocks
        self._n = 0
        header = Par(owner, name, Spec("Header"), sequence=self)
        owner.par._add(header)
        self._grow(1)
        for suffix, value in first.items():
            owner.par._pars[f"{name}0{suffix}"]._val = value

    owner = property(lambda self: self._owner)
    maxBlocks = property(lambda self: self._max)

    @property
    def numBlocks(self):
        return self._n

    @numBlocks.setter
    def numBlocks(self, n):
        if not isinstance(n, int) or not 1 <= n <= self._max:
            raise ValueError(f"{self._name}: numBlocks must be 1..{self._max}, got {n!r}")
        if n > self._n:
            self._grow(n)
        for i in range(n, self._n):
            for suffix, _ in self._block:
                self._owner.par._remove(f"{self._name}{i}{suffix}")
        self._n = n

    def _grow(self, n):
        for i in range(self._n, n):
            for suffix, spec in self._block:
                self._owner.par._add(Par(self._owner, f"{self._name}{i}{suffix}", spec, sequence=self))
        self._n = n


class _SequenceCollection(_Guarded):
    def __init__(self, owner):
        self._td, self._seqs = owner._td, {}

    def __getattr__(self, name):
        try:
            return object.__getattribute__(self, "_seqs")[name]
        except KeyError:
            raise AttributeError(f"no sequence {name!r}") from None  # OP.seq.X raises if not found

    def __getitem__(self, name):
        return self._seqs.get(name)


class Connector(_Guarded):
    """Connector Class: `connect(target)` wires an output of `target` to this input."""

    def __init__(self, owner: "OP", index: int):
        self._td, self._owner, self._index = owner._td, owner, index

    owner = property(lambda self: self._owner)
    index = property(lambda self: self._index)

    def connect(self, target):
        if isinstance(target, Connector):
            target = target._owner
        if not isinstance(target, OP):
            raise TypeError(f"connect() takes an operator or a connector, got {target!r}")
        if target.family != self._owner.family:
            raise TypeError(f"cannot wire a {target.family} into a {self._owner.family} input")
        self._owner._inputs[self._index] = target
        self._owner._par_changed("<input>")

    def disconnect(self):
        self._owner._inputs[self._index] = None


# -- operators ------------------------------------------------------------------------------


class OP(_Guarded):
    """OP Class: path, name, par, seq, inputs, cook, destroy, errors, node position."""

    OPType = "OP"
    family = "OP"
    _n_inputs = 0

    def __init__(self, td: "TouchDesigner", parent: "COMP | None", name: str):
        self._td, self._parent, self._name = td, parent, name
        self._valid = True
        self._cooking = False
        self._errors: list[str] = []
        self._warnings: list[str] = []
        self._inputs: list[OP | None] = [None] * self._n_inputs
        self._connectors = [Connector(self, i) for i in range(self._n_inputs)]
        self._par = ParCollection(self)
        self._seq = _SequenceCollection(self)
        self._custom_pages: list[Page] = []
        self.nodeX = 0
        self.nodeY = 0
        self.totalCooks = 0
        if self.OPType in OPS:
            _, _, specs, seqs = OPS[self.OPType]
            for name_, spec in specs.items():
                self._par._add(Par(self, name_, spec))
            for seq_name, (block, first, max_blocks) in seqs.items():
                self._seq._seqs[seq_name] = Sequence(self, seq_name, block, first, max_blocks)

    def _v(self, name):
        """A parameter's value, for the stand-in's own use (not recorded as used by the kit)."""
        return self._par._pars[name]._val

    # identity
    name = property(lambda self: self._name)
    par = property(lambda self: self._par)
    seq = property(lambda self: self._seq)
    valid = property(lambda self: self._valid)
    customPages = property(lambda self: list(self._custom_pages))

    @property
    def path(self):
        if self._parent is None:
            return "/"
        base = self._parent.path
        return (base if base.endswith("/") else base + "/") + self._name

    def parent(self, n=1):
        p = self
        for _ in range(n):
            p = p._parent
            if p is None:
                return None
        return p

    # connection
    @property
    def inputConnectors(self):
        return list(self._connectors)

    @property
    def inputs(self):
        return [i for i in self._inputs if i is not None]

    # cooking and errors
    def cook(self, force=False, recurse=False, includeUtility=False):
        self._cooking = True
        self._errors, self._warnings = [], []
        try:
            self._do_cook()
            self.totalCooks += 1
        finally:
            self._cooking = False

    def _do_cook(self):
        pass

    def addError(self, msg):
        self._need_cooking("addError")
        self._errors.append(str(msg))

    def addWarning(self, msg):
        self._need_cooking("addWarning")
        self._warnings.append(str(msg))

    def addScriptError(self, msg):
        self._errors.append(str(msg))

    def errors(self, recurse=False):
        return "\n".join(self._errors)

    def warnings(self, recurse=False):
        return "\n".join(self._warnings)

    def _need_cooking(self, what):
        if not self._cooking:
            raise RuntimeError(f"{self.path}: {what}() is only valid while the operator is cooking (OP Class)")

    def destroy(self):
        if not self._valid:
            raise RuntimeError(f"{self.path} was already destroyed")
        self._teardown()
        self._valid = False
        if self._parent is not None:
            self._parent._children.pop(self._name, None)

    def _teardown(self):
        pass

    # hooks
    def _par_changed(self, name):
        pass

    def _pulsed(self, name):
        raise NotImplementedError(f"{self.OPType}.{name} pulse is not modelled")

    def _menu_names(self, name):
        return []

    def _frame(self, frame):
        """Per-frame work TouchDesigner does outside Python cooks (device outputs, network ins)."""

    def __repr__(self):
        return f"<{self.OPType} {self.path}>"


class COMP(OP):
    family = "COMP"

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._children: dict[str, OP] = {}

    @property
    def children(self):
        return list(self._children.values())

    def create(self, opType, name=None, initialize=True):
        """COMP Class: create(opType, name, initialize=True); opType is a type object or its name."""
        if isinstance(opType, str):
            if opType not in TYPES:
                raise ValueError(f"unknown operator type {opType!r}")
            opType = TYPES[opType]
        if not (isinstance(opType, type) and issubclass(opType, OP) and opType.OPType in TYPES):
            raise TypeError(f"create() takes an operator type, got {opType!r}")
        base = name or opType.OPType[:-len(opType.family)].lower() + "1"
        name = base
        if name in self._children:  # "or the next numbered name if its already in use"
            stem = base.rstrip("0123456789")
            n = int(base[len(stem):] or 0) + 1
            while f"{stem}{n}" in self._children:
                n += 1
            name = f"{stem}{n}"
        node = opType(self._td, self, name)
        self._children[name] = node
        return node

    def op(self, path):
        return self._td._find(path, self)

    def _teardown(self):
        for child in list(self._children.values()):
            child.destroy()


class baseCOMP(COMP):
    OPType = "baseCOMP"


# TOPs --------------------------------------------------------------------------------------


class DownloadedArray(np.ndarray):
    """What TOP.numpyArray returns. Records every ufunc applied to it (and the thread), so a test
    can tell whether per-pixel work ran on the main thread."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _UFUNC_LOG.append((threading.get_ident(), ufunc.__name__))
        inputs = tuple(np.asarray(i) if isinstance(i, DownloadedArray) else i for i in inputs)
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, DownloadedArray) else o for o in kwargs["out"])
        return getattr(ufunc, method)(*inputs, **kwargs)


_UFUNC_LOG: list[tuple[int, str]] = []


def ufunc_log() -> list[tuple[int, str]]:
    """(thread id, ufunc name) for every ufunc applied to an array numpyArray returned."""
    return _UFUNC_LOG


def _to_rgba(image: np.ndarray) -> np.ndarray:
    """Any (h, w, c) uint8/uint16/float32 top-left image -> float32 RGBA top-left."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        f = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        f = img.astype(np.float32) / 65535.0
    else:
        f = img.astype(np.float32)
    h, w, c = f.shape
    out = np.ones((h, w, 4), np.float32)
    if c == 1:
        out[:, :, :3] = f
    elif c == 2:
        out[:, :, :2] = f
        out[:, :, 2] = 0.0
    else:
        out[:, :, :c] = f[:, :, :min(c, 4)]
    return out


def _resize_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Stand-in choice: nearest-pixel sampling (the real TOP filters on the GPU)."""
    ys = (np.arange(h) * img.shape[0]) // h
    xs = (np.arange(w) * img.shape[1]) // w
    return img[ys][:, xs]


class TOP(OP):
    family = "TOP"
    _n_inputs = 1

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._delayed_pending: np.ndarray | None = None
        self._delayed_started = False
        self._gpu: np.ndarray | None = None  # the image the GPU holds this frame (top-left RGBA)

    def _compute(self) -> np.ndarray | None:
        """The TOP's image from its inputs and parameters (top-left float32 RGBA)."""
        src = self._inputs[0] if self._inputs else None
        return src._image() if src is not None else None

    def _image(self):
        if self._gpu is None:
            self._gpu = self._compute()
        return self._gpu

    def _frame(self, frame):
        self._gpu = None  # recomputed on demand this frame: GPU work, outside any Python cook

    @property
    def width(self):
        img = self._image()
        return 0 if img is None else img.shape[1]

    @property
    def height(self):
        img = self._image()
        return 0 if img is None else img.shape[0]

    def numpyArray(self, delayed=False, writable=False):
        """TOP Class: float32 (h, w, 4), [h, w] addressing from the bottom row; delayed=True gives the
        previous call's image and None the first time."""
        img = self._image()
        current = None if img is None else np.ascontiguousarray(img[::-1]).view(DownloadedArray)
        if not delayed:
            return current
        previous, self._delayed_pending = self._delayed_pending, current
        return previous


class moviefileinTOP(TOP):
    OPType = "moviefileinTOP"
    _n_inputs = 0

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._picture: np.ndarray | None = None

    def fake_show(self, rgb_top_left: np.ndarray) -> None:
        """Test hook (the stand-in decodes no files): the frame the movie shows from now on (any
        (h, w, c) top-left image; a float32 RGBA one is used as it is)."""
        a = rgb_top_left
        self._picture = a if a.dtype == np.float32 and a.ndim == 3 and a.shape[2] == 4 else _to_rgba(a)
        self._gpu = None

    def _compute(self):
        return self._picture


class fitTOP(TOP):
    OPType = "fitTOP"

    def _compute(self):
        src = self._inputs[0]
        img = src._image() if src is not None else None
        if img is None or self._v("outputresolution") == "useinput":
            return img
        if self._v("outputresolution") != "custom":
            raise NotImplementedError(f"outputresolution {self._v('outputresolution')!r} is not modelled")
        w, h = self._v("resolutionw"), self._v("resolutionh")
        ih, iw = img.shape[:2]
        mode = self._v("fit")
        if mode == "fill":
            return _resize_nearest(img, h, w)
        if mode not in ("fitoutside", "fitbest"):
            raise NotImplementedError(f"fit {mode!r} is not modelled")
        scale = (max if mode == "fitoutside" else min)(w / iw, h / ih)
        sh, sw = max(1, round(ih * scale)), max(1, round(iw * scale))
        scaled = _resize_nearest(img, sh, sw)
        out = np.zeros((h, w, 4), np.float32)
        out[:] = [self._v("bgcolorr"), self._v("bgcolorg"), self._v("bgcolorb"), self._v("bgcolora")]
        # centred (justify center): crop what sticks out, pad what is missing
        oy, ox = (sh - h) // 2, (sw - w) // 2
        ys, xs = max(oy, 0), max(ox, 0)
        dy, dx = max(-oy, 0), max(-ox, 0)
        ch, cw = min(h, sh), min(w, sw)
        out[dy:dy + ch, dx:dx + cw] = scaled[ys:ys + ch, xs:xs + cw]
        return out


class nullTOP(TOP):
    OPType = "nullTOP"


class syphonspoutoutTOP(TOP):
    OPType = "syphonspoutoutTOP"


class syphonspoutinTOP(TOP):
    OPType = "syphonspoutinTOP"
    _n_inputs = 0

    def _compute(self):
        return None


class ndioutTOP(TOP):
    """NDI Out TOP: while Active, publishes its input as the source "MACHINE (name)" (the format the
    NDI In TOP lists, per Failover Source Name)."""

    OPType = "ndioutTOP"

    def _frame(self, frame):
        super()._frame(frame)
        name = self._v("name")
        if self._v("active") and name:
            img = self._image()
            if img is not None:
                self._td.ndi.publish(f"{self._td.machine} ({name})", img)


class ndiinTOP(TOP):
    """NDI In TOP: shows the source whose full name is in Source Name (a StrMenu listing the sources
    seen now)."""

    OPType = "ndiinTOP"
    _n_inputs = 0

    def _compute(self):
        if not self._v("active"):
            return None
        return self._td.ndi.frame(self._v("name"))

    def _menu_names(self, name):
        return self._td.ndi.sources() if name == "name" else []


class scriptTOP(TOP):
    """Script TOP: callbacks DAT (onSetupParameters(scriptOp), onPulse(par), onCook(scriptOp)),
    custom pages, copyNumpyArray inside onCook."""

    OPType = "scriptTOP"

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._copied: np.ndarray | None = None
        self.fake_copies = 0

    def _callbacks(self):
        path = self._v("callbacks")
        dat = self._parent.op(path) if path else None
        if dat is None:
            return None
        return dat.module

    def appendCustomPage(self, name):
        page = Page(self, name)
        self._custom_pages.append(page)
        return page

    def destroyCustomPars(self):
        n = 0
        for page in self._custom_pages:
            for par in page._pars:
                self.par._remove(par._name)
                n += 1
        self._custom_pages = []
        return n

    def _pulsed(self, name):
        mod = self._callbacks()
        if name == "setuppars":
            if mod is not None and hasattr(mod, "onSetupParameters"):
                # stand-in choice: the parameters are re-created (the callback template says
                # "press 'Setup Parameters' ... to re-create the parameters")
                self.destroyCustomPars()
                _call(mod, "onSetupParameters", self)
            return
        super()._pulsed(name)

    def _do_cook(self):
        mod = self._callbacks()
        if mod is not None and hasattr(mod, "onCook"):
            _call(mod, "onCook", self)

    def copyNumpyArray(self, numpyArray, is3D=False, isCube=False):
        self._need_cooking("copyNumpyArray")
        a = numpyArray
        if not isinstance(a, np.ndarray) or a.ndim != 3 or not 1 <= a.shape[2] <= 4:
            raise ValueError("copyNumpyArray: the array must be shape (h, w, numComponents), "
                             f"numComponents 1..4; got {getattr(a, 'shape', type(a))}")
        if a.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f"copyNumpyArray: dtype must be uint8, uint16 or float32, got {a.dtype}")
        self._copied = _to_rgba(np.asarray(a)[::-1])  # bottom-left in, top-left inside
        self._gpu = self._copied
        self.fake_copies += 1

    def _compute(self):
        return self._copied

    def fake_shown(self) -> np.ndarray | None:
        """Test hook: the TOP's image, top-left, as uint8 RGB (None before any copyNumpyArray)."""
        img = self._copied
        return None if img is None else np.clip(img[:, :, :3] * 255.0 + 0.5, 0, 255).astype(np.uint8)


# DATs --------------------------------------------------------------------------------------


class Cell(_Guarded):
    def __init__(self, dat, r, c):
        self._td, self._dat, self._r, self._c = dat._td, dat, r, c

    @property
    def val(self):
        return self._dat._rows[self._r][self._c]

    @val.setter
    def val(self, value):
        self._dat._rows[self._r][self._c] = str(value)

    row = property(lambda self: self._r)
    col = property(lambda self: self._c)

    def __str__(self):
        return self.val

    def __repr__(self):
        return f"<Cell {self._r},{self._c}={self.val!r}>"


class DAT(OP):
    """DAT Class: text, module, run(), and the table methods the kit uses."""

    family = "DAT"

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._text = ""
        self._rows: list[list[str]] = []
        self._module: ModuleType | None = None
        self._module_text: str | None = None

    @property
    def text(self):
        if self._rows:
            return "\n".join("\t".join(r) for r in self._rows)
        return self._text

    @text.setter
    def text(self, value):
        self._text = str(value)
        self._rows = []

    @property
    def module(self):
        """The DAT's text as a module (recompiled when the text changes), with the td names, `me`
        the DAT and `op`/`mod` relative to its component."""
        if self._module is None or self._module_text != self._text:
            mod = types.ModuleType(self._name)
            mod.__dict__.update(self._td.namespace(me=self))
            exec(compile(self._text, f"<DAT {self.path}>", "exec"), mod.__dict__)
            self._module, self._module_text = mod, self._text
        return self._module

    def run(self, *args, endFrame=False, fromOP=None, asParameter=False, group=None, delayFrames=0,
            delayMilliSeconds=0, delayRef=None):
        """Run the text as a script; `args` is the local tuple of arguments (DAT Class)."""
        if endFrame or delayFrames or delayMilliSeconds:
            raise NotImplementedError("delayed runs are not modelled")
        # Stand-in choice (the docs only say `args` is a local): the script runs with separate
        # global and local namespaces, the stricter of the two ways it could run.
        exec(compile(self._text, f"<DAT {self.path}>", "exec"), self._td.namespace(me=self),
             {"args": tuple(args)})
        return None

    # table methods
    numRows = property(lambda self: len(self._rows))
    numCols = property(lambda self: max((len(r) for r in self._rows), default=0))

    def clear(self, keepSize=False, keepFirstRow=False, keepFirstCol=False):
        if keepSize or keepFirstRow or keepFirstCol:
            raise NotImplementedError("clear() options are not modelled")
        self._rows = []
        self._text = ""

    def appendRow(self, vals=None, nameOrIndex=None, sort=None):
        if nameOrIndex is not None or sort is not None:
            raise NotImplementedError("appendRow(nameOrIndex/sort) is not modelled")
        self._rows.append([str(v) for v in (vals or [])])
        return len(self._rows) - 1

    def _row_index(self, key):
        if isinstance(key, int):
            return key if 0 <= key < len(self._rows) else None
        for i, r in enumerate(self._rows):
            if r and r[0] == str(key):
                return i
        return None

    def _col_index(self, key):
        if isinstance(key, int):
            return key
        header = self._rows[0] if self._rows else []
        return header.index(str(key)) if str(key) in header else None

    def row(self, *nameOrIndexes, caseSensitive=True, val=False):
        for key in nameOrIndexes:
            i = self._row_index(key)
            if i is not None:
                return list(self._rows[i]) if val else [Cell(self, i, c) for c in range(len(self._rows[i]))]
        return None

    def __getitem__(self, rc):
        r, c = rc
        i, j = self._row_index(r), self._col_index(c)
        if i is None or j is None or j >= len(self._rows[i]):
            return None
        return Cell(self, i, j)

    def __setitem__(self, rc, value):
        r, c = rc
        i, j = self._row_index(r), self._col_index(c)
        if i is None or j is None:
            raise IndexError(f"{self.path}: no cell {rc!r}")
        while len(self._rows[i]) <= j:
            self._rows[i].append("")
        self._rows[i][j] = str(value)


class textDAT(DAT):
    OPType = "textDAT"


class tableDAT(DAT):
    OPType = "tableDAT"


class executeDAT(DAT):
    """Execute DAT: with Active and Frame Start on, onFrameStart(frame) runs at each frame start."""

    OPType = "executeDAT"

    def _frame_start(self, frame):
        if self._v("active") and self._v("framestart"):
            mod = self.module
            if hasattr(mod, "onFrameStart"):
                _call(mod, "onFrameStart", frame)


def _osc_args(values):
    from pythonosc import osc_message_builder

    out = []
    for v in values:
        if isinstance(v, bool):
            out.append((v, None))
        elif isinstance(v, int):
            out.append((v, osc_message_builder.OscMessageBuilder.ARG_TYPE_INT))
        elif isinstance(v, float):
            out.append((v, osc_message_builder.OscMessageBuilder.ARG_TYPE_FLOAT))
        elif isinstance(v, (bytes, bytearray)):
            out.append((bytes(v), osc_message_builder.OscMessageBuilder.ARG_TYPE_BLOB))
        else:
            out.append((str(v), osc_message_builder.OscMessageBuilder.ARG_TYPE_STRING))
    return out


def _osc_message(address, values):
    from pythonosc import osc_message_builder

    if not isinstance(address, str) or not address.startswith("/"):
        raise ValueError(f"OSC addresses start with '/': {address!r}")
    b = osc_message_builder.OscMessageBuilder(address=address)
    for v, tag in _osc_args(values):
        b.add_arg(v, tag) if tag else b.add_arg(v)
    return b.build()


class oscoutDAT(DAT):
    """OSC Out DAT: sendOSC(address, values, asBundle=False, useNonStandardTypes=True) sends over UDP
    to Network Address `address`, Port `port` while Active (Messaging protocol only)."""

    OPType = "oscoutDAT"

    def sendOSC(self, address, values, asBundle=False, useNonStandardTypes=True):
        if asBundle:
            raise NotImplementedError("asBundle is not modelled")
        if not self._v("active"):
            return
        if self._v("protocol") != "msging":
            raise NotImplementedError("only Messaging (UDP) is modelled")
        host, port = self._v("address"), self._v("port")
        if not host or not 0 < port < 65536:
            raise RuntimeError(f"{self.path}: no Network Address/Port to send to ({host!r}:{port})")
        dgram = _osc_message(address, list(values)).dgram
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(dgram, (host, port))
        self._td.osc_sent.append((self.path, address, list(values)))


class Peer(_Guarded):
    """Peer Class: the network connection a message came from."""

    def __init__(self, owner, address):
        self._td, self._owner, self._address = owner._td, owner, address

    owner = property(lambda self: self._owner)
    address = property(lambda self: self._address[0])
    port = property(lambda self: self._address[1])

    def close(self):
        return None


class oscinDAT(DAT):
    """OSC In DAT: listens on Port while Active; each packet becomes a row and runs the callbacks
    DAT's onReceiveOSC(dat, rowIndex, message, byteData, timeStamp, address, args, peer). A bundle
    is one row unless Split Bundle into Messages is on; then each message gets its own row.

    Stand-in choice: for a bundle kept whole (split off) the callback gets address '#bundle' and no
    args (the docs do not say what it gets; a kit must not rely on it)."""

    OPType = "oscinDAT"

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._sock: socket.socket | None = None
        self._bound = 0

    def _teardown(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _ensure_socket(self):
        port = self._v("port")
        if not self._v("active") or not port:
            self._teardown()
            return None
        if self._sock is None or self._bound != port:
            self._teardown()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                s.close()
                self.addScriptError(f"cannot listen on port {port}: {e}")
                return None
            s.setblocking(False)
            self._sock, self._bound = s, port
        return self._sock

    def _frame(self, frame):
        sock = self._ensure_socket()
        if sock is None:
            return
        while True:
            try:
                dgram, peer = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            self._receive(dgram, peer)

    def _receive(self, dgram, peer):
        from pythonosc import osc_bundle, osc_message

        stamp = time.time()
        if osc_bundle.OscBundle.dgram_is_bundle(dgram) and not self._v("splitbundle"):
            self._row_and_callback("#bundle", [], dgram, stamp, peer)
            return
        for msg in self._messages(dgram):
            self._row_and_callback(msg.address, list(msg.params), msg.dgram, stamp, peer)

    def _messages(self, dgram):
        from pythonosc import osc_bundle, osc_message

        if osc_bundle.OscBundle.dgram_is_bundle(dgram):
            for content in osc_bundle.OscBundle(dgram):
                yield from self._messages(content.dgram)
        else:
            yield osc_message.OscMessage(dgram)

    def _row_and_callback(self, address, args, data, stamp, peer):
        text = " ".join([address] + [str(a) for a in args])
        row = self.appendRow([text])
        path = self._v("callbacks")
        dat = self._parent.op(path) if path else None
        if dat is not None and hasattr(dat.module, "onReceiveOSC"):
            _call(dat.module, "onReceiveOSC", self, row, text, bytes(data), stamp, address, args,
                  Peer(self, peer))


# CHOPs -------------------------------------------------------------------------------------


class CHOP(OP):
    family = "CHOP"
    _n_inputs = 1

    def chans(self):
        return self._channels()

    def _channels(self) -> list[tuple[str, float]]:
        src = self._inputs[0] if self._inputs else None
        return src._channels() if src is not None else []

    @property
    def numChans(self):
        return len(self._channels())

    def __getitem__(self, name):
        for n, v in self._channels():
            if n == name:
                return v
        return None


class constantCHOP(CHOP):
    """Constant CHOP: one channel per const block whose name is not empty (Pattern Expansion of the
    name is not modelled)."""

    OPType = "constantCHOP"
    _n_inputs = 0

    def _channels(self):
        out = []
        for i in range(self.seq.const.numBlocks):
            name = self._v(f"const{i}name")
            if name:
                out.append((name, float(self._v(f"const{i}value"))))
        return out


class oscoutCHOP(CHOP):
    """OSC Out CHOP: sends each input channel as `<channel name> <value>` to Network Address
    `netaddress`, Port `port`; all channels every cook with Send Events Every Cook, else only the
    changed ones. It time-stamps what it sends, so each cook goes out as one timed bundle.
    Stand-in choice: it cooks each frame only with Cook Every Frame on (nothing downstream pulls it)."""

    OPType = "oscoutCHOP"

    def __init__(self, td, parent, name):
        super().__init__(td, parent, name)
        self._last: dict[str, float] = {}

    def _frame(self, frame):
        if self._v("cookalways"):
            self.cook()

    def _do_cook(self):
        if not self._v("active"):
            return
        chans = self._channels()
        send = [(n, v) for n, v in chans if self._v("sendevents") or self._last.get(n) != v]
        if not send:
            return
        host, port = self._v("netaddress"), self._v("port")
        if not host or not 0 < port < 65536:
            self.addError(f"no Network Address/Port ({host!r}:{port})")
            return
        from pythonosc import osc_bundle_builder

        fmt = self._v("numericformat")
        bundle = osc_bundle_builder.OscBundleBuilder(time.time())  # timed with the send time
        for name, value in send:
            v = int(round(value)) if fmt == "int" else float(value)
            bundle.add_content(_osc_message(name, [v]))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(bundle.build().dgram, (host, port))
        self._last.update(send)
        self._td.osc_sent.extend((self.path, n, [v]) for n, v in send)


TYPES: dict[str, type] = {c.OPType: c for c in (
    baseCOMP, moviefileinTOP, fitTOP, nullTOP, scriptTOP, syphonspoutoutTOP, syphonspoutinTOP,
    ndioutTOP, ndiinTOP, textDAT, tableDAT, executeDAT, oscoutDAT, oscinDAT, constantCHOP, oscoutCHOP)}
assert set(TYPES) == set(OPS), set(TYPES) ^ set(OPS)


# -- callbacks ------------------------------------------------------------------------------


def _call(module, name, *args):
    """Call a callback the way TouchDesigner does: positionally, with the documented arguments."""
    fn = getattr(module, name)
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        raise CallbackSignatureError(
            f"{name}{inspect.signature(fn)} cannot take the {len(args)} positional arguments "
            f"TouchDesigner passes ({e})") from None
    return fn(*args)


# -- NDI on the stand-in network ------------------------------------------------------------


class NDINetwork:
    """The NDI sources the stand-in machine sees: full name -> newest frame (top-left RGBA)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._frames: dict[str, np.ndarray] = {}

    def publish(self, full_name: str, image_rgba: np.ndarray) -> None:
        with self._lock:
            self._frames[full_name] = np.array(image_rgba, np.float32)

    def sources(self) -> list[str]:
        with self._lock:
            return sorted(self._frames)

    def frame(self, full_name: str):
        with self._lock:
            return self._frames.get(full_name)

    def find(self, contains: str):
        """The first source whose name contains `contains` (as the server's --ndi-in matches)."""
        with self._lock:
            for name in sorted(self._frames):
                if contains in name:
                    return name, self._frames[name]
        return None, None


# -- the process ----------------------------------------------------------------------------


def _fed_by_script(top) -> bool:
    stack, seen = [top], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, scriptTOP):
            return True
        stack.extend(i for i in n._inputs if i is not None)
    return False


class _Mod:
    """MOD Class: mod('name') / mod.name finds a DAT module relative to an operator."""

    def __init__(self, td, me):
        self._td, self._me = td, me

    def __call__(self, name):
        comp = self._me if isinstance(self._me, COMP) else self._me.parent()
        while comp is not None:
            dat = comp.op(name)
            if isinstance(dat, DAT):
                return dat.module
            comp = comp.parent()
        raise ModuleNotFoundError(f"no DAT module {name!r}")

    def __getattr__(self, name):
        return self(name)


class TouchDesigner:
    """One stand-in TouchDesigner process: the network, its main thread and its frame loop."""

    def __init__(self, machine: str = "STANDIN"):
        self.main_thread = threading.current_thread()
        self.machine = machine
        self.frame = 0
        self.unknown_pars: list[tuple[str, str]] = []  # (type, name) looked up and not documented
        self.pars_used: set[tuple[str, str]] = set()  # (type, name) of built-in parameters used
        self.osc_sent: list[tuple[str, str, list]] = []
        self.ndi = NDINetwork()
        self.root = baseCOMP(self, None, "")
        self.root.create(baseCOMP, "project1")

    def _find(self, path, relative_to=None):
        if not isinstance(path, str) or not path:
            return None
        node = self.root if path.startswith("/") or relative_to is None else relative_to
        for part in path.strip("/").split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                node = node.parent() or node
                continue
            if not isinstance(node, COMP) or part not in node._children:
                return None
            node = node._children[part]
        return node

    def op(self, path):
        return self._find(path)

    def namespace(self, me=None) -> dict:
        """The names a script sees in TouchDesigner: the operator types, `op`, `mod`, `me`, `parent`."""
        here = me if isinstance(me, COMP) else (me.parent() if me is not None else self.root)
        g = dict(TYPES)
        g.update(
            op=lambda path: self._find(path, here),
            mod=_Mod(self, me if me is not None else self.root),
            me=me,
            parent=(me.parent if me is not None else (lambda n=1: None)),
            project=None,
            __builtins__=__builtins__,
        )
        return g

    def walk(self, comp=None):
        comp = comp or self.root
        for child in list(comp._children.values()):
            yield child
            if isinstance(child, COMP):
                yield from self.walk(child)

    def run_frame(self):
        """One frame: Execute DATs' onFrameStart, then the work TouchDesigner does each frame outside
        Python (TOPs recomputed on the GPU, NDI/OSC outputs sent, network inputs read)."""
        self.frame += 1
        nodes = list(self.walk())
        tops = [n for n in nodes if isinstance(n, TOP)]
        for n in tops:
            n._gpu = None
        for n in tops:  # the GPU renders the TOPs that depend on no Python cook, before any script runs
            if not _fed_by_script(n):
                n._image()
        for n in nodes:
            if isinstance(n, executeDAT):
                n._frame_start(self.frame)
        for n in nodes:
            if n.valid:
                n._frame(self.frame)

    def close(self):
        for n in list(self.walk()):
            if n.valid and isinstance(n, oscinDAT):
                n._teardown()


def load_kit_module(path: Path, name: str) -> ModuleType:
    """Import a kit file as a plain module (for the helpers that need no TouchDesigner)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
