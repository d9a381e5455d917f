"""The temporal output blend (`engine/output_blend.py`, OSC `/temporal/blend`): what it carries,
where it refuses to (stills, cuts, prompt changes, off), that a batch blends as the same frames one
by one, and that it reaches the engine, the OSC inventory and the command line. Its effect on
held-out moving video is measured in tests/test_demo_temporal.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node_server.demo import motion, temporal
from node_server.engine.output_blend import CUT, OutputBlend
from node_server.engine.params import Params, ParamError

from test_demo_temporal import photo

SIZE = 64


def frames_of(kind="pan", n=4, a="coffee", b="rocket"):
    seq = temporal.make_sequence(kind, photo(a), photo(b), frames=n, size=SIZE)
    return torch.stack(seq.frames)  # [n,3,H,W] in [0,1]


def as_out(x: torch.Tensor) -> torch.Tensor:
    """[n,3,H,W] float -> the denoiser's [n,H,W,3] uint8."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def flickering(x: torch.Tensor, seed=0) -> torch.Tensor:
    """`x` with a different pattern of noise on every frame: a model that flickers."""
    g = torch.Generator().manual_seed(seed)
    return as_out(x + 0.08 * torch.randn(x.shape, generator=g))


def run(blend, x, out, amount=0.5, key="p", rows=1):
    """Feed the frames through `blend` `rows` at a time, as the engine's steps would."""
    done = []
    for i in range(0, x.shape[0], rows):
        done.append(blend.apply(x[i:i + rows], out[i:i + rows], min(rows, x.shape[0] - i), amount, key))
    return torch.cat(done)


def test_off_changes_nothing_and_keeps_nothing():
    x = frames_of()
    out = flickering(x)
    blend = OutputBlend((SIZE, SIZE), "cpu")
    assert torch.equal(run(blend, x, out, amount=0.0), out)
    assert blend.prev_out is None


def test_the_first_frame_is_the_models_own_and_later_ones_are_steadier():
    """On a pan with a flickering 'model', the blended frames change less along the true motion."""
    seq = temporal.make_sequence("pan", photo("coffee"), photo("rocket"), frames=6, size=SIZE)
    x = torch.stack(seq.frames)
    out = flickering(x)
    blended = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, amount=0.5)
    assert torch.equal(blended[0], out[0])
    before = temporal.flicker(seq, list(out.numpy())).we
    after = temporal.flicker(seq, list(blended.numpy())).we
    assert after < 0.75 * before, (before, after)


def test_a_still_picture_stays_the_models_own():
    """Nothing moves and the model draws the same frame: the carry adds nothing."""
    x = frames_of(n=1).expand(5, -1, -1, -1)
    out = as_out(x * 0.8 + 0.1)
    blended = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, amount=0.9)
    assert (blended.int() - out.int()).abs().max() <= 1


def test_nothing_is_carried_across_a_cut():
    """Two unrelated pictures in a row: the second output is its own, not a ghost of the first."""
    a, b = frames_of("pan", 1, "coffee"), frames_of("pan", 1, "rocket")
    x = torch.cat([a, b])
    assert (x[1] - x[0]).abs().mean() > CUT  # what the guard looks at
    out = as_out(torch.stack([torch.zeros_like(a[0]), torch.ones_like(a[0])]))
    blended = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, amount=0.9)
    assert torch.equal(blended[1], out[1])


def test_an_occluder_is_not_smeared_with_what_it_covers():
    """Where the input changed (a disc crossing), the output follows the model; elsewhere it blends."""
    x = frames_of(n=1).expand(2, -1, -1, -1).clone()
    x[1, :, 20:40, 20:40] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # a red square appears
    out = as_out(torch.stack([torch.full_like(x[0], 0.2), torch.full_like(x[0], 0.6)]))
    blended = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, amount=0.5).int()
    assert (blended[1, 25:35, 25:35] - out[1, 25:35, 25:35].int()).abs().max() <= 1  # the new square: its own
    assert abs(int(blended[1, 5, 5, 0]) - round(255 * 0.4)) <= 2  # the unchanged corner: half and half


