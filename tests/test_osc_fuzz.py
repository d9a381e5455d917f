"""The OSC fuzz target: the regression corpus replayed, and a short coverage-guided atheris run.

The corpus (`tests/data/fuzz/osc/`) holds the datagrams from issue 16, one file each; the longer
run is `python -m tools.fuzz osc --seconds N` (tools/fuzz.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from node_server.control.osc_packet import OscParseError, parse_packet

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `tools` is not an installed package; plain `pytest` may not have it
    sys.path.insert(0, str(ROOT))

from tools import fuzz  # noqa: E402
from tools.fuzz_targets import osc as target  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "fuzz" / "osc"

# What each regression input must do: the reason it is rejected with, or the messages it holds.
EXPECTED = {
    "bundle-element-size-negative.bin": "size -4",
    "bundle-nested-element-size-negative.bin": "size -4",
    "float-tag-without-data-blend-2-weight.bin": "/blend/2/weight: argument 'f' at byte 20 needs 4 bytes, 0 left",
    "float-tag-without-data-lllite-strength.bin": "/lllite/strength: argument 'f' at byte 24 needs 4 bytes, 0 left",
    "unknown-type-tag-before-valid-int.bin": "/seed: unknown type tag 'x'",
    "unknown-type-tags-65000-bytes.bin": "/prompt: unknown type tag 'x'",
    "bundle-element-neither-message-nor-bundle.bin": "bundle element at byte 40 is neither",
    "four-zero-bytes.bin": "packet is neither",
    "bundle-time-tags-out-of-datagram-order.bin": ["first", "second"],
}


def test_the_corpus_holds_every_input_from_the_issue():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_input_is_handled_as_expected(name):
    data = (CORPUS / name).read_bytes()
    assert fuzz.run_bounded(target.fuzz_one, data, timeout=10.0) is None
    expected = EXPECTED[name]
    if isinstance(expected, str):
        with pytest.raises(OscParseError) as info:
            parse_packet(data)
        assert expected in info.value.reason
    else:
        assert [m.args[0] for m in parse_packet(data)] == expected


def test_seeds_are_valid_osc_and_replay_cleanly():
    for seed in target.SEEDS:
        assert parse_packet(seed)
    assert fuzz.replay("osc", target, timeout=10.0) == 0


def test_the_runner_lists_the_target():
    assert "osc" in fuzz.target_names()


def test_a_short_coverage_guided_run_finds_nothing(tmp_path):
    pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 CPython 3.11-3.13 only")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", "osc", "--seconds", "3", "--artifacts", str(tmp_path / "found"),
         "--corpus", str(tmp_path / "corpus")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = int(re.search(r"Done (\d+) runs", proc.stderr).group(1))
    assert runs > 1000, proc.stderr[-2000:]
    assert not (tmp_path / "found").exists() or not any((tmp_path / "found").iterdir())
