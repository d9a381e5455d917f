"""Shared fixtures: the tiny synthetic model is built once per session (tests must not modify it)."""

from __future__ import annotations

import pytest

try:  # property tests: no per-example deadline (a 2-core CI machine under load is slow, not wrong),
    # and no example database written into the checkout
    from hypothesis import settings

    settings.register_profile("node-server", deadline=None, database=None)
    settings.load_profile("node-server")
except ImportError:  # hypothesis is in the test extra; the GPU machine may lack it
    pass


@pytest.fixture(scope="session")
def tiny_bundle():
    """`synthetic:tiny` on the CPU in float32, eval mode, no grad. Read-only: copy before changing it."""
    from node_server.models import build_synthetic

    return build_synthetic("tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny model folder on disk (DreamLite-mobile layout), written once per session."""
    from node_server.models import write_model_folder

    path = tmp_path_factory.mktemp("models") / "dreamlite-tiny"
    write_model_folder(path, "tiny", seed=0)
    return path
