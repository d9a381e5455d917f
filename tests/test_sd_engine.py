"""The SD engine's behaviour: stream batch, prompt and seed blending on cached embeddings (the
encode counter proves a weight change never re-encodes), seed modes, residual CFG, a prompt
change that never stalls the frame loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from node_server.engine.factory import build_engine
from node_server.engine.params import Params
from node_server.engine.sd.engine import SDStreamEngine, t_index_list
from node_server.errors import ParamError

SIZE = 64


@pytest.fixture(scope="module")
def sd_bundle():
    from node_server.models import build_synthetic_sd

    return build_synthetic_sd("sd-turbo-tiny", seed=0)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def run(engine, imgs, start_id=0):
    return {o.id: o for o in engine.step(imgs, list(range(start_id, start_id + len(imgs))))}


def settle(engine) -> None:
    """Wait until the worker has published what was asked (encodes are asynchronous)."""
    for _ in range(1000):
        if not engine.worker.busy:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the conditioning worker never finished")


def test_factory_builds_the_sd_engine(sd_bundle):
    with build_engine(sd_bundle, Params(), size=SIZE, device="cpu") as eng:
        assert isinstance(eng, SDStreamEngine)
        out = eng.step(frames(1), [5])
        assert out[0].id == 5 and out[0].image.shape == (SIZE, SIZE, 3) and out[0].image.dtype == np.uint8


def test_t_index_list_follows_strength_and_steps():
    assert t_index_list(1, 1.0, 50) == (0,)
    assert t_index_list(1, 0.5, 50) == (25,)
    assert t_index_list(2, 0.5, 4) == (2, 3)  # the img2img pipeline's last two steps
    assert t_index_list(4, 1.0, 50) == (0, 12, 25, 37)
    with pytest.raises(ParamError):
        t_index_list(3, 0.5, 4)


@pytest.mark.parametrize("scheduler", ["euler", "lcm"])
def test_stream_batch_gives_the_same_frames_k_minus_1_calls_late(sd_bundle, scheduler):
    imgs = frames(6, seed=1)
    params = Params().replace(prompt="a neon city", steps=3, strength=0.8, batch_size=2)
    with SDStreamEngine(sd_bundle, params, size=SIZE, scheduler=scheduler) as seq:
        ref = {}
        for i in range(0, 6, 2):
            ref.update(run(seq, imgs[i:i + 2], i))
    with SDStreamEngine(sd_bundle, params, size=SIZE, scheduler=scheduler, stream_batch=True) as st:
        got, per_call = {}, []
        for i in range(0, 6, 2):
            outs = run(st, imgs[i:i + 2], i)
            per_call.append(sorted(outs))
            got.update(outs)
        for o in st.flush():
            got[o.id] = o
    assert per_call == [[], [], [0, 1]]  # 3 steps: a frame comes out 2 calls after it went in
    assert sorted(got) == list(range(6))
    for i in range(6):
        assert np.abs(got[i].image.astype(int) - ref[i].image.astype(int)).max() <= 1


def test_weight_change_reuses_cached_embeddings(sd_bundle):
    enc = None
    with SDStreamEngine(sd_bundle, Params().replace(prompt="start"), size=SIZE) as eng:
        enc = eng.encoder
        run(eng, frames(1))
        encodes, tokenized = eng.encode_count, enc.tokenize_count
        eng.set_params(blend=["an oil painting", 0.5, "a neon city", 0.5])
        settle(eng)
        run(eng, frames(1))
        assert eng.encode_count == encodes + 1  # both prompts in one batched encode
        assert enc.tokenize_count == tokenized + 1
        cached = eng.worker.latest().embeds
        first = eng._embeds.clone()
        torch.testing.assert_close(first[0], cached.mean(0))
        for w in (0.1, 0.9, 0.3):
            eng.set_params(blend_1_weight=w)
            img = run(eng, frames(1))[0]
            mixed = (w * cached[0] + 0.5 * cached[1]) / (w + 0.5)
            torch.testing.assert_close(eng._embeds[0], mixed)
        assert eng.encode_count == encodes + 1  # weights only: no encode
        assert enc.tokenize_count == tokenized + 1  # and no tokenising either
        assert img.prompt == f"{0.3 / 0.8:.2f}*an oil painting + {0.5 / 0.8:.2f}*a neon city"
        eng.set_params(blend=[])  # cleared: back to /prompt, whose conditioning is cached
        assert run(eng, frames(1))[0].prompt == "start"
        assert eng.encode_count == encodes + 1


def test_blend_with_one_slot_equals_that_prompt(sd_bundle):
    img = frames(1, seed=4)
    with SDStreamEngine(sd_bundle, Params().replace(prompt="a watercolour"), size=SIZE) as eng:
        plain = run(eng, img)[0].image
    with SDStreamEngine(sd_bundle, Params().replace(prompt="other", blend=["a watercolour", 0.3]), size=SIZE) as eng:
        blended = run(eng, img)[0].image
        other = eng.step(img, [1])
    assert np.array_equal(plain, blended)
    assert other[0].prompt == "a watercolour"


def test_seed_blending_and_modes(sd_bundle):
    img = frames(1, seed=5)
    base = Params().replace(prompt="x", strength=1.0)
    outs = {}
    for name, params in {
        "seed3": base.replace(seed=3),
        "slot3": base.replace(seed=9, seed_blend=[3, 0.4]),
        "seed4": base.replace(seed=4),
        "mix": base.replace(seed_blend=[3, 0.5, 4, 0.5]),
    }.items():
        with SDStreamEngine(sd_bundle, params, size=SIZE) as eng:
            outs[name] = run(eng, img)[0].image.astype(int)
    assert np.array_equal(outs["seed3"], outs["slot3"])  # one slot = that seed
    assert np.abs(outs["mix"] - outs["seed3"]).mean() > 1 and np.abs(outs["mix"] - outs["seed4"]).mean() > 1
    # fixed: the same input gives the same output every frame; per-frame: fresh noise each frame
    with SDStreamEngine(sd_bundle, base.replace(seed_mode="fixed"), size=SIZE) as eng:
        a, b = run(eng, img)[0].image, run(eng, img, 1)[1].image
        assert np.array_equal(a, b)
        eng.set_params(seed_mode="per-frame")
        c, d = run(eng, img, 2)[2].image, run(eng, img, 3)[3].image
        assert not np.array_equal(c, d)


def test_residual_cfg_self(sd_bundle):
    img = frames(1, seed=6)
    results = {}
    for name, changes in {"none": {}, "self-1": {"cfg": "self", "guidance": 1.0},
                          "self-2": {"cfg": "self", "guidance": 2.0}}.items():
        with SDStreamEngine(sd_bundle, Params().replace(prompt="x", strength=0.7, **changes), size=SIZE) as eng:
            results[name] = run(eng, img)[0].image.astype(int)
    assert np.array_equal(results["none"], results["self-1"])  # guidance 1 is no guidance
    assert np.abs(results["self-2"] - results["none"]).mean() > 0.5


class _GatedEncoder:
    """Wraps the CLIP encoder; encodes of `gated` prompts wait until the test opens the gate."""

    def __init__(self, inner, gated: str):
        self.inner, self.gated = inner, gated
        self.gate, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, tokens, frames=None):
        if self.gated in tokens.prompts:
            self.entered.set()
            assert self.gate.wait(30)
        return self.inner.encode(tokens, frames)


def test_prompt_change_never_stalls_the_frame_loop(sd_bundle):
    with SDStreamEngine(sd_bundle, Params().replace(prompt="old"), size=SIZE) as eng:
        run(eng, frames(1))
        gated = _GatedEncoder(eng.worker.encoder, "new")
        eng.worker.encoder = gated
        eng.set_params(prompt="new")
        assert gated.entered.wait(10)  # the encode is running (and blocked) on the worker thread
        outs = [run(eng, frames(1), i)[i] for i in range(1, 4)]  # frames keep coming meanwhile
        assert [o.prompt for o in outs] == ["old"] * 3
        gated.gate.set()
        eng.worker.wait_first()
        for _ in range(200):
            if eng.worker.latest().prompt == "new":
                break
            threading.Event().wait(0.01)
        assert run(eng, frames(1), 9)[9].prompt == "new"


def test_bad_values_are_rejected_before_anything_applies(sd_bundle):
    with SDStreamEngine(sd_bundle, Params(), size=SIZE) as eng:
        for bad in ({"blend": ["a"]}, {"blend_2_weight": 1.5}, {"seed_mode": "sometimes"}, {"cfg": "full"},
                    {"guidance": 0.5}):
            with pytest.raises(ParamError):
                eng.set_params(prompt="should not apply", **bad)
        assert eng.params.prompt == ""
