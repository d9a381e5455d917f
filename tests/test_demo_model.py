"""The embedded demo model (docs/DEMO_MODEL.md): it ships in the package, loads with the server's
loader, and each style's prompt gives that style's classical operation on photos it never saw in
training; a prompt switch over OSC on a running server changes what comes back; orientation is kept.

Held-out photos are `tests/data/*.png` (skimage's coffee, rocket and camera at 256x256), so the
tests need no scikit-image. Errors are mean absolute errors on a 0..1 scale; the thresholds come
from the trained model's measured table in docs/DEMO_MODEL.md, with headroom for CPU/GPU numerics.
"""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pythonosc import osc_message_builder

from node_server.demo.evaluate import EVAL_SIZE, mae_table, render, stylize_all, to_float, to_uint8
from node_server.demo.styles import DEMO_STRENGTH, STYLES, style
from node_server.models.loader import DEFAULT_MODEL, DEMO_DIR, DEMO_SPEC

DATA = Path(__file__).resolve().parent / "data"
HELD_OUT = ("coffee", "rocket", "camera")

# Largest accepted error of a style's output against its own target (see docs/DEMO_MODEL.md,
# "Measured quality": the trained model's errors plus headroom).
MAX_OWN_MAE = {
    "pencil-sketch": 0.115, "sepia": 0.06, "blueprint": 0.095, "thermal": 0.055,
    "invert": 0.065, "watercolor": 0.08, "neon": 0.10, "night-vision": 0.045, "emboss": 0.095,
}
# The own target must be clearly nearer than any other style's target: own <= RATIO * nearest other
# (the shipped model's largest ratio is 0.41).
MAX_RATIO = 0.8
# Styles the shipped model does not yet tell apart (a strict xfail each, documented in
# docs/DEMO_MODEL.md); the retrained model separates all of them, so none.
NOT_YET_DISTINCT: set[str] = set()


def held_out() -> list[torch.Tensor]:
    return [to_float(np.asarray(Image.open(DATA / f"{n}.png").convert("RGB"))) for n in HELD_OUT]


@pytest.fixture(scope="module")
def demo_bundle():
    from node_server.models import load_model

    start = time.perf_counter()
    bundle = load_model(DEMO_SPEC, device="cpu", dtype=torch.float32, progress=False)
    print(f"\ndemo model loaded in {time.perf_counter() - start:.2f} s")  # reported, not asserted
    return bundle


@pytest.fixture(scope="module")
def engine(demo_bundle):
    from node_server.engine.dreamlite.engine import StreamEngine

    with StreamEngine(demo_bundle, size=EVAL_SIZE) as eng:
        yield eng


@pytest.fixture(scope="module")
def table(engine):
    images = held_out()
    t = mae_table(stylize_all(engine, images), images)
    print("\n" + "\n".join(f"{k:14s} " + " ".join(f"{v:.3f}" for v in row.values()) for k, row in t.items()))
    return t


def test_demo_model_is_the_default_and_ships_small_in_the_package(demo_bundle):
    assert DEFAULT_MODEL == DEMO_SPEC == "demo"
    assert demo_bundle.name == "demo" and demo_bundle.family == "dreamlite"
    files = [p for p in DEMO_DIR.rglob("*") if p.is_file()]
    sizes = {p.name: p.stat().st_size for p in files}
    assert {"model_index.json", "training.json"} <= set(sizes)
    assert max(sizes.values()) < 15_000_000 and sum(sizes.values()) <= 25_000_000
    # the same real architecture as DreamLite-mobile: vision-aware Qwen3-VL, DreamLite U-Net, tiny VAE
    assert type(demo_bundle.text_encoder).__name__ == "Qwen3VLForConditionalGeneration"
    assert demo_bundle.text_encoder.config.vision_config.depth >= 1
    assert type(demo_bundle.unet).__name__ == "DreamLiteUNetModel"
    assert type(demo_bundle.vae).__name__ == "AutoencoderTiny"


