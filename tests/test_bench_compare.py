"""bench/compare.py: each point of a run against the newest earlier result of the same GPU, model
and frame size, printed by bench.run as one line per point (fabricated results files here)."""

from __future__ import annotations

import json
import os
import re

from bench.compare import earlier_results, run_setting, summary_lines

H200 = "NVIDIA H200"


def _write(folder, name, meta, rows, mtime=None):
    path = folder / name
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def _row(point, fps, p50, batch=1, enc=512, compile="default", **extra):
    return dict(point=point, engine="dreamlite", batch=batch, encoder_size=enc, compile=compile, fps=fps,
                latency_p50_ms=p50, **extra)


def test_each_point_is_compared_with_the_newest_earlier_result_of_the_same_setting(tmp_path):
    old_cmd = "python -m bench.run --points I,C,S,P --compile default --frames 480"
    _write(tmp_path, "a-old.json", dict(gpu=H200, date="2026-11-20", command=old_cmd),
           [_row("I", 100.0, 9.0), _row("P", 100.0, 80.0, batch=8)])
    _write(tmp_path, "b-new.json", dict(gpu=H200, date="2026-11-21", command=old_cmd),
           [_row("I", 140.0, 7.0), _row("C", 134.5, 7.0, interval_p99_over_median=1.66, frames_to_active_max=4)])
    # other settings and broken files are never compared with
    _write(tmp_path, "other-gpu.json", dict(gpu="NVIDIA H100", date="2026-11-30", command=old_cmd), [_row("I", 1.0, 1.0)])
    _write(tmp_path, "other-model.json", dict(gpu=H200, date="2026-11-30", model="demo", size=512), [_row("I", 2.0, 1.0)])
    _write(tmp_path, "other-size.json", dict(gpu=H200, date="2026-11-30", command=old_cmd + " --size 256"),
           [_row("I", 3.0, 1.0)])
    _write(tmp_path, "other-enc.json", dict(gpu=H200, date="2026-11-30", command=old_cmd), [_row("I", 4.0, 1.0, enc=256)])
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"meta": [], "rows": 3}))
    meta = dict(gpu=H200, date="2026-12-01", model="synthetic:paper", size=512)
    current = _write(tmp_path, "current.json", meta, [])
    earlier = earlier_results(tmp_path, meta, exclude=current)
    rows = [_row("I", 150.0, 6.5), _row("P", 90.0, 85.0, batch=8), _row("S", 200.0, 39.0, batch=8),
            _row("C", 140.0, 7.0, interval_p99_over_median=1.2, frames_to_active_max=3), {"error": "boom", "point": "race"}]
    lines = summary_lines(rows, earlier)
    assert len(lines) == 4
    assert lines[0] == ("vs earlier: I dreamlite b1 enc512 [default]: fps 140.0 -> 150.0 (1.07x), "
                        "p50 7.0 -> 6.5 ms (0.93x) [b-new.json]")
    assert lines[1].startswith("vs earlier: P dreamlite b8 enc512 [default]: fps 100.0 -> 90.0 (0.90x)")
    assert lines[1].endswith("[a-old.json] REGRESSION")
    assert lines[2] == "vs earlier: S dreamlite b8 enc512 [default]: fps 200.0 (no earlier result)"
    assert "p99/median 1.66 -> 1.2" in lines[3] and "frames to prompt max 4 -> 3" in lines[3]
    assert "REGRESSION" not in lines[0] + lines[2] + lines[3]


def test_the_setting_of_an_old_file_comes_from_its_command():
    assert run_setting(dict(gpu="g", command="python -m bench.run --model demo --size 256")) == ("g", "demo", 256)
    assert run_setting(dict(gpu="g", command="python -m bench.run --points I")) == ("g", "synthetic:paper", 512)
    assert run_setting(dict(gpu="g", model="x", size=96, command="--model y")) == ("g", "x", 96)


def test_a_second_run_prints_its_ratio_to_the_first(tmp_path, capsys, monkeypatch):
    from bench.run import main

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--model", "synthetic:tiny", "--points", "I", "--frames", "2", "--device", "cpu", "--compile", "off",
              "--no-breakdown", "--out", str(tmp_path), "--size", "64", "--encoder-size", "64"]
    assert main(common + ["--commit", "first"]) == 0
    first = capsys.readouterr().out
    assert "vs earlier: I dreamlite b1 enc64 [off]: fps" in first and "(no earlier result)" in first
    assert main(common + ["--commit", "second"]) == 0
    second = capsys.readouterr().out
    [name] = [p.name for p in tmp_path.glob("*-first-*.json")]
    line = next(line for line in second.splitlines() if line.startswith("vs earlier: I dreamlite"))
    assert re.fullmatch(r"vs earlier: I dreamlite b1 enc64 \[off\]: fps [\d.]+ -> [\d.]+ \([\d.]+x\), "
                        r"p50 [\d.]+ -> [\d.]+ ms \([\d.]+x\), p99/median [\d.]+ -> [\d.]+ \[" + re.escape(name) + r"\]( REGRESSION)?", line), line
    assert main(common + ["--commit", "third", "--compare", "none"]) == 0
    assert "vs earlier" not in capsys.readouterr().out
