"""The demo model's temporal adapter (docs/DEMO_MODEL.md, "Temporal adapter"): moving sequences with
known motion (`node_server/demo/motion.py`), the paper's flicker metrics (`node_server/demo/temporal.py`),
the shipped adapter behind `--lllite demo-temporal`, and, measured through the real engine, that it
lowers the warping error on a held-out moving sequence. The training script runs (a few CPU steps)
and resumes exactly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from node_server.demo import motion, temporal
from node_server.demo.evaluate import to_float
from node_server.models.lllite_file import BUILTIN_ADAPTERS, probe_lllite, resolve_adapter

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ADAPTER = BUILTIN_ADAPTERS["demo-temporal"]


def photo(name: str) -> torch.Tensor:
    from PIL import Image

    return to_float(np.asarray(Image.open(DATA / f"{name}.png").convert("RGB")))


# -- the motion is exact -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pan", "zoom", "rotate", "warp", "occluder"])
def test_the_true_motion_maps_each_frame_onto_the_next(kind):
    """Warping frame t+1 back along `correspondence` gives frame t on every visible pixel up to
    bilinear interpolation, far below the frames' own difference; the occluder hides some."""
    seq = temporal.make_sequence(kind, photo("coffee"), photo("rocket"), frames=3, size=128)
    for t, (grid, visible) in enumerate(seq.pairs):
        a, b = seq.frames[t], seq.frames[t + 1]
        back = motion.warp(b.unsqueeze(0), grid.unsqueeze(0))[0]
        err = (back - a).abs().mean(0)[visible].mean().item() * 255
        naive = (b - a).abs().mean().item() * 255
        assert err < 2.5 and err < 0.25 * naive, (kind, err, naive)
        assert 0.8 < visible.float().mean().item() <= 1.0
        if kind == "occluder":
            assert visible.float().mean().item() < 0.999  # points the disc covers at t+1


def test_the_non_rigid_warp_is_inverted():
    shot = motion.still(torch.rand(3, 64, 64), scale0=0.6,
                        wobble_amp=torch.tensor([[0.02, 0.012], [0.016, 0.01]]),
                        wobble_freq=torch.tensor([[[4.0, 2.0], [-3.0, 5.0]], [[2.5, -4.0], [5.0, 3.0]]]))
    p = motion.frame_grid(1, 32, "cpu")
    back = motion.frame_points(shot, motion.scene_points(shot, p, 1.5), 1.5)
    assert (back - p).abs().max().item() < 1e-5


def test_random_training_shots_stay_inside_their_pictures():
    bank = torch.rand(3, 3, 96, 96)
    shots = motion.random_shots(bank, 64, torch.Generator().manual_seed(3), span=4.0)
    assert bool(motion.stays_inside(shots, 0.0, 4.0).all())
    assert (shots.occ_radius > 0).any() and (shots.blur > 0).any() and (shots.noise > 0).any()


# -- the metrics ---------------------------------------------------------------------------
def test_warping_error_separates_a_stable_sequence_from_a_flickering_one():
    """The input itself is at the floor (interpolation only); the same frames with fresh noise
    per frame (flicker) score far higher, and a constant frame (no motion followed) too."""
    seq = temporal.make_sequence("pan", photo("camera"), photo("coffee"), frames=4, size=128)
    gen = torch.Generator().manual_seed(0)
    noisy = [(f + 0.08 * torch.randn(f.shape, generator=gen)).clamp(0, 1) for f in seq.frames]
    frozen = [seq.frames[0]] * len(seq.frames)
    floor, flick, stuck = (temporal.flicker(seq, x) for x in (seq.frames, noisy, frozen))
    assert floor.we < 1.5 and floor.pairs == 3
    assert flick.we > 5 * floor.we and stuck.we > 3 * floor.we
    assert stuck.l1 == 0 and floor.l1 > 2  # consecutive L1: motion and flicker together
    assert floor.we_flow < 0.3 * floor.l1  # the engine's own flow follows the pan too (unmasked)


