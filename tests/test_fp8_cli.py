"""`--fp8` on `serve` (flag and config file) and `render`: off by default, and when given it
reaches the engine of either model family (engine/fp8.py)."""

from __future__ import annotations

import numpy as np
import pytest

from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, load_config_file, resolve


def test_serve_config_takes_fp8_from_flag_or_file(tmp_path):
    from node_server.cli import build_parser
    from node_server.commands.serve import config_from_args

    assert ServeConfig().fp8 is False
    assert config_from_args(build_parser().parse_args(["serve"])).fp8 is False
    assert config_from_args(build_parser().parse_args(["serve", "--fp8"])).fp8 is True
    f = tmp_path / "serve.toml"
    f.write_text("fp8 = true\n")
    assert resolve({}, str(f)).fp8 is True
    f.write_text('fp8 = "yes please"\n')
    with pytest.raises(NodeServerError, match="fp8"):
        load_config_file(f)


def test_the_server_factory_builds_an_fp8_engine_only_when_asked():
    from node_server.engine.params import Params
    from node_server.server.app import ServerApp, default_engine_factory

    for fp8 in (False, True):
        app = ServerApp(ServeConfig(model="synthetic:tiny", size=64, encoder_size=64, device="cpu", fp8=fp8),
                        osc=False, progress=False)
        engine = default_engine_factory(app, Params())
        try:
            assert (engine.fp8_modules > 0) is fp8
        finally:
            engine.close()


def test_render_with_fp8_on_each_family(tmp_path):
    from PIL import Image

    from node_server.cli import main

    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src)
    for model in ("synthetic:tiny", "synthetic:sd-turbo-tiny"):
        outs = []
        for extra in ([], ["--fp8"]):
            out = tmp_path / f"{model.split(':')[1]}{len(extra)}.png"
            assert main(["render", str(src), str(out), "--model", model, "--device", "cpu", "--size", "64",
                         "--encoder-size", "64", "--quiet", "--prompt", "ink", "--strength", "0.6"] + extra) == 0
            outs.append(np.asarray(Image.open(out)))
        assert not np.array_equal(outs[0], outs[1]), model  # the flag changed the arithmetic
