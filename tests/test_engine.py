"""The streaming engine on the tiny model (CPU): order, ids, shapes, parameters, conditioning."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params, RefreshPolicy
from node_server.errors import InputError, ParamError

SIZE = 64


def frame(seed: int, h: int = SIZE, w: int = SIZE, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


@pytest.fixture()
def engine(tiny_bundle):
    eng = StreamEngine(tiny_bundle, Params().replace(prompt="oil painting"), size=SIZE, encoder_image_size=64)
    yield eng
    eng.close()


def wait_for_prompt(eng: StreamEngine, prompt: str, img: np.ndarray, timeout: float = 30.0) -> list:
    """Step until the outputs carry `prompt`; returns the prompts seen on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = eng.step([img], [0])
        seen.append(out[0].prompt)
        if out[0].prompt == prompt:
            return seen
        time.sleep(0.005)
    raise AssertionError(f"prompt {prompt!r} never became active; saw {seen[-5:]}")


def test_frames_come_back_in_order_with_ids(engine):
    ids = [11, 3, 42]
    outs = []
    for i in ids:
        outs += engine.step([frame(i)], [i])
    assert [o.id for o in outs] == ids
    for o in outs:
        assert o.image.shape == (SIZE, SIZE, 3) and o.image.dtype == np.uint8
        assert o.prompt == "oil painting"


def test_batch_returns_each_frame_in_order(tiny_bundle):
    with StreamEngine(tiny_bundle, Params().replace(prompt="a", batch_size=3), size=SIZE,
                      encoder_image_size=64) as eng:
        outs = eng.step([frame(1), frame(2), frame(3)], [5, 6, 7])
        assert [o.id for o in outs] == [5, 6, 7]
        # a partial batch is fine, more than the batch size is not
        assert [o.id for o in eng.step([frame(4)], [8])] == [8]
        with pytest.raises(ParamError, match="frames"):
            eng.step([frame(1)] * 4, [1, 2, 3, 4])
        # the same frame in different batch slots gives the same output (no cross-talk)
        a, b, c = eng.step([frame(9), frame(1), frame(9)], [1, 2, 3])
        np.testing.assert_array_equal(a.image, c.image)


def test_non_square_size_and_odd_inputs(tiny_bundle):
    with StreamEngine(tiny_bundle, Params().replace(prompt="x"), size=(64, 96), encoder_image_size=64) as eng:
        grey = frame(1, 50, 70, 1)[:, :, 0]  # HxW grey
        rgba = frame(2, 33, 100, 4)
        tall = frame(3, 120, 40, 3)
        outs = eng.step([grey], [1]) + eng.step([rgba], [2]) + eng.step([tall], [3])
        assert all(o.image.shape == (64, 96, 3) for o in outs)


def test_rejects_bad_frames_and_sizes(tiny_bundle, engine):
    with pytest.raises(InputError, match="uint8"):
        engine.step([np.zeros((8, 8, 3), np.float32)], [1])
    with pytest.raises(InputError, match="shape"):
        engine.step([np.zeros((8, 8, 2), np.uint8)], [1])
    with pytest.raises(ParamError, match="size"):
        StreamEngine(tiny_bundle, size=100)


def test_same_input_same_output_and_seed_matters(engine):
    img = frame(5)
    a = engine.step([img], [1])[0].image
    b = engine.step([img], [2])[0].image
    np.testing.assert_array_equal(a, b)
    engine.set_params(seed=1234)
    c = engine.step([img], [3])[0].image
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 0.5


def test_bad_parameters_are_named_and_nothing_is_applied(engine):
    before = engine.params
    for changes, name in [
        (dict(steps=9), "steps"),
        (dict(steps=0), "steps"),
        (dict(strength=1.5), "strength"),
        (dict(seed=-3), "seed"),
        (dict(batch_size=0), "batch_size"),
        (dict(refresh="sometimes"), "refresh"),
        (dict(prompt="x" * 600), "prompt"),
        (dict(prompt="ok", steps="many"), "steps"),
    ]:
        with pytest.raises(ParamError) as info:
            engine.set_params(**changes)
        assert info.value.name == name and name in str(info.value)
    assert engine.params == before


