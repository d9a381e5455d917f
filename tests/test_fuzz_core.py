"""The fuzz targets for the ZeroMQ header, the config loader and the preset loader, in CI.

Each `tools/fuzz_targets/<name>.py` is also a coverage-guided fuzz target (`python -m tools.fuzz
<name> --seconds 600` with atheris, a longer run); here every seed and every file of the
regression corpus `tests/data/fuzz/<name>/` (the inputs of issue 16 among them) is replayed,
then hypothesis feeds each target a few hundred generated inputs. A target raises only on a
real bug, so each call passing is the property.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("zmq_header", "config", "preset")


def _target(name: str):
    return importlib.import_module(f"tools.fuzz_targets.{name}")


def _bounded(fuzz_one, data: bytes, timeout: float = 10.0) -> None:
    """Run one input on a helper thread so a hang fails the test instead of stalling CI."""
    outcome: list = []
    t = threading.Thread(target=lambda: outcome.append(_call(fuzz_one, data)), daemon=True)
    t.start()
    t.join(timeout)
    assert outcome, f"input of {len(data)} bytes took more than {timeout} s (a hang)"
    if outcome[0] is not None:
        raise outcome[0]


def _call(fuzz_one, data: bytes):
    try:
        fuzz_one(data)
    except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
        return exc
    return None


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_and_regression_corpus(name):
    module = _target(name)
    corpus = sorted((ROOT / "tests" / "data" / "fuzz" / name).iterdir())
    assert any(p.name.startswith("issue16-") for p in corpus)  # the inputs are kept
    for data in [*module.SEEDS, *(p.read_bytes() for p in corpus)]:
        _bounded(module.fuzz_one, data)


@pytest.mark.parametrize("name", TARGETS)
def test_generated_inputs(name):
    module = _target(name)

    @settings(max_examples=80, deadline=None, database=None)
    @given(st.binary(max_size=400) | st.sampled_from(module.SEEDS).flatmap(
        lambda seed: st.integers(0, len(seed)).map(lambda cut: seed[:cut])))  # every truncation of a seed
    def run(data):
        module.fuzz_one(data)

    run()
