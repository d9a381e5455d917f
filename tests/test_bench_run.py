"""bench/run.py's results files: runs of one commit with another model or frame size must not
overwrite each other (a 256 run of the demo model was lost to the 512 run that followed it)."""

from __future__ import annotations

import json


def test_runs_at_two_sizes_write_two_results_files(tmp_path, monkeypatch):
    from bench.run import main

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--model", "synthetic:tiny", "--points", "I", "--frames", "2", "--device", "cpu", "--compile", "off",
              "--no-breakdown", "--commit", "abc1234", "--out", str(tmp_path)]
    assert main(common + ["--size", "64"]) == 0
    assert main(common + ["--size", "96"]) == 0
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 2, names
    assert names[0].endswith("-abc1234-I-enc512-synthetic_tiny-64px.json")
    assert names[1].endswith("-abc1234-I-enc512-synthetic_tiny-96px.json")
    for name, size in zip(names, (64, 96)):
        result = json.loads((tmp_path / name).read_text())
        assert f"--size {size}" in result["meta"]["command"] and result["rows"][0]["frames"] == 2
