"""`--encoder-device` on `serve` (flag and config file) and `render`: checked with one-line
errors before a model loads where possible, and passed through to the engine."""

from __future__ import annotations

import pytest

from node_server.errors import NodeServerError
from node_server.server.config import ServeConfig, load_config_file, resolve


def test_serve_config_takes_an_encoder_device_from_flag_or_file(tmp_path):
    assert ServeConfig().encoder_device is None
    f = tmp_path / "serve.toml"
    f.write_text('encoder_device = "CUDA:1"\n')
    assert resolve({}, str(f)).encoder_device == "cuda:1"
    assert resolve({"encoder_device": "cpu"}, str(f)).encoder_device == "cpu"  # the flag wins
    for bad in ('"gpu1"', '"auto"', '"cuda:x"', "1"):
        f.write_text(f"encoder_device = {bad}\n")
        with pytest.raises(NodeServerError, match="encoder_device"):
            load_config_file(f)


def test_serve_flag_reaches_the_config():
    from node_server.cli import build_parser
    from node_server.commands.serve import config_from_args

    args = build_parser().parse_args(["serve", "--encoder-device", "cuda:1"])
    assert config_from_args(args).encoder_device == "cuda:1"


def test_render_runs_with_an_encoder_device_and_rejects_a_missing_one(capsys, tmp_path):
    from PIL import Image

    from node_server.cli import main

    src = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(src)
    common = ["render", str(src), str(tmp_path / "out.png"), "--model", "synthetic:tiny", "--device", "cpu",
              "--size", "64", "--encoder-size", "64", "--quiet", "--prompt", "ink"]
    assert main(common + ["--encoder-device", "cpu"]) == 0
    assert (tmp_path / "out.png").is_file()
    capsys.readouterr()
    assert main(common + ["--encoder-device", "cuda:7"]) != 0
    err = capsys.readouterr().err
    assert "encoder_device" in err and "cuda:7" in err and "Traceback" not in err
