"""The multimodal encoder on its own device (`--encoder-device`, issue 22).

The same code runs when both devices are the same: with `ConditioningWorker.always_transfer`
(a test hook) every frame batch and every conditioning goes through the copy path on one device
(the CPU here, one GPU in tests/test_cuda.py), so these tests pin that the two-device engine gives
the single-device engine's output exactly and that the frame loop never waits for the encoder.
The two-GPU run itself is in `test_two_gpus_match_one` (skipped without two GPUs).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from node_server.engine.conditioning import ConditioningWorker
from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.params import Params

SIZE = 64


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


def _run(bundle, params: Params, batches: list[list[np.ndarray]], changes: dict, **options) -> list[np.ndarray]:
    """Outputs of `batches`, settling each encode before the next step (deterministic); `changes`
    maps a batch index to parameters set before it."""
    outs = []
    with StreamEngine(bundle, params, size=SIZE, encoder_image_size=64, **options) as eng:
        for k, frames in enumerate(batches):
            if k in changes:
                eng.set_params(**changes[k])
            while eng.worker.busy:
                time.sleep(0.002)
            outs += [o.image for o in eng.step(frames, list(range(len(frames))))]
            while eng.worker.busy:
                time.sleep(0.002)
        if options.get("encoder_device") is not None:
            assert eng.worker.transfer
    return outs


@pytest.mark.parametrize("refresh", ["on-change", "every-batch"])
def test_the_copy_path_gives_the_single_device_output(tiny_bundle, monkeypatch, refresh):
    params = Params().replace(prompt="oil painting", batch_size=2, refresh=refresh)
    batches = [[frame(2 * k), frame(2 * k + 1)] for k in range(4)]
    changes = {2: {"prompt": "neon city"}}
    plain = _run(tiny_bundle, params, batches, changes)
    copies = []
    real = ConditioningWorker._encode_elsewhere

    def counted(self, req):
        embeds, mask, event = real(self, req)
        copies.append(embeds)
        return embeds, mask, event

    monkeypatch.setattr(ConditioningWorker, "always_transfer", True)
    monkeypatch.setattr(ConditioningWorker, "_encode_elsewhere", counted)
    moved = _run(tiny_bundle, params, batches, changes, encoder_device="cpu")
    assert copies, "the copy path never ran"
    assert len(plain) == len(moved) == 8
    for a, b in zip(plain, moved):
        assert np.array_equal(a, b)


def test_the_handover_copies_the_frames_and_the_conditioning(tiny_bundle, monkeypatch):
    """What the encoder sees and what the denoiser reads are copies (one each way), and the result
    equals a direct encode."""
    monkeypatch.setattr(ConditioningWorker, "always_transfer", True)
    with StreamEngine(tiny_bundle, Params().replace(prompt="ink"), size=SIZE, encoder_image_size=64,
                      encoder_device="cpu") as eng:
        seen = {}
        real = eng.encoder.encode

        def spy(tokens, frames):
            seen["frames"] = frames
            seen["out"] = real(tokens, frames)
            return seen["out"]

        monkeypatch.setattr(eng.encoder, "encode", spy)
        eng.step([frame(1)], [0])
        cond = eng.worker.latest()
        assert seen["frames"].data_ptr() != eng._last_frames.data_ptr()
        assert torch.equal(seen["frames"], eng._last_frames[-1:])
        assert cond.embeds.data_ptr() != seen["out"][0].data_ptr()
        assert torch.equal(cond.embeds, seen["out"][0]) and torch.equal(cond.mask, seen["out"][1])


def test_frame_loop_never_waits_for_the_encoder_on_the_copy_path(tiny_bundle, monkeypatch):
    monkeypatch.setattr(ConditioningWorker, "always_transfer", True)
    with StreamEngine(tiny_bundle, Params().replace(prompt="oil painting"), size=SIZE, encoder_image_size=64,
                      encoder_device="cpu") as eng:
        img = frame(9)
        eng.step([img], [0])  # the first conditioning is in place
        real, started, slow = eng.encoder.encode, threading.Event(), 3.0  # long: a loaded CI machine steps slowly

        def slow_encode(tokens, frames):
            started.set()
            time.sleep(slow)
            return real(tokens, frames)

        monkeypatch.setattr(eng.encoder, "encode", slow_encode)
        eng.set_params(prompt="watercolour")
        t0 = last = time.perf_counter()
        assert started.wait(5)
        delivered, gaps, prompts = 0, [], []
        while time.perf_counter() - t0 < slow * 0.8:
            prompts.append(eng.step([img], [delivered])[0].prompt)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            delivered += 1
        assert delivered >= 4 and max(gaps) < slow / 2, (delivered, max(gaps))  # a wait would be a 3 s gap
        assert set(prompts) == {"oil painting"}
        deadline = time.monotonic() + 10
        while eng.step([img], [0])[0].prompt != "watercolour":
            assert time.monotonic() < deadline


def test_an_engine_places_its_encoder_where_asked(tiny_bundle):
    with StreamEngine(tiny_bundle, Params(), size=SIZE, encoder_image_size=64, encoder_device="cpu") as eng:
        assert eng.encoder_device == torch.device("cpu") and eng.encoder.device == torch.device("cpu")
        assert not eng.worker.transfer  # the same device: no copies


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_match_one(tiny_bundle):
    params = Params().replace(prompt="oil painting", batch_size=2, refresh="every-batch")
    batches = [[frame(2 * k), frame(2 * k + 1)] for k in range(3)]
    changes = {1: {"prompt": "neon city"}}
    common = dict(device="cuda:0", dtype=torch.float32, compile="graphs")
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the same arithmetic on both
    try:
        one = _run(tiny_bundle, params, batches, changes, **common)
        two = _run(tiny_bundle, params, batches, changes, encoder_device="cuda:1", **common)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    for a, b in zip(one, two):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