def test_the_folder_path_loads_the_same_weights(demo_bundle):
    from node_server.models import load_model

    by_path = load_model(str(DEMO_DIR), device="cpu", dtype=torch.float32, progress=False)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(demo_bundle, name).state_dict(), getattr(by_path, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_style_targets_are_far_apart_on_the_held_out_photos():
    """The test below can only tell styles apart if their classical targets differ."""
    images = torch.stack(held_out())
    targets = [s.apply(images) for s in STYLES]
    for i, a in enumerate(targets):
        for j, b in enumerate(targets[:i]):
            assert (a - b).abs().mean().item() > 0.07, (STYLES[i].name, STYLES[j].name)


def test_each_preset_names_a_style_prompt():
    from node_server.control.presets import BUILTIN_DIR, PresetStore

    store = PresetStore(BUILTIN_DIR, None)
    for s in STYLES:
        p = store.recall(s.name)
        assert p["prompt"] == s.prompt == s.phrasings[0]
        assert p["steps"] == 1 and p["strength"] == DEMO_STRENGTH


@pytest.mark.parametrize("name", [s.name for s in STYLES])
def test_style_output_is_near_its_classical_operation(table, name):
    own = table[name][name]
    assert own < MAX_OWN_MAE[name], f"{name}: MAE {own:.3f} against its target"


@pytest.mark.parametrize("name", [
    pytest.param(s.name, marks=pytest.mark.xfail(strict=True, reason="documented: not yet distinct"))
    if s.name in NOT_YET_DISTINCT else s.name for s in STYLES
])
def test_style_output_is_clearly_nearer_its_own_target_than_any_other(table, name):
    row = table[name]
    own = row[name]
    nearest, other = min(((k, v) for k, v in row.items() if k != name), key=lambda kv: kv[1])
    assert own < MAX_RATIO * other, f"{name}: MAE {own:.3f}, but {nearest}'s target is at {other:.3f}"


def test_at_least_eight_styles_are_told_apart():
    assert len(STYLES) - len(NOT_YET_DISTINCT) >= 8


def test_pixel_art_is_not_offered():
    """Removed (docs/DEMO_MODEL.md, Styles): no style, no preset, not in the README's style list."""
    from node_server.control.presets import BUILTIN_DIR

    assert "pixel-art" not in {s.name for s in STYLES}
    assert not (BUILTIN_DIR / "pixel-art.toml").exists()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    styles_line = next(line for line in readme.splitlines() if "`/preset pencil-sketch`" in line)
    assert "pixel" not in styles_line


def test_the_grid_measure_tells_pixel_art_from_a_photo():
    from node_server.demo.evaluate import block_grid_ratio

    for img in held_out():
        blocks = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(img[None], 8), scale_factor=8)[0]
        assert block_grid_ratio(blocks) > 100
        assert 0.8 < block_grid_ratio(img) < 1.3


def test_the_model_still_draws_no_pixel_grid(engine):
    """Why pixel-art was removed: its prompt gives a blurred copy, no 8-pixel grid (measured ratios
    1.37-1.61, a photo's is about 1). If a retrained model draws one, this fails: bring it back."""
    from node_server.demo.evaluate import block_grid_ratio

    for img in held_out():
        out = to_float(render(engine, to_uint8(img), "convert it into retro pixel art"))
        assert block_grid_ratio(out) < 2.0


def test_an_asymmetric_input_keeps_its_asymmetry_on_the_same_side(engine):
    """A bright square top-left on a dark textured ground: the output's bright corner is top-left
    too, and each output is nearer its target than the target's mirror images."""
    rng = np.random.default_rng(0)
    img = (rng.random((EVAL_SIZE, EVAL_SIZE, 3)) * 60 + 30).astype(np.uint8)
    img[20:110, 24:100] = (235, 220, 200)
    for name in ("sepia", "thermal", "invert"):
        out = render(engine, img, style(name).prompt).astype(np.float32).mean(axis=2)
        h = EVAL_SIZE // 2
        quads = {"tl": out[:h, :h], "tr": out[:h, h:], "bl": out[h:, :h], "br": out[h:, h:]}
        means = {k: float(v.mean()) for k, v in quads.items()}
        extreme = max(means, key=means.get) if name != "invert" else min(means, key=means.get)
        assert extreme == "tl", (name, means)
    for name in ("sepia", "thermal"):
        photo = held_out()[2]  # camera: the man stands left of centre
        target = style(name).apply(photo.unsqueeze(0))[0]
        out = to_float(render(engine, to_uint8(photo), style(name).prompt))
        mae = (out - target).abs().mean().item()
        assert mae < (out - target.flip(-1)).abs().mean().item()
        assert mae < (out - target.flip(-2)).abs().mean().item()


# -- a running server, prompt switched over OSC -------------------------------------------------