def test_a_prompt_change_starts_afresh():
    x = frames_of(n=2)
    out = flickering(x)
    blend = OutputBlend((SIZE, SIZE), "cpu")
    blend.apply(x[:1], out[:1], 1, 0.5, "sepia")
    assert torch.equal(blend.apply(x[1:], out[1:], 1, 0.5, "thermal"), out[1:])


def test_a_batch_blends_as_its_frames_one_by_one():
    """The engine steps 1..batch frames at a time; frame k carries frame k-1 whichever batch it was in.
    Padded rows (a short batch) pass as they are."""
    x = frames_of("handheld", 6)
    out = flickering(x, seed=3)
    single = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, rows=1)
    batched = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, rows=4)
    assert (single.int() - batched.int()).abs().max() <= 1
    padded = torch.cat([out[:2], out[1:2].expand(2, -1, -1, -1)])
    res = OutputBlend((SIZE, SIZE), "cpu").apply(torch.cat([x[:2], x[1:2], x[1:2]]), padded, 2, 0.5, "p")
    assert torch.equal(res[2:], padded[2:])


@pytest.mark.parametrize("bad", [-0.1, 0.95, float("nan"), "lots", True])
def test_the_parameter_refuses_what_it_cannot_do(bad):
    with pytest.raises(ParamError, match="temporal_blend"):
        Params().replace(temporal_blend=bad)


def test_the_engine_blends_when_asked_and_forgets_on_pass_through():
    from node_server.engine.factory import build_engine
    from node_server.models import load_model

    seq = temporal.make_sequence("handheld", photo("coffee"), photo("rocket"), frames=4, size=64)
    frames = [(f * 255).round().byte().permute(1, 2, 0).numpy() for f in seq.frames]
    bundle = load_model("demo", device="cpu", progress=False)
    engine = build_engine(bundle, Params(prompt="make it an old sepia photograph"), size=(64, 64), device="cpu")
    with engine:
        engine.warmup(progress=False)
        own = [engine.step([f], [i])[0].image for i, f in enumerate(frames)]
        engine.set_params(temporal_blend=0.5)
        blended = [engine.step([f], [i])[0].image for i, f in enumerate(frames)]
        assert np.array_equal(blended[0].shape, own[0].shape)
        assert np.abs(blended[3].astype(int) - own[3]).mean() > 0.2
        assert temporal.flicker(seq, blended).we < temporal.flicker(seq, own).we
        engine.set_params(prompt="")  # frames pass through: nothing stylized left to carry
        engine.step([frames[0]], [9])
        assert engine.output_blend.prev_out is None


