"""ControlNet-LLLite through the commands on the tiny DreamLite model: a file saved the way
dreamlite-lllite saves one, with `render --lllite` and `serve --lllite` (`/lllite/strength`,
`/lllite/refresh` over OSC, loopback sockets); `synth-lllite` writing that format."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from bridges.zmq_client import ZmqClient
from lllite_reference import UpstreamController, save_like_upstream
from node_server.cli import main
from node_server.server.config import ServeConfig
from test_server import SIZE, Osc, _frame, _stream


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_bundle):
    """A dreamlite-lllite file for the tiny U-Net's layout (all 19 targets, non-zero `up`)."""
    path = tmp_path_factory.mktemp("lllite") / "temporal_lllite_step000010.safetensors"
    ctrl = UpstreamController(tiny_bundle.unet, cond_image_size=SIZE, sample_size=SIZE // 8).randomize(1, up_std=0.1)
    save_like_upstream(ctrl, path)
    return path


def test_synth_lllite_writes_dreamlite_lllite_files_for_dreamlite_models(tmp_path, tiny_bundle, capsys):
    path = tmp_path / "synth.safetensors"
    assert main(["synth-lllite", str(path), "--model", "synthetic:tiny"]) == 0
    assert "19 modules (down 5, mid 4, up 10)" in capsys.readouterr().out
    ctrl = UpstreamController(tiny_bundle.unet, cond_image_size=SIZE, sample_size=SIZE // 8)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        flat = {k: f.get_tensor(k) for k in f.keys()}
    assert (metadata["cond_emb_dim"], metadata["mlp_dim"]) == ("32", "64")
    ctrl.load_state_dict(flat, strict=True)  # exactly the controller's keys, shapes and dtypes
    assert all(torch.count_nonzero(m.up[0].weight) > 0 for m in ctrl.modules_dict.values())
    # and kohya's names for an SD-class model
    sd = tmp_path / "sd.safetensors"
    assert main(["synth-lllite", str(sd), "--model", "synthetic:sd-turbo-tiny"]) == 0
    with safe_open(str(sd), "pt") as f:
        assert all(k.startswith("lllite_unet_") for k in f.keys())


def _render(src, out, *extra) -> list[np.ndarray]:
    assert main(["render", str(src), str(out), "--prompt", "a cat", "--model", "synthetic:tiny", "--size", "64",
                 "--device", "cpu", "--quiet", *extra]) == 0
    return [np.asarray(Image.open(p)).astype(int) for p in sorted(out.iterdir())]


def test_render_with_an_adapter(adapter, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    plain = _render(src, tmp_path / "plain")
    adapted = _render(src, tmp_path / "adapted", "--lllite", str(adapter), "--lllite-refresh", "2")
    down = _render(src, tmp_path / "down", "--lllite", str(adapter), "--lllite-blocks", "down")
    off = _render(src, tmp_path / "off", "--lllite", str(adapter), "--lllite-strength", "0")
    assert len(plain) == len(adapted) == len(down) == 3
    assert min(np.abs(a - p).mean() for a, p in zip(adapted, plain)) > 0.5
    assert min(np.abs(a - d).mean() for a, d in zip(adapted, down)) > 0.1  # fewer hooks, another frame
    assert all(np.array_equal(a, p) for a, p in zip(off, plain))


def test_render_rejects_bad_lllite_flags_before_loading(tmp_path, capsys):
    assert main(["render", str(tmp_path), str(tmp_path / "o"), "--prompt", "x", "--lllite",
                 str(tmp_path / "missing.safetensors")]) == 1
    assert "LLLite file not found" in capsys.readouterr().err
    assert main(["render", str(tmp_path), str(tmp_path / "o"), "--prompt", "x", "--lllite-blocks", "down"]) == 1
    assert "--lllite-blocks needs --lllite" in capsys.readouterr().err


def _wait(predicate, timeout=5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_serve_with_an_adapter_and_its_osc_controls(adapter):
    from node_server.engine.factory import build_engine
    from node_server.models import load_model
    from node_server.server.app import ServerApp

    cfg = ServeConfig(zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0, oscquery_port=0,
                      size=SIZE, device="cpu", model="synthetic:tiny", lllite=str(adapter), lllite_refresh=2,
                      prompt="a cat")  # with no prompt frames would pass through, past the adapter
    app = ServerApp(cfg, out=io.StringIO(), progress=False)
    app.open()
    app.load()
    client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
    osc = Osc(app.control.port)
    try:
        assert client.wait_connected(5.0)
        engine = app._engine
        assert engine.lllite is not None and len(engine.lllite.lllite.modules) == 19
        assert app.current_params()["lllite_refresh"] == 2
        adapted = _stream(client, 2)
        assert [h["id"] for h, _ in adapted] == [0, 1]

        osc.send("/lllite/strength", 0.0)
        osc.send("/lllite/refresh", 3)
        _wait(lambda: app.current_params()["lllite_strength"] == 0.0 and app.current_params()["lllite_refresh"] == 3)
        off = _stream(client, 2, first_id=10)
        assert engine.lllite._every == 3 and float(engine.lllite.lllite.scale) == 0.0

        osc.send("/lllite/strength", 5.0)  # out of range: rejected, nothing applied
        time.sleep(0.3)
        assert app.current_params()["lllite_strength"] == 0.0
    finally:
        osc.close()
        client.close()
        app.close()

    # Strength 0 gives exactly the frames of an engine without the adapter; strength 1 does not.
    from node_server.engine.params import Params

    with build_engine(load_model("synthetic:tiny", device="cpu", progress=False), Params().replace(prompt="a cat"),
                      size=SIZE, device="cpu", progress=False) as plain:
        plain.warmup(progress=False)
        want = [plain.step([_frame(i)], [i])[0].image for i in (10, 11)]
        want_first = plain.step([_frame(0)], [0])[0].image
    assert all(np.array_equal(img, w) for (_, img), w in zip(off, want))
    assert np.abs(adapted[0][1].astype(int) - want_first.astype(int)).mean() > 0.5


def test_config_file_lllite_keys_are_checked_before_loading(adapter, tmp_path):
    from node_server.errors import NodeServerError
    from node_server.server.config import resolve

    good = tmp_path / "good.toml"
    good.write_text(f'lllite = "{adapter}"\nlllite-refresh = 8\nlllite-strength = 0.5\nlllite-blocks = "down"\n')
    config = resolve({"model": "synthetic:tiny"}, str(good))
    assert (config.lllite, config.lllite_refresh, config.lllite_strength, config.lllite_blocks) == \
        (str(adapter), 8, 0.5, "down")
    for text, reason in ((f'lllite = "{tmp_path / "missing.safetensors"}"\n', "not found"),
                         (f'lllite = "{adapter}"\nlllite-source = "camera"\n', "temporal or frame"),
                         (f'lllite = "{adapter}"\nlllite-blocks = "middle"\n', "lllite_blocks"),
                         ('lllite-strength = "high"\n', "must be a number")):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(NodeServerError, match=reason):
            resolve({"model": "synthetic:tiny"}, str(bad))