def test_prompt_longer_than_the_token_budget_is_rejected(tiny_bundle):
    with StreamEngine(tiny_bundle, size=SIZE, encoder_image_size=64, max_prompt_tokens=8) as eng:
        with pytest.raises(ParamError, match="tokens"):
            eng.set_params(prompt="a fairly long prompt with many different words in it")
        eng.set_params(prompt="ok")


def test_refresh_policy_parsing():
    assert str(RefreshPolicy.parse("every:4")) == "every:4"
    assert str(RefreshPolicy.parse("every-batch")) == "every-batch"
    assert str(RefreshPolicy.parse("every:1")) == "every-batch"
    assert RefreshPolicy.parse("every:3").due(6) and not RefreshPolicy.parse("every:3").due(7)
    for bad in ["every:0", "every:x", "", "never"]:
        with pytest.raises(ParamError):
            RefreshPolicy.parse(bad)


def test_prompt_changes_the_output(engine):
    img = frame(7)
    a = engine.step([img], [1])[0].image
    engine.set_params(prompt="pencil sketch")
    wait_for_prompt(engine, "pencil sketch", img)
    b = engine.step([img], [2])[0].image
    # random weights: the prompt's effect is small but must be there, across the picture
    assert (a != b).any(axis=2).mean() > 0.05


def test_each_distinct_prompt_is_encoded_once(engine):
    img = frame(8)
    engine.step([img], [0])
    assert engine.encode_count == 1
    for prompt in ["b", "c", "oil painting", "b", "c", "d", "oil painting"]:
        engine.set_params(prompt=prompt)
        wait_for_prompt(engine, prompt, img)
    assert engine.encode_count == 4  # oil painting, b, c, d


def test_refresh_every_batch_and_every_n(tiny_bundle):
    img = frame(3)
    with StreamEngine(tiny_bundle, Params().replace(prompt="p", refresh="every:3"), size=SIZE,
                      encoder_image_size=64) as eng:
        for i in range(9):
            eng.step([img], [i])
            while eng.worker.busy:  # let each requested refresh finish so none coalesce
                time.sleep(0.002)
        # the first conditioning plus batches 3 and 6 (batch 0's refresh coalesces with the first)
        assert 3 <= eng.encode_count <= 4
    with StreamEngine(tiny_bundle, Params().replace(prompt="p", refresh="every-batch", batch_size=2),
                      size=SIZE, encoder_image_size=64) as eng:
        for i in range(4):
            eng.step([img, frame(i)], [2 * i, 2 * i + 1])
            while eng.worker.busy:
                time.sleep(0.002)
        assert eng.encode_count == 4
        assert eng.worker.latest().embeds.shape[0] == 2  # one conditioning per frame of the batch


def test_frame_loop_keeps_delivering_while_a_slow_encode_runs(engine, monkeypatch):
    img = frame(9)
    engine.step([img], [0])  # first conditioning is in place
    real_encode = engine.encoder.encode
    started, slow = threading.Event(), 1.5

    def slow_encode(tokens, frames):
        started.set()
        time.sleep(slow)
        return real_encode(tokens, frames)

    monkeypatch.setattr(engine.encoder, "encode", slow_encode)
    engine.set_params(prompt="watercolour")
    t0 = time.perf_counter()
    out = engine.step([img], [1])
    assert started.wait(5), "the prompt change did not start an encode"
    delivered, intervals, prompts = 1, [], [out[0].prompt]
    last = time.perf_counter()
    while time.perf_counter() - t0 < slow * 0.8:
        out = engine.step([img], [delivered + 1])
        now = time.perf_counter()
        intervals.append(now - last)
        last = now
        prompts.append(out[0].prompt)
        delivered += 1
    # measured: frames kept coming during the encode, none waited for it
    assert delivered >= 5, f"only {delivered} frames during a {slow} s encode"
    assert max(intervals) < slow / 2, f"a frame waited {max(intervals):.2f} s"
    assert set(prompts) == {"oil painting"}  # the old conditioning stays active meanwhile
    seen = wait_for_prompt(engine, "watercolour", img, timeout=10)
    assert seen[-1] == "watercolour"