def test_pairs_across_a_cut_are_left_out():
    seq = temporal.make_sequence("cut", photo("camera"), photo("rocket"), frames=6, size=128)
    assert [p is None for p in seq.pairs] == [False, False, True, False, False]
    assert temporal.flicker(seq, seq.frames).pairs == 4


# -- the shipped adapter, one flag away ----------------------------------------------------
def test_the_demo_temporal_adapter_ships_in_the_package_in_the_papers_format():
    assert ADAPTER.is_file() and ADAPTER.stat().st_size < 5_000_000
    assert resolve_adapter("demo-temporal") == ADAPTER
    assert probe_lllite(ADAPTER) == "dreamlite"
    from safetensors import safe_open

    with safe_open(str(ADAPTER), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["kind"] == "temporal_lllite" and int(meta["cond_emb_dim"]) > 0 and int(meta["mlp_dim"]) > 0
    assert all(k.startswith("modules_dict.") for k in keys)
    text = (ROOT / "pyproject.toml").read_text()
    assert '"models/demo_temporal/*"' in text  # installed with the package


def test_an_unknown_name_is_still_a_missing_file():
    from node_server.errors import ModelLoadError
    from node_server.server.lllite_settings import check_lllite

    with pytest.raises(ModelLoadError, match="LLLite file not found: demo-temporall"):
        check_lllite({"lllite": "demo-temporall"})
    check_lllite({"lllite": "demo-temporal", "lllite_blocks": "down"})  # the name passes the early check


def test_render_takes_lllite_demo_temporal(tmp_path):
    """`node-server render --lllite demo-temporal`: the normal path (the CLI's checks, the engine's
    loader) hooks the shipped adapter into the demo model; the frames differ from the model's own."""
    from PIL import Image

    from node_server.cli import main

    frames = tmp_path / "in"
    frames.mkdir()
    seq = temporal.make_sequence("pan", photo("coffee"), photo("rocket"), frames=3, size=256)
    for i, f in enumerate(seq.frames):
        Image.fromarray((f * 255).round().byte().permute(1, 2, 0).numpy()).save(frames / f"f{i}.png")
    outs = {}
    for name, extra in (("plain", []), ("adapter", ["--lllite", "demo-temporal"])):
        assert main(["render", str(frames), str(tmp_path / name), "--prompt", "make it an old sepia photograph",
                     "--device", "cpu", "--quiet", *extra]) == 0
        outs[name] = [np.asarray(Image.open(tmp_path / name / f"f{i}.png")).astype(int) for i in range(3)]
    assert all(a.shape == (256, 256, 3) for a in outs["adapter"])
    assert np.abs(outs["adapter"][2] - outs["plain"][2]).mean() > 0.2


@pytest.fixture(scope="module")
def measured():
    """A real measurement, small: two held-out moving sequences (a handheld camera with motion
    blur, noise and exposure drift; an occluder crossing a pan) from the held-out photos, two
    styles, through the real engine without and with `--lllite demo-temporal`, and with the
    temporal output blend at 0.5 (`--temporal-blend`), alone and with the adapter."""
    torch.set_grad_enabled(False)
    try:
        seqs = [temporal.make_sequence("handheld", photo("coffee"), photo("rocket"), name="handheld", frames=6),
                temporal.make_sequence("occluder", photo("camera"), photo("coffee"), name="occluder", frames=6)]
        return temporal.measure(seqs, ["sepia", "pencil-sketch"], lllite="demo-temporal", refresh=(1,), log=None,
                                blends=(0.5,))
    finally:
        torch.set_grad_enabled(True)


@pytest.mark.parametrize("style", ["sepia", "pencil-sketch"])
def test_the_adapter_lowers_the_warping_error_on_held_out_moving_video(measured, style):
    row = measured[style]
    base, adapted = row["base"]["warping_error"], row["lllite r1"]["warping_error"]
    assert adapted < 0.95 * base, (style, base, adapted)  # measured: sepia -9%, pencil-sketch -17%
    # ... without giving up the style: the error against each frame's target stays near the model's own
    assert row["lllite r1"]["style_error"] < row["base"]["style_error"] + 0.01


@pytest.mark.parametrize("style", ["sepia", "pencil-sketch"])
def test_the_output_blend_lowers_the_warping_error_by_a_quarter_without_losing_the_style(measured, style):
    row = measured[style]
    base = row["base"]["warping_error"]
    for config in ("base blend0.5", "lllite r1 blend0.5"):
        assert row[config]["warping_error"] < 0.75 * base, (style, config, base, row[config])
        assert row[config]["style_error"] < row["base"]["style_error"] + 0.005


def test_measure_applies_the_adapter_strength():
    """`--lllite-strength 0` runs the adapter at zero: every frame equals the model's own, so the
    rows agree exactly (the fixture above shows strength 1 moves them)."""
    torch.set_grad_enabled(False)
    try:
        seqs = [temporal.make_sequence("pan", photo("coffee"), photo("rocket"), name="pan", frames=3, size=64)]
        keep = {}
        table = temporal.measure(seqs, ["sepia"], lllite="demo-temporal", refresh=(1,), log=None, keep=keep,
                                 strength=0.0)
    finally:
        torch.set_grad_enabled(True)
    base, zero = keep[("base", "sepia", "pan")], keep[("lllite r1", "sepia", "pan")]
    assert all(np.array_equal(a, b) for a, b in zip(base, zero))
    assert table["sepia"]["lllite r1"] == table["sepia"]["base"]


def test_the_command_refuses_a_strength_out_of_range_in_one_line():
    with pytest.raises(SystemExit, match="--lllite-strength must be in 0.0..2.0"):
        temporal.main(["--lllite", "demo-temporal", "--lllite-strength", "3"])


# -- the training script -------------------------------------------------------------------
def _trainer():
    spec = importlib.util.spec_from_file_location("train_temporal_adapter", ROOT / "tools" / "train_temporal_adapter.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_training_script_writes_an_adapter_the_engine_loads_and_resumes_exactly(tmp_path):
    pytest.importorskip("skimage")  # the training photos come from scikit-image's bundled data
    from safetensors.torch import load_file

    train = _trainer()
    common = ["--steps", "2", "--batch", "2", "--size", "64", "--log-every", "1", "--blocks", "down"]
    assert train.main(["--out", str(tmp_path / "a.safetensors"), *common]) == 0
    state = tmp_path / "s.pt"
    args = ["--out", str(tmp_path / "b.safetensors"), *common, "--state", str(state)]
    assert train.main([*args, "--pause-after", "1"]) == 0 and state.exists()
    assert train.main(args) == 0 and not state.exists()
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if k.endswith("up.0.weight"))  # it learned something
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["steps"] == 2 and record["hooks"] == 8
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.models import load_model

    bundle = load_model("demo", device="cpu", dtype=torch.float32, progress=False)
    with StreamEngine(bundle, size=64, lllite=str(tmp_path / "a.safetensors")) as engine:
        assert len(engine.lllite.lllite.modules) == 8


def test_the_training_script_runs_the_papers_blend_recipe(tmp_path):
    """`--recipe blend` (the paper's targets: the model's own outputs blended along the motion) trains
    and writes an adapter with its recipe on record."""
    pytest.importorskip("skimage")
    train = _trainer()
    out = tmp_path / "blend.safetensors"
    assert train.main(["--out", str(out), "--recipe", "blend", "--blend-alpha", "0.5", "--steps", "2", "--batch", "4",
                       "--size", "64", "--blocks", "mid"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["recipe"] == "blend" and record["blend_alpha"] == 0.5 and record["steps"] == 2
    assert record["final_losses"]["pix"] > 0  # the blended target differs from the model's own output
