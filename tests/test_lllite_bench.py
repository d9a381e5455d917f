"""bench/run.py's point L runs the adapter path as a user would: a paper-format file (every
dreamlite-lllite target) loaded through the reader, narrowed to the down blocks at load."""

from __future__ import annotations

import json


def test_point_l_loads_a_paper_format_file_and_hooks_its_down_blocks(tmp_path):
    from bench.run import main

    assert main(["--model", "synthetic:tiny", "--points", "L", "--frames", "2", "--device", "cpu", "--compile", "off",
                 "--no-breakdown", "--size", "64", "--max-batch", "2", "--commit", "abc1234", "--out", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("*.json")
    (row,) = json.loads(result.read_text())["rows"]
    assert row["point"] == "L" and row["frames"] == 2
    # the tiny U-Net has 19 targets, 5 on its down blocks (DreamLite-mobile's layout: 108 and 38)
    assert (row["lllite_modules"], row["lllite_hooks"], row["unet"]) == (19, 5, "model")
    assert row["lllite_refreshes"] >= 1
    assert not list(tmp_path.glob("*.safetensors"))  # the random adapter is not left in the results
