"""CUDA-only checks of the engine's stream hand-over (skipped on machines without a GPU).

Run on the device: `python -m pytest -q tests/test_cuda.py`.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SIZE = 64


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cuda_bundle(tiny_bundle):
    """The CPU-built tiny model moved to the GPU (a build on CUDA draws other random weights)."""
    import copy

    return copy.deepcopy(tiny_bundle).to(torch.device("cuda"), torch.float32)


@pytest.fixture()
def full_fp32():
    """Plain fp32 kernels (no TF32), so CUDA and CPU run the same arithmetic up to ordering."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("mode", ["off", "graphs", "default"])
def test_cuda_output_matches_cpu(tiny_bundle, cuda_bundle, full_fp32, mode):
    img = frame(1)
    params = Params().replace(prompt="oil painting", steps=2)
    with StreamEngine(tiny_bundle, params, size=SIZE, encoder_image_size=64) as cpu:
        ref = cpu.step([img], [0])[0].image.astype(int)
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile=mode) as gpu:
        assert gpu.device.type == "cuda"
        out = gpu.step([img], [0])[0].image.astype(int)
        again = gpu.step([img], [1])[0].image.astype(int)  # a replay, not the capture run
    for got in (out, again):
        diff = np.abs(got - ref)
        print(f"CUDA ({mode}) vs CPU: mean {diff.mean():.4f} max {diff.max()} levels")
        assert diff.mean() < 0.1 and diff.max() <= 3, (diff.mean(), diff.max())


def _settle(eng, img, prompt):
    """Step until the output is made with `prompt`'s conditioning; returns that output."""
    deadline = time.monotonic() + 20
    while True:
        out = eng.step([img], [0])[0]
        if out.prompt == prompt:
            return out.image.astype(int)
        assert time.monotonic() < deadline


def test_graphs_follow_strength_seed_and_prompt_without_recapture(cuda_bundle, full_fp32):
    img = frame(3)
    params = Params().replace(prompt="first")
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile="off") as eager, \
         StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile="graphs") as graphed:
        previous = None
        for changes in ({}, {"strength": 0.6}, {"seed": 7}, {"prompt": "second"}):
            eager.set_params(**changes)
            graphed.set_params(**changes)
            prompt = eager.params.prompt
            a, b = _settle(eager, img, prompt), _settle(graphed, img, prompt)
            assert np.abs(a - b).max() <= 1, changes
            if previous is not None:
                assert np.abs(b - previous).mean() > 0.5, f"{changes} did not change the graphed output"
            previous = b
        assert graphed.graphed.captured == [(1, 1)]  # one capture served every change
        graphed.set_params(steps=2)
        _settle(graphed, img, "second")
        assert graphed.graphed.captured == [(1, 1), (1, 2)]


def test_short_batch_is_padded_to_the_captured_batch(cuda_bundle):
    params = Params().replace(prompt="p", batch_size=4)
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, compile="graphs") as eng:
        full = eng.step([frame(i) for i in range(4)], [0, 1, 2, 3])
        short = eng.step([frame(0), frame(1)], [10, 11])
        assert [o.id for o in short] == [10, 11]
        assert eng.graphed.captured == [(4, 1)]
        assert np.array_equal(short[0].image, full[0].image) and np.array_equal(short[1].image, full[1].image)


def test_encoder_runs_on_its_own_stream_and_main_loop_never_waits(cuda_bundle, monkeypatch):
    with StreamEngine(cuda_bundle, Params().replace(prompt="a"), size=SIZE, encoder_image_size=64,
                      dtype=torch.bfloat16) as eng:
        img = frame(2)
        eng.step([img], [0])
        real = eng.encoder.encode
        seen_streams, started = [], threading.Event()

        def slow(tokens, frames):
            seen_streams.append(torch.cuda.current_stream())
            started.set()
            time.sleep(1.0)
            return real(tokens, frames)

        monkeypatch.setattr(eng.encoder, "encode", slow)
        eng.set_params(prompt="b")
        t0 = time.perf_counter()
        prompts, gaps, last = [], [], t0
        while time.perf_counter() - t0 < 0.8:
            prompts.append(eng.step([img], [1])[0].prompt)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        assert started.is_set()
        assert seen_streams[0] == eng.worker.stream != torch.cuda.current_stream()
        assert len(prompts) >= 10 and max(gaps[1:]) < 0.3
        assert set(prompts) == {"a"}
        deadline = time.monotonic() + 10
        while eng.step([img], [2])[0].prompt != "b":
            assert time.monotonic() < deadline


def test_every_batch_conditioning_on_cuda(cuda_bundle):
    params = Params().replace(prompt="p", refresh="every-batch", batch_size=4)
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64) as eng:
        ids = []
        for b in range(6):
            ids += [o.id for o in eng.step([frame(i) for i in range(4)], [4 * b + i for i in range(4)])]
            deadline = time.monotonic() + 20
            while eng.worker.busy:  # let each batch's request finish, so none is coalesced away
                assert time.monotonic() < deadline
                time.sleep(0.005)
        assert ids == list(range(24))
        assert eng.encode_count >= 6  # every batch asked for (and got) its own encode


