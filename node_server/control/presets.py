"""Presets: small flat TOML files recalled by name over OSC (`/preset`, `/preset/save`).

Built-in presets live in the repository's `presets/` folder; user presets are saved to a
separate folder and shadow built-ins of the same name, so saving never edits shipped files.
Values are checked with the same inventory rules as OSC messages, so a preset can never apply
something `/seed` or `/steps` would have rejected.

A preset name is recalled over the network, so loading holds for any file: nothing outside the
preset folders is read (a file that links elsewhere is refused), and a file of junk, a deep
nesting or a huge one is a one-line error (`node_server.toml_file`), never a traceback.

A prompt and a strength that make a style on one model make noise, or another look, on the next
(the demo model knows ten styles at strength 0.05; a full DreamLite model edits at strength 1;
an SD-class model wants a description, not an instruction). So a preset may say which models it
is made for: `models = ["demo"]` (model names as `--model` takes them) and/or
`family = "dreamlite"` (or `"sd"`, or a list). Given a running model (`ServerApp.model_info()`:
its `model` and `family`), `names(model=...)` lists only the presets made for it and
`recall(name, model=...)` refuses the others with one line saying whom the preset is for. The
demo model knows only its own styles, so a preset reaches it only by naming it in `models`. A
preset with neither key (what `save` writes, and any hand-written user preset without them)
applies to every model; copying a shipped preset to the user folder without the keys is the way
to run it on another model anyway.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from node_server.control.inventory import (FAMILIES, FAMILY_NAMES, PARAM_CONTROLS, ControlValueError,
                                          check_preset_name)
from node_server.errors import NodeServerError
from node_server.toml_file import read_toml

PRESET_KEYS = ("prompt", "seed", "steps", "strength", "refresh")
TARGET_KEYS = ("models", "family")  # which models a preset is made for (absent: every model)
META_KEYS = ("description",) + TARGET_KEYS
SUFFIX = ".toml"
MAX_PRESET_BYTES = 64 * 1024  # a preset is a few lines (a prompt is at most 500 characters)
MAX_MODEL_NAMES = 16  # entries of `models`
MAX_MODEL_NAME = 300  # characters of one entry (a folder path, a hub id)

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "presets"

DEMO_MODEL = "demo"  # the embedded demo model's name (`--model demo`)
DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"  # its folder (models.loader.DEMO_DIR)
# Models that know only the styles of the presets made for them by name: a family preset does not
# reach them (the demo model turns any other instruction into a wrong look, not a new style).
OWN_PRESETS_ONLY = (DEMO_MODEL,)

ModelInfo = Mapping[str, Any]  # what `ServerApp.model_info()` returns: `model` (the spec), `family`, ...


def default_user_dir() -> Path:
    """Per-user preset folder: %APPDATA%/node-server/presets or $XDG_CONFIG_HOME/node-server/presets."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "node-server" / "presets"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "node-server" / "presets"


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """One TOML value for the flat types presets use (str, int, float, bool)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return _toml_string(value)
    raise TypeError(f"cannot write {type(value).__name__} to a preset")


def dump_flat_toml(values: Mapping[str, Any]) -> str:
    """Serialise a flat mapping of bare keys to TOML (no tables, no arrays: presets need none)."""
    lines = []
    for key, value in values.items():
        if not key.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"not a bare TOML key: {key!r}")
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def _inside(folder: Path, path: Path) -> bool:
    """True when `path`, with every link followed, is in `folder` (itself possibly a link)."""
    try:
        return path.resolve(strict=True).is_relative_to(folder.resolve(strict=True))
    except (OSError, RuntimeError):  # a broken link or a loop of links
        return False


def _names(value: Any, key: str, where: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A `models` or `family` value: one name or a list of 1..MAX_MODEL_NAMES names."""
    items = [value] if isinstance(value, str) else value
    shape = f"{where}: {key!r} must be a name or a list of 1..{MAX_MODEL_NAMES} names"
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_MODEL_NAMES:
        raise NodeServerError(shape + (f", e.g. {key} = [\"{allowed[0]}\"]" if allowed else ', e.g. models = ["demo"]'))
    for item in items:
        if not isinstance(item, str) or not item.strip() or len(item) > MAX_MODEL_NAME:
            raise NodeServerError(f"{shape} (each a non-empty text of at most {MAX_MODEL_NAME} characters)")
        if allowed is not None and item not in allowed:
            raise NodeServerError(f"{where}: {key}: unknown model family {item[:40]!r} (known: {', '.join(allowed)})")
    return tuple(items)


