"""What the demo model's training relies on (tools/train_demo_model.py): it conditions through the
engine's own encoder with gradients, a shorter padded prompt gives the U-Net the same result as the
engine's longer one, the data is reproducible from the seed and never includes held-out photos, and
the style operations are deterministic images in range."""

from __future__ import annotations

import pytest
import torch

from node_server.demo import data
from node_server.demo.model import FRAME_SIZE, HEAD_SIZE, LATENT_CHANNELS, build_demo, unet_config
from node_server.demo.styles import STYLES, apply_styles
from node_server.engine.dreamlite.encoder import PromptEncoder


@pytest.fixture(scope="module")
def untrained():
    return build_demo(seed=0)


def test_padding_length_does_not_change_what_the_unet_computes(untrained):
    frames = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outs = []
    with torch.no_grad():
        for length in (32, 192):  # training pads to 32 tokens, the engine to 192
            enc = PromptEncoder(untrained, torch.device("cpu"), torch.float32, image_size=64, max_prompt_tokens=length)
            embeds, mask = enc.encode(enc.tokenize("sepia tone"), frames)
            latents = torch.randn(1, LATENT_CHANNELS, 8, 16, generator=torch.Generator().manual_seed(2))
            outs.append(untrained.unet(latents, timestep=torch.tensor([1000.0]), encoder_hidden_states=embeds,
                                       encoder_attention_mask=mask, return_dict=False)[0])
    assert outs[0].abs().mean() > 0
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_the_engines_encode_trains_the_encoder(untrained):
    enc = PromptEncoder(untrained, torch.device("cpu"), torch.float32, image_size=64, max_prompt_tokens=32)
    te = untrained.text_encoder
    te.requires_grad_(True)
    try:
        embeds, _ = PromptEncoder.encode.__wrapped__(enc, enc.tokenize("neon"), torch.rand(2, 3, 64, 64))
        embeds.pow(2).sum().backward()
        grads = [p.grad for p in te.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
        vision = [p.grad for n, p in te.named_parameters() if "visual" in n and p.grad is not None]
        assert vision and any(g.abs().sum() > 0 for g in vision)  # the frame reaches the conditioning
    finally:
        te.zero_grad(set_to_none=True)
        te.requires_grad_(False)


def test_target_tokens_can_read_the_source_half_at_the_16x32_level(untrained):
    """Self-attention (over the whole [target | source] width) and cross-attention at the two lower
    levels and in the mid block; heads of HEAD_SIZE channels."""
    from diffusers.models.attention_processor import Attention

    unet = untrained.unet
    assert [type(b).__name__ for b in unet.down_blocks] == [
        "DreamLiteDownBlock2D", "DreamLiteCrossAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"]
    assert [type(b).__name__ for b in unet.up_blocks] == [
        "DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnUpBlock2D", "DreamLiteUpBlock2D"]
    for block in (unet.down_blocks[1], unet.up_blocks[1], unet.mid_block):
        layers = [m for m in block.modules() if isinstance(m, Attention)]
        assert any(m.is_cross_attention for m in layers) and any(not m.is_cross_attention for m in layers)
        assert all(m.inner_dim // m.heads == HEAD_SIZE for m in layers)


def test_the_training_script_runs_end_to_end_and_writes_a_loadable_folder(tmp_path):
    """A few steps on the CPU (tiny batch and crop): the folder loads with the server's loader and
    names its own frame size and strength (node_server.json)."""
    pytest.importorskip("skimage")  # the training photos come from scikit-image's bundled data
    import importlib.util
    import json
    from pathlib import Path

    from node_server.demo.styles import DEMO_STRENGTH, TRAIN_STRENGTHS
    from node_server.models import load_model
    from node_server.models.loader import model_frame_size

    script = Path(__file__).resolve().parents[1] / "tools" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", script)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out = tmp_path / "demo"
    assert train.main(["--device", "cpu", "--out", str(out), "--vae-steps", "1", "--steps", "1",
                       "--batch", "2", "--size", "64", "--minutes", "5"]) == 0
    settings = json.loads((out / "node_server.json").read_text())
    assert settings == {"defaults": {"strength": DEMO_STRENGTH}, "size": FRAME_SIZE,
                        "max_strength": max(TRAIN_STRENGTHS)}
    assert model_frame_size(str(out)) == FRAME_SIZE == 256
    meta = json.loads((out / "training.json").read_text())
    assert meta["vae_steps"] == 1 and meta["main_steps"] == 1 and len(meta["eval"]) == len(STYLES)
    # the default velocity scale is 1 / sigma of the default strength's one step (about 12.5 at 0.05)
    assert meta["default_strength"] == DEMO_STRENGTH
    assert meta["velocity_scale"] == pytest.approx(1 / train.default_sigma(build_demo(0), DEMO_STRENGTH), rel=1e-3)
    bundle = load_model(str(out), device="cpu", progress=False)
    assert bundle.defaults == {"strength": DEMO_STRENGTH} and bundle.max_strength == max(TRAIN_STRENGTHS)
    assert list(bundle.unet.config.block_out_channels) == list(unet_config()["block_out_channels"])


def test_the_velocity_scale_folded_into_the_saved_unet_gives_the_trained_output(untrained):
    """Training multiplies the U-Net's output by K; the saved U-Net, K folded into its last
    convolution, must give the engine's plain call that same output."""
    import copy

    train = _train_script()
    unet = copy.deepcopy(untrained.unet)
    latents = torch.randn(1, LATENT_CHANNELS, 8, 16, generator=torch.Generator().manual_seed(4))
    cond = torch.randn(1, 5, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        trained = 12.5 * unet(latents, timestep=torch.tensor([80.0]), encoder_hidden_states=cond).sample
        train.fold_velocity_scale(unet, 12.5)
        saved = unet(latents, timestep=torch.tensor([80.0]), encoder_hidden_states=cond).sample
    assert trained.abs().mean() > 0
    torch.testing.assert_close(saved, trained, rtol=1e-4, atol=1e-4)


def test_bad_strength_arguments_are_refused_with_a_message(capsys):
    train = _train_script()
    for flag, value in (("--default-strength", "0"), ("--default-strength", "0.05,0.1"), ("--strengths", "0.1,x"),
                        ("--strengths", "1.5")):
        with pytest.raises(SystemExit):
            train.parse_args(["--out", "o", flag, value])
        assert "strength" in capsys.readouterr().err
    for value in ("0", "-2", "nan", "x"):
        with pytest.raises(SystemExit):
            train.parse_args(["--out", "o", "--velocity-scale", value])
        assert "positive number" in capsys.readouterr().err
    assert train.parse_args(["--out", "o", "--velocity-scale", "12.5"]).velocity_scale == 12.5
    for flag, value in (("--focus", "-0.1"), ("--focus", "1.5"), ("--focus", "x"), ("--unet-channels", "48,96"),
                        ("--unet-channels", "48,96,130"), ("--unet-channels", "8,16,16"), ("--unet-channels", "a,b,c")):
        with pytest.raises(SystemExit):
            train.parse_args(["--out", "o", flag, value])
        assert flag in capsys.readouterr().err
    args = train.parse_args(["--out", "o", "--focus", "0.5", "--unet-channels", "64,96,128"])
    assert args.focus == 0.5 and args.unet_channels == (64, 96, 128)


def test_the_style_focus_draws_the_styles_furthest_from_their_targets_more_often():
    """`--focus`: with one style's running error four times the others', it is drawn far more often;
    with focus 0 the draw is the uniform one the earlier runs used, step for step."""
    import random

    train = _train_script()
    errors = [0.05] * len(STYLES)
    errors[3] = 0.2
    counts = [0] * len(STYLES)
    rng = random.Random(0)
    for _ in range(2000):
        picked = train.pick_styles(rng, errors, 4, 1.0)
        assert len(set(picked)) == 4  # distinct styles per step
        for s in picked:
            counts[s] += 1
    assert counts[3] > 1.5 * max(c for i, c in enumerate(counts) if i != 3)
    a, b = random.Random(5), random.Random(5)
    assert [train.pick_styles(a, errors, 4, 0.0) for _ in range(20)] == [b.sample(range(len(STYLES)), 4) for _ in range(20)]
    unseen = [None] * len(STYLES)  # before any error is known: uniform
    assert len(set(train.pick_styles(random.Random(1), unseen, 4, 1.0))) == 4
    train.update_style_errors(unseen, [2, 7], [0.3, 0.1])
    train.update_style_errors(unseen, [2], [0.1])
    assert unseen[2] == pytest.approx(0.95 * 0.3 + 0.05 * 0.1) and unseen[7] == 0.1 and unseen[0] is None


def test_procedural_batches_repeat_from_the_seed_and_differ_between_seeds():
    a = data.procedural(3, 64, torch.Generator().manual_seed(5))
    b = data.procedural(3, 64, torch.Generator().manual_seed(5))
    c = data.procedural(3, 64, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 3, 64, 64) and 0 <= a.min() and a.max() <= 1 and a.std() > 0.05


def test_held_out_photos_are_not_trained_on():
    assert not set(data.HELD_OUT) & set(data.TRAIN_PHOTOS)


def test_augmented_crops_are_in_range_and_vary():
    bank = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    x = data.colour_jitter(data.random_crops(bank, 4, 32, g), g)
    assert x.shape == (4, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert (x[0] - x[1]).abs().mean() > 0.01


def test_every_style_is_deterministic_in_range_and_changes_the_image():
    x = data.procedural(2, 64, torch.Generator().manual_seed(3))
    for k, s in enumerate(STYLES):
        y = s.apply(x)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, s.name
        assert torch.equal(y, s.apply(x)), s.name
        assert (y - x).abs().mean() > 0.02, s.name
        grouped = apply_styles(x, torch.tensor([k, k]))
        torch.testing.assert_close(grouped, y)


def _train_script():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "tools" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", script)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return train


def test_a_paused_and_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tmp_path):
    """`--state`: a run split over calls (a device call is limited to 10 minutes) continues the same
    batches, noise and optimizer, so it ends exactly where one uninterrupted run does."""
    pytest.importorskip("skimage")
    from safetensors.torch import load_file

    train = _train_script()
    # (with the style focus on, whose running errors must carry over too, and a smaller U-Net)
    common = ["--device", "cpu", "--vae-steps", "2", "--steps", "3", "--batch", "2", "--size", "64", "--minutes", "5",
              "--focus", "0.5", "--unet-channels", "32,64,64"]
    assert train.main(common + ["--out", str(tmp_path / "whole")]) == 0
    state = tmp_path / "run.state"
    split = common + ["--out", str(tmp_path / "split"), "--state", str(state), "--pause-after", "2"]
    assert train.main(split) == 0  # autoencoder steps 0-1, then edit steps 0-1: paused
    assert state.exists() and not (tmp_path / "split").exists()
    first_call_seconds = torch.load(state, weights_only=False)["seconds_by_call"]
    assert train.main(split) == 0  # edit step 2, then save and evaluate
    assert not state.exists()  # a finished run leaves no state behind
    for part in ("unet", "vae", "text_encoder"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        whole, split_w = (load_file(tmp_path / run / part / name) for run in ("whole", "split"))
        assert whole.keys() == split_w.keys()
        for key in whole:
            torch.testing.assert_close(split_w[key], whole[key], rtol=0, atol=0, msg=f"{part}.{key}")
    import json

    meta = json.loads((tmp_path / "split" / "training.json").read_text())
    assert meta["calls"] == 2 and meta["vae_steps"] == 2 and meta["main_steps"] == 3
    # the running per-style errors (what --focus draws by) carried over the pause
    whole_meta = json.loads((tmp_path / "whole" / "training.json").read_text())
    assert meta["main_style_errors"] == whole_meta["main_style_errors"]
    assert sum(e is not None for e in meta["main_style_errors"].values()) >= 2
    assert meta["focus"] == 0.5 and meta["unet_channels"] == [32, 64, 64]
    # the wall-clock time counts both calls (what the 20-minute training budget is measured by)
    assert len(first_call_seconds) == 1 and meta["train_seconds_by_call"][0] == round(first_call_seconds[0], 1)
    assert len(meta["train_seconds_by_call"]) == 2
    assert meta["train_seconds"] == pytest.approx(sum(meta["train_seconds_by_call"]), abs=0.11)
    unet_cfg = json.loads((tmp_path / "split" / "unet" / "config.json").read_text())
    assert unet_cfg["block_out_channels"] == [32, 64, 64]


def test_a_state_from_other_settings_or_without_fixed_steps_is_refused(tmp_path):
    pytest.importorskip("skimage")
    train = _train_script()
    state = tmp_path / "run.state"
    with pytest.raises(SystemExit, match="fixed step counts"):
        train.main(["--device", "cpu", "--out", str(tmp_path / "m"), "--state", str(state)])
    common = ["--device", "cpu", "--vae-steps", "1", "--steps", "2", "--batch", "2", "--size", "64",
              "--out", str(tmp_path / "m"), "--state", str(state), "--pause-after", "1"]
    assert train.main(common) == 0 and state.exists()  # paused after edit step 0
    with pytest.raises(SystemExit, match="other settings .*lr"):
        train.main(common + ["--lr", "1e-3"])
    with pytest.raises(SystemExit, match="above the trained strengths"):
        train.main(["--device", "cpu", "--out", str(tmp_path / "m2"), "--strengths", "0.03,0.05",
                    "--default-strength", "0.1"])