def _on_side_stream(fn):
    """Run `fn` as the conditioning worker does: on a stream of its own (capture needs one)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def test_encoder_graphs_per_batch_and_bucket_match_the_plain_forward(cuda_bundle, full_fp32):
    """One CUDA graph per (batch, bucket); a new prompt in a captured bucket only changes the
    graph's inputs; every replay equals the un-graphed forward and the stock one."""
    from node_server.engine.dreamlite.encoder import PromptEncoder

    dev = torch.device("cuda")
    kw = dict(image_size=64, max_prompt_tokens=64, buckets=(8, 32))
    graphed = PromptEncoder(cuda_bundle, dev, torch.float32, graphs=True, **kw)
    plain = PromptEncoder(cuda_bundle, dev, torch.float32, **kw)
    assert graphed.graphed is not None and plain.graphed is None
    gen = torch.Generator(device="cuda").manual_seed(0)
    prompts = ["ink", "oil", "a much longer instruction about neon light and rain", "ink"]
    for n in (1, 2):
        for prompt in prompts:
            frames = torch.rand(n, 3, SIZE, SIZE, device=dev, generator=gen)
            tokens = graphed.tokenize(prompt)
            got, got_mask = _on_side_stream(lambda: graphed.encode(tokens, frames))
            got = got.clone()  # the next replay reuses the graph's buffers
            want, want_mask = plain.encode(plain.tokenize(prompt), frames)
            ref, _ = plain.encode_stock(plain.tokenize(prompt), frames)
            assert torch.equal(got_mask, want_mask)
            assert (got - want).norm() / want.norm() < 1e-5, (n, prompt)
            assert (got - ref).norm() / ref.norm() < 1e-4, (n, prompt)
    buckets = {graphed.tokenize(p).run_length for p in prompts}
    assert len(graphed.graphed.captured) == 2 * len(buckets) == 4


@pytest.mark.parametrize("batch, refresh", [(1, "on-change"), (2, "every-batch")])
def test_warmup_captures_every_bucket_so_no_prompt_captures_later(cuda_bundle, batch, refresh):
    """The warm-up primes each (batch, bucket) the worker will send; afterwards a prompt of any
    length, and under every-batch a short batch, replays graphs only (the CPU tests use a spy:
    tests/test_encoder_warmup.py)."""
    from test_encoder_warmup import prompt_in

    params = Params().replace(prompt="ink", batch_size=batch, refresh=refresh)
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, compile="graphs") as eng:
        enc = eng.encoder
        assert enc.graphed is not None and enc.shape_bound
        eng.warmup(progress=False)
        captured = list(enc.graphed.captured)
        batches = {1, batch}
        assert len(captured) == len(enc.buckets) * len(batches)
        assert {key[0][0][0] for key in captured} == batches  # the frames' batch
        for bucket in enc.buckets:
            prompt = prompt_in(eng, bucket)
            eng.set_params(prompt=prompt)
            deadline = time.monotonic() + 30
            while eng.step([frame(k) for k in range(batch)], list(range(batch)))[0].prompt != prompt:
                assert time.monotonic() < deadline
        eng.step([frame(0)], [0])  # a short batch
        while eng.worker.busy:
            time.sleep(0.005)
        assert enc.graphed.captured == captured


def test_the_two_device_copy_path_on_one_gpu(cuda_bundle, full_fp32, monkeypatch):
    """`always_transfer` runs the --encoder-device hand-over (copies on a side stream, ordered by
    events) on one GPU: the output equals the plain engine's and the frame loop never waits."""
    from node_server.engine.conditioning import ConditioningWorker

    img = frame(4)
    params = Params().replace(prompt="oil painting")
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile="graphs") as plain:
        want = [_settle(plain, img, "oil painting")]
        plain.set_params(prompt="neon")
        want.append(_settle(plain, img, "neon"))
    monkeypatch.setattr(ConditioningWorker, "always_transfer", True)
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile="graphs", encoder_device="cuda") as moved:
        assert moved.worker.transfer and moved.worker.copy_stream is not None
        got = [_settle(moved, img, "oil painting")]
        real, started = moved.encoder.encode, threading.Event()

        def slow(tokens, frames):
            started.set()
            time.sleep(1.0)
            return real(tokens, frames)

        monkeypatch.setattr(moved.encoder, "encode", slow)
        moved.set_params(prompt="neon")
        assert started.wait(5)
        t0 = last = time.perf_counter()
        gaps, prompts = [], []
        while time.perf_counter() - t0 < 0.8:
            prompts.append(moved.step([img], [1])[0].prompt)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        assert len(prompts) >= 10 and max(gaps) < 0.3 and set(prompts) == {"oil painting"}
        got.append(_settle(moved, img, "neon"))
    for a, b in zip(want, got):
        assert np.abs(a - b).max() <= 1


def test_the_encoder_on_an_sm_partition(cuda_bundle, full_fp32):
    """A green context of a few SMs for the encoder's stream gives the same output (or says why
    this torch/driver cannot: then the plain stream stays and the test is skipped with the reason)."""
    img = frame(5)
    params = Params().replace(prompt="charcoal")
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile="graphs") as plain:
        want = _settle(plain, img, "charcoal")
    with StreamEngine(cuda_bundle, params, size=SIZE, encoder_image_size=64, dtype=torch.float32,
                      compile="graphs") as part:
        reason = part.worker.limit_sms(16)
        if reason is not None:
            pytest.skip(f"no SM partition here: {reason}")
        got = _settle(part, img, "charcoal")
    assert np.abs(want - got).max() <= 1


def test_kernel_profile_names_a_matmul():
    from bench.kernel_profile import profile_kernels

    a = torch.randn(512, 512, device="cuda")
    prof = profile_kernels(lambda: a @ a, calls=3)
    assert prof["kernel_ms_per_call"] > 0 and prof["top"]
    assert prof["kinds"].get("matmul", 0) > 0.5, prof