def _check_meta(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The validated meta keys of a preset file (`description`, `models`, `family`)."""
    meta: dict[str, Any] = {}
    if "description" in raw:
        if not isinstance(raw["description"], str):
            raise NodeServerError(f"{where}: 'description' must be a string")
        meta["description"] = raw["description"]
    if "models" in raw:
        meta["models"] = _names(raw["models"], "models", where)
    if "family" in raw:
        meta["family"] = _names(raw["family"], "family", where, FAMILIES)
    return meta


def model_name(spec: Any) -> str:
    """The name a preset's `models` entry is compared with: the `--model` spec as given, except that
    the demo model's own folder is `demo` whichever way it was named."""
    text = str(spec or "")
    if text and text != DEMO_MODEL and ("/" in text or "\\" in text or text.startswith((".", "~"))):
        try:
            if Path(text).expanduser().resolve() == DEMO_DIR.resolve():
                return DEMO_MODEL
        except (OSError, RuntimeError, ValueError):
            pass
    return text


def _shown(name: str, limit: int = 80) -> str:
    """A model name as an error line shows it: control characters escaped, long names cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _family_text(families: tuple[str, ...]) -> str:
    return " and ".join(FAMILY_NAMES.get(f, f) for f in families)


def refusal(meta: Mapping[str, Any], model: ModelInfo | None) -> str | None:
    """Why a preset with this meta is not made for `model` (its `model_info()`), or None when it is.

    No model (none loaded yet) or a preset with neither key: made for every model. `models` names
    the models (a hub id also matches with an `@revision`); `family` the families, less the models
    in `OWN_PRESETS_ONLY` unless `models` names them. An unknown family (None) only skips the family
    check (`serve --preset` looks before the model has loaded)."""
    if not model:
        return None
    models, families = meta.get("models"), meta.get("family")
    if models is None and families is None:
        return None
    name = model_name(model.get("model"))
    family = model.get("family")
    if models is not None:
        if name not in models and name.split("@", 1)[0] not in models:
            return f"made for the model{'s' if len(models) > 1 else ''} {', '.join(map(_shown, models))}"
    elif name in OWN_PRESETS_ONLY:
        return (f"made for {_family_text(families)} models other than the {_shown(name)} model (which knows "
                "only its own presets' styles)")
    if families is not None and family is not None and family not in families:
        return f"made for {_family_text(families)} models"
    return None


def _check_values(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate preset keys/values with the inventory's rules; return the params to apply (meta
    keys are checked by `_check_meta`)."""
    params: dict[str, Any] = {}
    for key, value in values.items():
        if key in META_KEYS:
            continue
        if key not in PRESET_KEYS:
            raise NodeServerError(
                f"{where}: unknown key {key!r} (allowed: {', '.join(PRESET_KEYS + META_KEYS)})"
            )
        try:
            params[key] = PARAM_CONTROLS[key].coerce([value])
        except ControlValueError as e:
            raise NodeServerError(f"{where}: {key}: {e.reason}") from None
    return params


class PresetStore:
    """Built-in presets (read-only) plus a user folder that `save` writes to."""

    def __init__(self, builtin_dir: str | os.PathLike | None = BUILTIN_DIR, user_dir: str | os.PathLike | None = None):
        self.builtin_dir = Path(builtin_dir) if builtin_dir is not None else None
        self.user_dir = Path(user_dir) if user_dir is not None else None

    def _dirs(self) -> list[Path]:
        return [d for d in (self.user_dir, self.builtin_dir) if d is not None]

    def names(self, model: ModelInfo | None = None) -> list[str]:
        """The recallable names, sorted (a user preset and a built-in of one name count once); with
        `model` (a `model_info()`), only those made for it (a file that cannot be read stays listed:
        recalling it says what is wrong)."""
        names = self._all_names()
        if not model:
            return names
        return [n for n in names if self._refusal(n, model) is None]

    def _refusal(self, name: str, model: ModelInfo | None) -> str | None:
        try:
            return refusal(self._read(name)[1], model)
        except NodeServerError:
            return None

    def _all_names(self) -> list[str]:
        found: set[str] = set()
        for d in self._dirs():
            if d.is_dir():
                for p in d.glob("*" + SUFFIX):
                    if not _inside(d, p):
                        continue  # links out of the folder: never read, so not listed
                    name = p.name[: -len(SUFFIX)]
                    try:
                        found.add(check_preset_name(name))
                    except NodeServerError:
                        continue  # a stray file with an unusable name is not a preset
        return sorted(found)

    def path(self, name: str, model: ModelInfo | None = None) -> Path:
        """The file `recall(name)` reads: the user's if present, else the built-in one (an unknown
        name's error lists the presets made for `model`, or all of them)."""
        check_preset_name(name)
        for d in self._dirs():
            p = d / (name + SUFFIX)
            if p.is_file():
                if not _inside(d, p):
                    raise NodeServerError(f"preset {name!r} ({p}) links outside its folder {d}; "
                                          "presets are only read from their folders")
                return p
        known = self.names(model)
        listing = ", ".join(known) if known else "none"
        raise NodeServerError(f"no preset named {name!r} (available: {listing})")

    def is_builtin(self, name: str) -> bool:
        """True when `name` resolves to a shipped (not user) preset."""
        return self.builtin_dir is not None and self.path(name).parent == self.builtin_dir

    def _read(self, name: str, model: ModelInfo | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(params, meta) of a preset file, both validated."""
        p = self.path(name, model)
        where = f"preset {name!r} ({p})"
        raw = read_toml(p, where, max_bytes=MAX_PRESET_BYTES)
        return _check_values(raw, where), _check_meta(raw, where)

    def load(self, name: str) -> dict[str, Any]:
        """Validated file content including the meta keys (`description`, `models` and `family`
        as tuples), for listings."""
        params, meta = self._read(name)
        return {**params, **meta}

    def made_for(self, name: str) -> dict[str, tuple[str, ...]]:
        """The preset's `models` and `family` (those it has; empty: made for every model)."""
        return {k: v for k, v in self._read(name)[1].items() if k in TARGET_KEYS}

    def recall(self, name: str, model: ModelInfo | None = None) -> dict[str, Any]:
        """The parameters a preset sets (never its meta keys); raises `NodeServerError`. With
        `model` (a `model_info()`), a preset made for other models is refused, in one line."""
        params, meta = self._read(name, model)
        why = refusal(meta, model)
        if why is not None:
            running = _shown(model_name(model.get("model"))) or "this model"
            family = model.get("family")
            shown = f"{running} ({FAMILY_NAMES.get(family, family)})" if family else running
            keys = " and ".join(f"`{k}`" for k in TARGET_KEYS if k in meta)
            folder = self.user_dir if self.user_dir is not None else "your user preset folder"
            raise NodeServerError(f"preset {name!r} is {why}; the running model is {shown}. To run it "
                                  f"anyway, copy it to {folder} without its {keys} line{'s' if ' and ' in keys else ''}")
        return params

    def save(self, name: str, params: Mapping[str, Any], *, description: str | None = None) -> Path:
        """Write the preset keys found in `params` to the user folder (other keys are ignored,
        so `save(name, target.current_params())` works); returns the file written."""
        check_preset_name(name)
        if self.user_dir is None:
            raise NodeServerError("cannot save presets: no user preset folder is configured")
        values = {k: (str(params[k]) if k == "refresh" else params[k]) for k in PRESET_KEYS if k in params}
        if not values:
            raise NodeServerError(f"preset {name!r}: nothing to save (none of {', '.join(PRESET_KEYS)} given)")
        checked = _check_values(values, f"preset {name!r}")
        if description is not None:
            checked = {"description": str(description), **checked}
        try:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            target = self.user_dir / (name + SUFFIX)
            fd, tmp = tempfile.mkstemp(dir=self.user_dir, prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(dump_flat_toml(checked))
                os.replace(tmp, target)  # atomic: a crash never leaves half a preset
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            raise NodeServerError(f"cannot save preset {name!r} to {self.user_dir}: {e.strerror or e}") from None
        return target
