"""A run against the runs before it: one line per point with the ratio to the newest earlier result
of the same point on the same GPU, model and frame size, so a regression shows in the run that
made it (`bench.run` prints these lines last).

A point is the same when its point letter, engine, batch, encoder size and compile label (the
variant: compile mode plus any levers such as `+cl` or `sms=N`) are the same. Earlier files are
read from the results folder; files of other GPUs, models or frame sizes are skipped. Files
written before the model and size were recorded in `meta` take them from the command line they
record (the defaults otherwise: `synthetic:paper`, 512).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

DEFAULT_MODEL = "synthetic:paper"
DEFAULT_SIZE = 512
REGRESSION = 0.95  # fps below this fraction of the earlier result is flagged


def _flag(command: str, name: str) -> Optional[str]:
    try:
        words = shlex.split(command or "")
    except ValueError:
        words = (command or "").split()
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def run_setting(meta: dict) -> tuple[str, str, int]:
    """(GPU, model, frame size) of a results file's `meta`."""
    command = meta.get("command", "")
    model = meta.get("model") or _flag(command, "--model") or DEFAULT_MODEL
    size = meta.get("size") or _flag(command, "--size") or DEFAULT_SIZE
    try:
        size = int(size)
    except (TypeError, ValueError):
        size = DEFAULT_SIZE
    return str(meta.get("gpu", "")), str(model), size


def point_key(row: dict) -> tuple:
    return (row.get("point"), row.get("engine"), row.get("batch"), row.get("encoder_size"),
            row.get("compile") or "")


def earlier_results(folder: "str | Path", meta: dict, exclude: "str | Path | None" = None) -> dict:
    """{point key: (row, file name)} from the results files in `folder` with the same GPU, model
    and frame size as `meta`, the newest file winning for each point (by the date in its meta,
    then by modification time). Unreadable files are skipped."""
    want = run_setting(meta)
    excluded = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in Path(folder).glob("*.json"):
        if excluded is not None and path.resolve() == excluded:
            continue
        try:
            data = json.loads(path.read_text())
            file_meta, rows = data["meta"], data["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(file_meta, dict) or not isinstance(rows, list) or run_setting(file_meta) != want:
            continue
        found.append((str(file_meta.get("date", "")), path.stat().st_mtime, path.name, rows))
    best: dict = {}
    for _date, _mtime, name, rows in sorted(found):
        for row in rows:
            if isinstance(row, dict) and "error" not in row and isinstance(row.get("fps"), (int, float)):
                best[point_key(row)] = (row, name)
    return best


def _ratio(new, old) -> str:
    if not isinstance(new, (int, float)) or not isinstance(old, (int, float)) or old == 0:
        return "n/a"
    return f"{new / old:.2f}x"


def summary_lines(rows: list[dict], earlier: dict) -> list[str]:
    """One line per measured point of this run: fps and p50 latency against the earlier result
    (and the interval p99/median ratio and frames to a new prompt where the point has them)."""
    lines = []
    for row in rows:
        if "error" in row or not isinstance(row.get("fps"), (int, float)):
            continue
        key = point_key(row)
        label = f"{row.get('point')} {row.get('engine')} b{row.get('batch')}"
        if row.get("encoder_size") is not None:
            label += f" enc{row.get('encoder_size')}"
        if row.get("compile"):
            label += f" [{row.get('compile')}]"
        prev = earlier.get(key)
        if prev is None:
            lines.append(f"vs earlier: {label}: fps {row['fps']} (no earlier result)")
            continue
        old, name = prev
        fps_ratio = row["fps"] / old["fps"] if old.get("fps") else None
        text = (f"vs earlier: {label}: fps {old['fps']} -> {row['fps']} ({_ratio(row['fps'], old.get('fps'))}), "
                f"p50 {old.get('latency_p50_ms')} -> {row.get('latency_p50_ms')} ms "
                f"({_ratio(row.get('latency_p50_ms'), old.get('latency_p50_ms'))})")
        if "interval_p99_over_median" in row and "interval_p99_over_median" in old:
            text += f", p99/median {old['interval_p99_over_median']} -> {row['interval_p99_over_median']}"
        if "frames_to_active_max" in row and "frames_to_active_max" in old:
            text += f", frames to prompt max {old['frames_to_active_max']} -> {row['frames_to_active_max']}"
        text += f" [{name}]"
        if fps_ratio is not None and fps_ratio < REGRESSION:
            text += " REGRESSION"
        lines.append(text)
    return lines