def test_render_takes_temporal_blend_and_refuses_a_bad_one_in_one_line(tmp_path, capsys):
    from PIL import Image

    from node_server.cli import main
    from node_server.control.inventory import BY_ADDRESS

    control = BY_ADDRESS["/temporal/blend"]  # OSC: tests/test_osc_liblo.py sends it with oscsend
    assert control.param == "temporal_blend" and (control.minimum, control.maximum) == (0.0, 0.9)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(frames_of("pan", 3)):
        Image.fromarray((f * 255).round().byte().permute(1, 2, 0).numpy()).save(folder / f"f{i}.png")
    common = [str(folder), "--prompt", "make it an old sepia photograph", "--device", "cpu", "--quiet", "--size", "64"]
    outs = {}
    for amount in ("0", "0.6"):
        out = tmp_path / f"out{amount.replace('.', '_')}"
        assert main(["render", common[0], str(out), *common[1:], "--temporal-blend", amount]) == 0
        outs[amount] = [np.asarray(Image.open(out / f"f{i}.png")).astype(int) for i in range(3)]
    assert np.array_equal(outs["0"][0], outs["0.6"][0])  # the first frame has nothing to carry
    assert np.abs(outs["0"][2] - outs["0.6"][2]).mean() > 0.2
    capsys.readouterr()
    assert main(["render", common[0], str(tmp_path / "bad"), *common[1:], "--temporal-blend", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "temporal_blend" in err and "0.0..0.9" in err, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_blends_as_the_cpu_does():
    """The same frames on the GPU and on the CPU: the same blended frames, to one level in 255."""
    x = frames_of("handheld", 6)
    out = flickering(x, seed=5)
    cpu = run(OutputBlend((SIZE, SIZE), "cpu"), x, out, rows=3)
    gpu = run(OutputBlend((SIZE, SIZE), "cuda"), x.cuda(), out.cuda(), rows=3).cpu()
    assert (cpu.int() - gpu.int()).abs().max() <= 1
    assert not torch.equal(gpu, out.cpu())


def test_a_blend_weight_glide_keeps_carrying_and_a_new_prompt_set_starts_afresh():
    """Moving `/blend` weights between the same prompts is a gradual change: the carry goes on.
    Another set of prompts is a prompt change: its first frame is the model's own."""
    import time

    from node_server.engine.factory import build_engine
    from node_server.models import load_model

    frames = [(f * 255).round().byte().permute(1, 2, 0).numpy() for f in frames_of("pan", 4)]
    sepia, thermal = "make it an old sepia photograph", "make it look like a thermal camera image"
    engine = build_engine(load_model("demo", device="cpu", progress=False),
                          Params(blend=[(sepia, 0.8), (thermal, 0.2)], temporal_blend=0.5), size=(SIZE, SIZE),
                          device="cpu")
    calls = []  # (key, the model's own frame, what the blend made of it)
    with engine:
        engine.warmup(progress=False)
        blend = engine.output_blend
        apply = blend.apply

        def spy(x, out, n, amount, key):
            own = out[:n].clone()
            res = apply(x, out, n, amount, key)
            calls.append((key, own, res[:n].clone()))
            return res

        blend.apply = spy
        engine.step([frames[0]], [0])
        engine.set_params(blend=[(sepia, 0.6), (thermal, 0.4)])
        engine.step([frames[1]], [1])
        assert calls[1][0] == calls[0][0]  # the same set: carried on
        assert not torch.equal(calls[1][1], calls[1][2])
        engine.set_params(blend=[(sepia, 0.5), ("make it an inverted negative", 0.5)])
        deadline = time.monotonic() + 60
        while calls[-1][0] == calls[0][0]:  # the new set's conditioning comes from the encoder thread
            assert time.monotonic() < deadline, "the new prompt set never arrived"
            engine.step([frames[2]], [len(calls)])
        key, own, made = calls[-1]
        assert torch.equal(own, made)  # a new set: nothing carried from the old style


def test_the_sd_engine_blends_too():
    """An SD-class model (the synthetic SD-Turbo): the second frame carries the first, keyed by its prompt."""
    from node_server.engine.factory import build_engine
    from node_server.models import build_synthetic_sd

    frames = [(f * 255).round().byte().permute(1, 2, 0).numpy() for f in frames_of("pan", 2)]
    engine = build_engine(build_synthetic_sd("sd-turbo-tiny", seed=0), Params(prompt="a watercolour", temporal_blend=0.5),
                          size=(SIZE, SIZE), device="cpu")
    calls = []
    with engine:
        engine.warmup(progress=False)
        apply = engine.output_blend.apply

        def spy(x, out, n, amount, key):
            own = out[:n].clone()
            res = apply(x, out, n, amount, key)
            calls.append((key, own, res[:n].clone()))
            return res

        engine.output_blend.apply = spy
        for i, f in enumerate(frames):
            engine.step([f], [i])
    assert [c[0] for c in calls] == ["a watercolour"] * 2
    assert torch.equal(calls[0][1], calls[0][2]) and not torch.equal(calls[1][1], calls[1][2])