def _osc(port: int, address: str, *args) -> None:
    b = osc_message_builder.OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b.build().dgram, ("127.0.0.1", port))


def test_prompt_switch_over_osc_changes_the_style_of_the_frames_within_a_few_frames(tmp_path, demo_bundle):
    from bridges.zmq_client import ZmqClient
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.server.app import ServerApp
    from node_server.server.config import ServeConfig

    cfg = ServeConfig(model="demo", zmq_in="tcp://127.0.0.1:0", zmq_out="tcp://127.0.0.1:0", osc_port=0,
                      oscquery_port=0, presets_dir=str(tmp_path), size=EVAL_SIZE, device="cpu", preset="invert")
    app = ServerApp(cfg, engine_factory=lambda app, params: StreamEngine(demo_bundle, params, size=EVAL_SIZE),
                    out=io.StringIO(), progress=False)
    photo = held_out()[0]
    frame = to_uint8(photo)
    targets = {n: style(n).apply(photo.unsqueeze(0))[0] for n in ("invert", "thermal")}

    def nearer(image: np.ndarray) -> str:
        x = to_float(image)
        return min(targets, key=lambda n: (x - targets[n]).abs().mean().item())

    app.open()
    try:
        app.load()
        client = ZmqClient(app.zmq.in_endpoint, app.zmq.out_endpoint)
        assert client.wait_connected(5.0)
        try:
            def one(i: int) -> np.ndarray:
                assert client.send(frame, id=i) == i
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    got = client.recv(timeout=0.5)
                    if got is not None and got[0]["id"] == i:
                        return got[1]
                raise AssertionError(f"frame {i} did not come back")

            before = [nearer(one(i)) for i in range(3)]
            assert before == ["invert"] * 3
            _osc(app.control.port, "/preset", "thermal")
            after = [nearer(one(i)) for i in range(3, 3 + 8)]
        finally:
            client.close()
    finally:
        app.close()
    assert "thermal" in after[:5], after  # the new style shows within a few frames ...
    first = after.index("thermal")
    assert after[first:] == ["thermal"] * (len(after) - first)  # ... and stays


def test_a_strength_above_the_models_range_runs_at_its_max_strength(demo_bundle, caplog):
    """The demo model was trained at strengths up to 0.08 and overshoots into noise above them, so
    its folder names max_strength 0.08: a request above runs at 0.08, is shown as 0.08 and is said
    once (the server sends it to the OSC sender: tests/test_first_contact.py)."""
    import logging

    from node_server.engine.dreamlite.engine import StreamEngine

    assert demo_bundle.max_strength == 0.08
    image = to_uint8(held_out()[0])
    prompt = style("sepia").prompt
    frames = {}
    with StreamEngine(demo_bundle, size=EVAL_SIZE) as eng:
        for strength in (0.08, 0.03, 0.5):
            with caplog.at_level(logging.INFO, logger="node_server.engine"):
                caplog.clear()
                eng.set_params(strength=strength)
                assert ("above this model's max_strength 0.08" in caplog.text) == (strength > 0.08)
            frames[strength] = render(eng, image, prompt).astype(int)
            assert eng.params.strength == min(strength, 0.08)  # the value shown is the one that runs
    assert np.array_equal(frames[0.5], frames[0.08])
    assert np.abs(frames[0.03] - frames[0.08]).mean() > 0.5  # below the top the strength still counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_compiled_path_keeps_every_style_and_matches_the_cpu(table):
    """The demo model through the engine's GPU path (bf16, compiled pieces captured as CUDA graphs,
    the same path as the real model): each style is still told apart on the held-out photos, and the
    errors stay near the CPU's float32 ones."""
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.models import load_model

    bundle = load_model(DEMO_SPEC, device="cuda", progress=False)
    with StreamEngine(bundle, size=EVAL_SIZE) as eng:  # compile="auto": what `serve` runs
        assert eng.device.type == "cuda" and eng.dtype == torch.bfloat16
        assert eng.graphed is not None and eng.graphed.mode == "default"
        images = held_out()
        gpu = mae_table(stylize_all(eng, images), images)
    for name, row in gpu.items():
        own = row[name]
        other = min(v for k, v in row.items() if k != name)
        print(f"{name:14s} GPU {own:.3f} (CPU {table[name][name]:.3f}), nearest other {other:.3f}")
        assert own < MAX_RATIO * other, name
        assert abs(own - table[name][name]) < 0.02, name
