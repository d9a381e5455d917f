"""What the engines do with the controls a first user reaches for: prompt and seed blending on the
DreamLite family (mixed from cached conditionings, never re-encoded for a weight change, one shape
for the U-Net), frames passed through unchanged while no prompt is set, a strength held at the
model's cap once per change, non-square sizes on both families (with the temporal adapter)."""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import pytest
import torch

from node_server.engine.blend import mix_conditioning, prompt_set_key
from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params, strength_notice

SIZE = 64


def frame(seed: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def settle(engine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while engine.worker.busy:
        assert time.monotonic() < deadline, "the conditioning worker never finished"
        time.sleep(0.005)


def until(engine, img, prompt: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        out = engine.step([img], [0])[0]
        if out.prompt == prompt:
            return out
        assert time.monotonic() < deadline, f"{prompt!r} never showed; last {out.prompt!r}"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def sd_bundle():
    from node_server.models import build_synthetic_sd

    return build_synthetic_sd("sd-turbo-tiny", seed=0)


def dreamlite(tiny_bundle, **params):
    return StreamEngine(tiny_bundle, Params().replace(**params), size=SIZE, encoder_image_size=64)


# ------------------------------------------------------------------ mixing, as arithmetic


def test_mix_is_a_per_token_mean_over_the_prompts_that_have_a_token_there():
    d = 3
    a = torch.zeros(1, 5, d)
    b = torch.zeros(1, 5, d)
    a[0, :4] = 1.0  # prompt a: 4 valid tokens
    b[0, :2] = 3.0  # prompt b: 2 valid tokens (padding is zero, as the encoder leaves it)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    mixed, union = mix_conditioning(torch.cat([a, b]), mask, (0.75, 0.25))
    assert mixed.shape == (1, 5, d) and union.tolist() == [[1, 1, 1, 1, 0]]
    np.testing.assert_allclose(mixed[0, :2, 0], [0.75 * 1 + 0.25 * 3] * 2)  # both prompts there
    np.testing.assert_allclose(mixed[0, 2:4, 0], [1.0, 1.0])  # only a: its own value, not faded
    assert mixed[0, 4].abs().sum() == 0
    e, m = torch.randn(2, 5, d), torch.ones(2, 5, dtype=torch.long)  # one prompt, two frames: as is
    assert mix_conditioning(e, m, (1.0,))[0] is e
    # two prompts x two frames (every-batch): prompt-major rows, one mix per frame
    both = torch.cat([torch.full((2, 5, d), 1.0), torch.full((2, 5, d), 2.0)])
    mixed, _ = mix_conditioning(both, torch.ones(4, 5, dtype=torch.long), (0.5, 0.5))
    assert mixed.shape == (2, 5, d) and torch.allclose(mixed, torch.full((2, 5, d), 1.5))


# ------------------------------------------------------------------ DreamLite blending


def test_dreamlite_prompt_blend_mixes_cached_conditionings_and_never_re_encodes_for_weights(tiny_bundle):
    img = frame(1)
    with dreamlite(tiny_bundle, prompt="oil painting") as eng:
        only_a = until(eng, img, "oil painting").image
        eng.set_params(prompt="neon city")
        only_b = until(eng, img, "neon city").image
        encodes = eng.encode_count
        eng.set_params(blend=["oil painting", 0.5, "neon city", 0.5])
        half = until(eng, img, "0.50*oil painting + 0.50*neon city")
        settle(eng)
        assert eng.encode_count == encodes + 1  # the set, once (one job: both prompts, same frame)
        assert eng.worker.latest().embeds.shape[0] == 2  # [prompts x frames] rows, mixed per step
        seen = []
        real = eng.denoise
        eng.denoise = lambda x, embeds, mask, *rest: seen.append((embeds.clone(), mask.clone())) or real(
            x, embeds, mask, *rest)
        outs = {}
        for w in (0.9, 0.3, 0.5):  # a fader: weights only
            eng.set_params(blend_1_weight=w, blend_2_weight=round(1 - w, 2))
            out = eng.step([img], [0])[0]
            outs[w] = out.image
            assert out.prompt == f"{w:.2f}*oil painting + {1 - w:.2f}*neon city"
        settle(eng)
        assert eng.encode_count == encodes + 1  # no weight change encoded anything
        np.testing.assert_array_equal(outs[0.5], half.image)  # the same weights, the same picture
        assert all(not np.array_equal(outs[w], other) for w in outs for other in (only_a, only_b))
        assert (outs[0.9] != outs[0.3]).any()
        # one conditioning shape for the U-Net (nothing to re-capture), and the mix follows the fader
        assert len({(tuple(e.shape), tuple(m.shape)) for e, m in seen}) == 1
        a_cond, b_cond = eng.worker.cached("oil painting"), eng.worker.cached("neon city")  # same frame
        assert seen[0][0].shape == a_cond.embeds.shape
        dist = lambda x, y: (x - y).float().norm().item()  # noqa: E731
        assert dist(seen[0][0], a_cond.embeds) < dist(seen[0][0], b_cond.embeds)  # 0.9 of a
        assert dist(seen[1][0], b_cond.embeds) < dist(seen[1][0], a_cond.embeds)  # 0.3 of a
        both = (a_cond.mask.bool() & b_cond.mask.bool())[0]  # tokens both prompts have
        torch.testing.assert_close(seen[1][0][0, both], 0.3 * a_cond.embeds[0, both] + 0.7 * b_cond.embeds[0, both])
        eng.set_params(blend=[])  # cleared: back to /prompt, from the cache
        assert until(eng, img, "neon city").prompt == "neon city"
        assert eng.encode_count == encodes + 1


def test_a_blend_with_one_prompt_is_exactly_that_prompt(tiny_bundle):
    img = frame(2)
    with dreamlite(tiny_bundle, prompt="sepia") as eng:
        plain = until(eng, img, "sepia").image
    with dreamlite(tiny_bundle, prompt="other", blend=["sepia", 0.4]) as eng:
        np.testing.assert_array_equal(until(eng, img, "sepia").image, plain)


def test_dreamlite_blend_under_every_batch_encodes_each_frame_with_each_prompt(tiny_bundle):
    imgs = [frame(3), frame(4)]
    with dreamlite(tiny_bundle, prompt="x", refresh="every-batch", batch_size=2,
                   blend=["a", 0.5, "b", 0.5]) as eng:
        for i in range(3):
            outs = eng.step(imgs, [2 * i, 2 * i + 1])
            settle(eng)
        assert [o.prompt for o in outs] == ["0.50*a + 0.50*b"] * 2
        cond = eng.worker.latest()
        assert cond.prompt == prompt_set_key(("a", "b"))
        assert cond.embeds.shape[0] == 4  # 2 prompts x 2 frames, in one conditioning job
        count = eng.encode_count
        eng.set_params(blend_1_weight=0.9)
        eng.step(imgs, [6, 7])
        settle(eng)
        assert eng.encode_count == count + 1  # the policy's own refresh, not a second one for the weight


def test_dreamlite_seed_blend_mixes_seed_noises(tiny_bundle):
    img = frame(5)
    with dreamlite(tiny_bundle, prompt="p", seed=3) as eng:
        seed3 = until(eng, img, "p").image
        encodes = eng.encode_count
        eng.set_params(seed=0, seed_blend=[3, 1.0])  # one seed at weight 1 is that seed
        np.testing.assert_array_equal(eng.step([img], [1])[0].image, seed3)
        eng.set_params(seed_blend=[3, 0.5, 11, 0.5])
        mixed = eng.step([img], [2])[0].image
        assert np.abs(mixed.astype(int) - seed3.astype(int)).mean() > 0.5
        noise = eng._noise.double()
        assert abs(noise.std().item() - 1.0) < 0.1  # still unit variance
        eng.set_params(seed_blend_2_weight=0.2)
        assert (eng.step([img], [3])[0].image != mixed).any()
        settle(eng)
        assert eng.encode_count == encodes  # seeds never touch the encoder


# ------------------------------------------------------------------ no prompt: pass-through


def test_without_a_prompt_frames_pass_through_unchanged_and_nothing_is_encoded(tiny_bundle):
    img = frame(6)
    with StreamEngine(tiny_bundle, size=SIZE, encoder_image_size=64) as eng:
        out = eng.step([img], [7])[0]
        np.testing.assert_array_equal(out.image, img)
        assert out.prompt == "" and eng.active_prompt == ""
        assert eng.encode_count == 0
        other = eng.step([frame(6, 48, 80)], [8])[0]  # another size: cropped and resized, like any input
        assert other.image.shape == (SIZE, SIZE, 3)
        eng.set_params(prompt="sketch")
        styled = until(eng, img, "sketch").image
        assert np.abs(styled.astype(int) - img.astype(int)).mean() > 1
        count = eng.encode_count
        eng.set_params(prompt="")  # back to no edit, at once and with no encode
        np.testing.assert_array_equal(eng.step([img], [9])[0].image, img)
        assert eng.encode_count == count


def test_after_a_warm_up_without_a_prompt_the_first_prompt_shows_when_ready(tiny_bundle):
    """The warm-up encodes and denoises the empty prompt once (so a GPU compiles at start), but
    its grey mush is never shown: frames pass through until the first real prompt is ready."""
    img = frame(7)
    with StreamEngine(tiny_bundle, size=SIZE, encoder_image_size=64) as eng:
        eng.warmup(progress=False)
        assert eng.encode_count == 1  # the warm-up's
        np.testing.assert_array_equal(eng.step([img], [0])[0].image, img)
        real = eng.encoder.encode

        def slow(tokens, frames):
            time.sleep(0.5)
            return real(tokens, frames)

        eng.encoder.encode = slow
        eng.set_params(prompt="neon")
        out = eng.step([img], [1])[0]  # the encode is still running
        assert out.prompt == "" and np.array_equal(out.image, img)
        assert until(eng, img, "neon").prompt == "neon"


def test_sd_engine_passes_frames_through_without_a_prompt(sd_bundle):
    from node_server.engine.sd.engine import SDStreamEngine

    img = frame(8)
    with SDStreamEngine(sd_bundle, size=SIZE) as eng:
        eng.warmup(progress=False)
        out = eng.step([img], [3])[0]
        np.testing.assert_array_equal(out.image, img)
        assert out.prompt == ""
        eng.set_params(prompt="a watercolour")
        styled = until(eng, img, "a watercolour").image
        assert np.abs(styled.astype(int) - img.astype(int)).mean() > 1
    with SDStreamEngine(sd_bundle, Params().replace(prompt="x", steps=2, batch_size=1), size=SIZE,
                        stream_batch=True) as eng:
        ids = [o.id for i in range(3) for o in eng.step([frame(i)], [i])]
        eng.set_params(prompt="")  # frames in flight come out first: the order of ids is kept
        ids += [o.id for o in eng.step([img], [3])]
        assert ids == [0, 1, 2, 3]


# ------------------------------------------------------------------ strength cap


def capped(bundle, top=0.08):
    out = copy.copy(bundle)
    out.max_strength = top
    return out


def test_a_strength_above_the_cap_runs_at_the_cap_and_is_said_once(tiny_bundle, caplog):
    img = frame(9)
    with StreamEngine(capped(tiny_bundle), Params().replace(prompt="p", strength=0.05), size=SIZE,
                      encoder_image_size=64) as eng:
        caplog.set_level(logging.INFO, logger="node_server.engine")
        applied = eng.set_params(strength=0.5)
        assert applied.strength == 0.08 and eng.params.strength == 0.08  # the value shown is the one that runs
        notice = strength_notice({"strength": 0.5}, applied)
        assert notice.reason == "0.5 is above this model's max_strength 0.08 (the top of its training); running at 0.08"
        at_cap = until(eng, img, "p").image
        eng.set_params(strength=0.08)
        np.testing.assert_array_equal(eng.step([img], [1])[0].image, at_cap)
        for change in (dict(seed=4), dict(steps=2), dict(prompt="q")):  # unrelated changes: silent
            assert strength_notice(change, eng.set_params(**change)) is None
        said = [r for r in caplog.records if "max_strength" in r.getMessage()]
        assert len(said) == 1
        assert strength_notice({"strength": 0.06}, eng.set_params(strength=0.06)) is None
        assert eng.model_info() == {"family": "dreamlite", "max_strength": 0.08, "width": SIZE, "height": SIZE}


# ------------------------------------------------------------------ what both families share (engine/base.py)


def _engine_of(family: str, tiny_bundle, sd_bundle, **kw):
    from node_server.engine.sd.engine import SDStreamEngine

    if family == "dreamlite":
        return StreamEngine(tiny_bundle, Params(), size=SIZE, encoder_image_size=64, progress=False, **kw)
    return SDStreamEngine(sd_bundle, Params(), size=SIZE, progress=False, **kw)


@pytest.mark.parametrize("family", ["dreamlite", "sd"])
def test_a_compile_choice_the_machine_cannot_run_is_one_line_and_starts_no_thread(family, tiny_bundle,
                                                                                   sd_bundle):
    import threading

    from node_server.engine.base import COMPILE_MODES
    from node_server.errors import ParamError

    with _engine_of(family, tiny_bundle, sd_bundle, compile="auto") as eng:
        assert eng.compile_mode == "off"  # auto on the CPU: eager
    with _engine_of(family, tiny_bundle, sd_bundle, compile="off") as eng:
        assert eng.compile_mode == "off"
    for mode, reason in [(m, f"{m} needs a CUDA device; use auto or off on cpu") for m in COMPILE_MODES[2:]] + [
            ("fast", "must be one of auto, off, graphs, default, max-autotune, got 'fast'")]:
        before = set(threading.enumerate())
        with pytest.raises(ParamError) as info:
            _engine_of(family, tiny_bundle, sd_bundle, compile=mode)
        assert str(info.value) == f"invalid compile: {reason}"
        assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []  # no worker left


@pytest.mark.parametrize("family", ["dreamlite", "sd"])
def test_the_newest_64_prompt_sets_keep_their_blend_weights(family, tiny_bundle, sd_bundle):
    """A weight change never re-encodes, so each prompt set's latest weights are remembered for the
    frame loop to mix with; the 64 most recently set are kept, the older ones fall back to equal."""
    from node_server.engine.base import WEIGHT_SETS

    first = prompt_set_key(["ink", "chalk"])
    with _engine_of(family, tiny_bundle, sd_bundle) as eng:
        eng.set_params(blend=["ink", 0.25, "chalk", 0.75])
        assert eng._weights_for(first, 2) == (0.25, 0.75)
        for k in range(WEIGHT_SETS - 2):  # 63 sets in all (the empty prompt's is the 64th)
            eng.set_params(blend=[f"style {k}", 0.5, "chalk", 0.5])
        eng.set_params(blend=["ink", 0.5, "chalk", 0.25])  # set again: now the newest
        for k in range(WEIGHT_SETS - 1):
            eng.set_params(blend=[f"other {k}", 0.5, "chalk", 0.5])
        assert eng._weights_for(first, 2) == (0.5, 0.25)  # 63 newer sets: still remembered
        assert eng._weights_for(prompt_set_key(["style 0", "chalk"]), 2) == (1.0, 1.0)  # forgotten
        eng.set_params(blend=["last", 0.5, "chalk", 0.5])
        assert eng._weights_for(first, 2) == (1.0, 1.0)  # 64 newer sets: forgotten
        assert eng._weights_for(prompt_set_key(["last", "chalk"]), 2) == (0.5, 0.5)


# ------------------------------------------------------------------ non-square sizes


def test_dreamlite_runs_16_9_with_the_temporal_adapter(tiny_bundle):
    from node_server.models.lllite_file import synth_hooks

    bundle = copy.copy(tiny_bundle)
    bundle.unet = copy.deepcopy(tiny_bundle.unet)
    hooks = synth_hooks(bundle.unet, blocks="down", up_std=0.1)
    clip = [frame(i, 72, 128) for i in range(3)]  # a 16:9 camera
    with StreamEngine(bundle, Params().replace(prompt="p", batch_size=2), size=(64, 96),
                      encoder_image_size=64, progress=False, lllite=hooks) as eng:
        for b in range(3):
            outs = eng.step(clip[b:b + 2] if b < 2 else clip[:1], [2 * b, 2 * b + 1][:2 if b < 2 else 1])
            assert all(o.image.shape == (64, 96, 3) for o in outs)
        assert eng.lllite.refreshes == 3 and eng.lllite.prev_out.shape == (1, 3, 64, 96)
        assert eng.model_info()["width"] == 96 and eng.model_info()["height"] == 64
    with StreamEngine(tiny_bundle, Params().replace(prompt="p"), size=(64, 96), encoder_image_size=64) as eng:
        plain = eng.step([clip[0]], [0])[0].image
    assert plain.shape == (64, 96, 3)


def test_sd_runs_16_9_in_both_step_modes(sd_bundle):
    from node_server.engine.sd.engine import SDStreamEngine

    clip = [frame(i, 72, 128) for i in range(4)]
    for stream_batch in (False, True):
        with SDStreamEngine(sd_bundle, Params().replace(prompt="x", steps=2), size=(64, 96),
                            stream_batch=stream_batch) as eng:
            outs = [o for i, f in enumerate(clip) for o in eng.step([f], [i])] + eng.flush()
            assert [o.id for o in outs] == [0, 1, 2, 3]
            assert all(o.image.shape == (64, 96, 3) for o in outs)
            assert eng.model_info() == {"family": "sd", "max_strength": 1.0, "width": 96, "height": 64}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_on_a_gpu_blending_and_pass_through_never_recapture_the_graph(tiny_bundle):
    """On the compiled path: a prompt set, weight changes, seed blends and pass-through frames keep
    the one captured graph (the conditioning keeps one shape)."""
    bundle = copy.deepcopy(tiny_bundle).to(torch.device("cuda"), torch.float32)
    img = frame(10)
    with StreamEngine(bundle, Params().replace(prompt="a"), size=SIZE, encoder_image_size=64, device="cuda",
                      dtype=torch.float32, progress=False) as eng:
        eng.warmup(progress=False)
        until(eng, img, "a")
        captured = list(eng.graphed.captured)
        eng.set_params(blend=["a", 0.5, "b", 0.5])
        until(eng, img, "0.50*a + 0.50*b")
        for w in (0.1, 0.6, 0.9):
            eng.set_params(blend_1_weight=w, seed_blend=[1, w, 2, 1 - w])
            eng.step([img], [1])
        eng.set_params(prompt="", blend=[])
        np.testing.assert_array_equal(eng.step([img], [2])[0].image, img)
        assert eng.graphed.captured == captured == [(1, 1)]