def test_new_prompt_encodes_at_once_with_the_latest_frame(engine):
    """A prompt change does not wait for the next frame: the very next output already uses it."""
    img = frame(10)
    engine.step([img], [0])
    engine.set_params(prompt="neon edges")  # no frame flows while it encodes
    deadline = time.monotonic() + 10
    while engine.worker.latest().prompt != "neon edges":
        assert time.monotonic() < deadline, "the new prompt was never encoded"
        time.sleep(0.005)
    assert engine.step([img], [1])[0].prompt == "neon edges"


def test_a_failed_encode_keeps_the_old_conditioning_and_is_reported(engine, monkeypatch):
    img = frame(11)
    engine.step([img], [0])
    real = engine.encoder.encode
    calls = []

    def flaky(tokens, frames):
        calls.append(tokens.prompt)
        if tokens.prompt == "broken":
            raise MemoryError("simulated out of memory")
        return real(tokens, frames)

    monkeypatch.setattr(engine.encoder, "encode", flaky)
    engine.set_params(prompt="broken")
    deadline = time.monotonic() + 10
    while engine.worker.failures == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    out = engine.step([img], [1])
    assert out[0].prompt == "oil painting"  # frames keep coming on the previous conditioning
    message = engine.pop_encoder_error()
    assert "MemoryError" in message and "simulated out of memory" in message
    assert engine.pop_encoder_error() is None  # reported once
    engine.set_params(prompt="fine again")  # the worker survived
    assert wait_for_prompt(engine, "fine again", img)[-1] == "fine again"


def test_a_failed_first_encode_raises_and_the_next_step_retries(tiny_bundle, monkeypatch):
    with StreamEngine(tiny_bundle, Params().replace(prompt="p"), size=SIZE, encoder_image_size=64) as eng:
        real = eng.encoder.encode
        failures = [1]

        def fails_once(tokens, frames):
            if failures:
                failures.pop()
                raise RuntimeError("first encode fails")
            return real(tokens, frames)

        monkeypatch.setattr(eng.encoder, "encode", fails_once)
        with pytest.raises(RuntimeError, match="first encode fails"):
            eng.step([frame(1)], [0])
        assert eng.step([frame(1)], [1])[0].prompt == "p"


def test_steps_and_strength_changes_take_effect_and_revert(engine):
    img = frame(12)
    base = engine.step([img], [0])[0].image
    for change in (dict(steps=3), dict(strength=0.5)):
        engine.set_params(**change)
        assert (engine.step([img], [1])[0].image != base).any(), change
        engine.set_params(steps=1, strength=1.0)
        np.testing.assert_array_equal(engine.step([img], [2])[0].image, base)


def test_compiled_modes_need_a_gpu(tiny_bundle):
    """On the CPU `auto` runs eagerly; asking for compiled graphs there is a clear error."""
    from node_server.errors import ParamError

    with StreamEngine(tiny_bundle, Params(), size=64, encoder_image_size=64) as eng:
        assert eng.compile_mode == "off" and eng.graphed is None
    for mode in ("graphs", "default", "nonsense"):
        with pytest.raises(ParamError, match="compile"):
            StreamEngine(tiny_bundle, Params(), size=64, encoder_image_size=64, compile=mode)


def test_the_encoder_forward_raises_no_future_warning(tiny_bundle):
    """transformers 5 deprecates the decoder layers' `past_key_values` argument with a
    FutureWarning that every start used to print (also under --quiet): the project's own call
    passes no cache argument at all."""
    import warnings

    with StreamEngine(tiny_bundle, Params().replace(prompt="p"), size=SIZE, encoder_image_size=64) as eng:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            eng.encoder.encode(eng.encoder.tokenize("a prompt"), np_frames_on(eng, frame(3)))


def np_frames_on(eng, img):
    from node_server.engine.frames import to_device_batch

    return to_device_batch([img], eng.size, eng.device)

