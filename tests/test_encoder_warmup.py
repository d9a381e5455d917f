"""The warm-up primes every encoder shape a show will use (a prompt-length bucket at each batch the
worker sends), so no prompt compiles or captures after "running": on a GPU that first use takes
seconds on the worker thread, holding the GIL, and the frame loop would stall.

On the CPU nothing compiles, so these tests stand a spy in for the encoder's `CapturedCalls` (the
per-shape CUDA graphs): it runs the same forward and records each new input shape as a capture.
`tests/test_cuda.py::test_warmup_captures_every_bucket_so_no_prompt_captures_later` checks the
real graphs on a GPU.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from node_server.engine.dreamlite.engine import StreamEngine
from node_server.engine.dreamlite.graphs import CapturedCalls
from node_server.engine.params import Params

SIZE = 64


class CaptureSpy:
    """Stands in for `CapturedCalls`: the same call, each new input shape counted as a capture."""

    def __init__(self, fn):
        self.fn = fn
        self.keys: list[tuple] = []

    def __call__(self, *args):
        key = CapturedCalls.key(args)
        if key not in self.keys:
            self.keys.append(key)
        return self.fn(*args)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """(batch, tokens run) of each capture, in order."""
        return [(key[0][0][0], key[1][0][1]) for key in self.keys]


def spied(engine: StreamEngine) -> CaptureSpy:
    spy = CaptureSpy(engine.encoder._device_forward)
    engine.encoder.graphed = spy  # `encode` replays through it, as through the real graphs
    assert engine.encoder.shape_bound
    return spy


def run_length(engine: StreamEngine, bucket: int) -> int:
    """Tokens an encode of `bucket` runs (after the cached system prefix)."""
    return engine.encoder.base_length + bucket - engine.encoder.prefix_length


def prompt_in(engine: StreamEngine, bucket: int) -> str:
    """A prompt whose tokens fall in `bucket`."""
    enc = engine.encoder
    for words in range(1, 200):
        prompt = " ".join(f"w{k}" for k in range(words))
        if enc.tokenize(prompt).run_length == enc.base_length + bucket:
            return prompt
    raise AssertionError(f"no prompt found for bucket {bucket}")


def settle(engine: StreamEngine, frames: list, prompt: str) -> None:
    deadline = time.monotonic() + 60
    while engine.step(frames, list(range(len(frames))))[0].prompt != prompt:
        assert time.monotonic() < deadline, prompt


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


def test_warmup_runs_every_bucket_and_a_new_length_captures_nothing_later(tiny_bundle):
    with StreamEngine(tiny_bundle, Params().replace(prompt="ink"), size=SIZE, encoder_image_size=64,
                      device="cpu", progress=False) as eng:
        spy = spied(eng)
        buckets = eng.encoder.buckets
        assert len(buckets) == 4
        eng.warmup(progress=False)
        assert sorted(spy.shapes) == sorted((1, run_length(eng, b)) for b in buckets)
        assert eng.encode_count == 1  # the probes are not encodes anyone asked for ...
        assert eng.worker.latest().prompt == "ink" and eng.worker.cached("") is None  # ... nor shown or kept
        captured = len(spy.keys)
        img = [frame(0)]
        for bucket in buckets:  # a prompt of every length after "running": replays only
            prompt = prompt_in(eng, bucket)
            eng.set_params(prompt=prompt)
            settle(eng, img, prompt)
        assert len(spy.keys) == captured, spy.shapes[captured:]
        assert eng.encode_count == 1 + len(buckets)


def test_a_live_switch_to_every_batch_captures_nothing(tiny_bundle):
    """`/refresh every-batch` may come mid-show: the batch size is primed under on-change too."""
    params = Params().replace(prompt="ink", batch_size=2)
    with StreamEngine(tiny_bundle, params, size=SIZE, encoder_image_size=64, device="cpu", progress=False) as eng:
        spy = spied(eng)
        eng.warmup(progress=False)
        want = {(n, run_length(eng, b)) for b in eng.encoder.buckets for n in (1, 2)}
        assert set(spy.shapes) == want and len(spy.keys) == len(want)
        prompt = prompt_in(eng, eng.encoder.buckets[2])
        eng.set_params(refresh="every-batch", prompt=prompt)
        settle(eng, [frame(0), frame(1)], prompt)
        eng.step([frame(2)], [2])
        assert set(spy.shapes) == want


def test_every_batch_primes_the_batch_and_pads_a_short_one(tiny_bundle):
    """Under every-batch the worker sends the batch's frames: the warm-up primes that batch in
    every bucket, and a short batch is padded to it, so neither a new length nor a short batch
    captures during the show."""
    params = Params().replace(prompt="ink", batch_size=3, refresh="every-batch")
    with StreamEngine(tiny_bundle, params, size=SIZE, encoder_image_size=64, device="cpu", progress=False) as eng:
        spy = spied(eng)
        eng.warmup(progress=False)
        want = {(n, run_length(eng, b)) for b in eng.encoder.buckets for n in (1, 3)}
        assert set(spy.shapes) == want and len(spy.keys) == len(want)
        prompt = prompt_in(eng, eng.encoder.buckets[-1])
        eng.set_params(prompt=prompt)
        settle(eng, [frame(1)], prompt)  # one frame of a batch of three
        for n in (1, 2, 3, 1):
            eng.step([frame(k) for k in range(n)], list(range(n)))
        eng.set_params(refresh="on-change", prompt=prompt_in(eng, eng.encoder.buckets[1]))
        settle(eng, [frame(2), frame(3)], eng.params.prompt)
        assert set(spy.shapes) == want, sorted(set(spy.shapes) - want)


def test_on_the_cpu_the_warmup_encodes_once(tiny_bundle, monkeypatch):
    """The eager forward has nothing to compile: the warm-up adds no encode there."""
    with StreamEngine(tiny_bundle, Params().replace(prompt="ink", batch_size=2, refresh="every-batch"),
                      size=SIZE, encoder_image_size=64, device="cpu", progress=False) as eng:
        assert not eng.encoder.shape_bound
        calls = []
        real = eng.encoder.encode
        monkeypatch.setattr(eng.encoder, "encode", lambda tokens, frames: calls.append(frames.shape[0]) or
                            real(tokens, frames))
        eng.warmup(progress=False)
        assert calls == [2]  # the warm-up batch's own conditioning, nothing more
        eng.step([frame(0)], [0])  # and a short batch is not padded where nothing compiles
        deadline = time.monotonic() + 30
        while len(calls) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert calls[1] == 1


def test_a_failed_probe_is_reported_and_the_show_goes_on(tiny_bundle, caplog):
    with StreamEngine(tiny_bundle, Params().replace(prompt="ink"), size=SIZE, encoder_image_size=64,
                      device="cpu", progress=False) as eng:
        spy = spied(eng)
        real = spy.fn

        def fails_for_long(*args):
            if args[1].shape[1] > run_length(eng, eng.encoder.buckets[0]):
                raise RuntimeError("out of memory (a test)")
            return real(*args)

        spy.fn = fails_for_long
        with caplog.at_level("WARNING", logger="node_server.engine"):
            eng.warmup(progress=False)
        assert "priming the encoder's buckets failed (RuntimeError: out of memory (a test))" in caplog.text
        assert eng.worker.pop_error() is None  # not an encode failure of the show
        spy.fn = real
        out = eng.step([frame(0)], [0])[0]
        assert out.prompt == "ink"


def test_warm_jobs_wait_behind_a_real_request_and_close_releases_waiters(tiny_bundle):
    from node_server.engine.conditioning import ConditioningWorker
    from node_server.engine.dreamlite.encoder import PromptEncoder
    from node_server.engine.streams import Streams

    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    gate = threading.Event()
    order = []
    real = enc.encode

    def encode(tokens, frames):
        gate.wait(10)
        order.append(tokens.run_length)
        return real(tokens, frames)

    enc.encode = encode
    worker = ConditioningWorker(enc, Streams(torch.device("cpu")))
    try:
        frames = torch.rand(1, 3, SIZE, SIZE)
        probes = enc.bucket_probes()
        worker.request(enc.tokenize("ink"), frames, cache=True)  # taken first by the thread
        done = []
        waiter = threading.Thread(target=lambda: done.append(worker.warm([(p, frames) for p in probes])))
        waiter.start()
        time.sleep(0.1)
        assert not done  # still waiting on the gate
        gate.set()
        waiter.join(30)
        assert done == [[]]
        assert order == [enc.tokenize("ink").run_length] + [p.run_length for p in probes]
        assert worker.encode_count == 1 and worker.latest().prompt == "ink"
    finally:
        worker.close()
    assert worker.warm([(probes[0], frames)]) == []  # closed: returns at once


@pytest.mark.parametrize("bucket", [0, 1, 2, 3])
def test_a_probe_has_the_shapes_of_every_prompt_of_its_bucket(tiny_bundle, bucket):
    """What makes priming with the empty prompt valid: the token tensors an encode slices have
    the same shapes as a real prompt's of that bucket."""
    from node_server.engine.dreamlite.encoder import PromptEncoder

    enc = PromptEncoder(tiny_bundle, torch.device("cpu"), torch.float32, image_size=64)
    probe = enc.bucket_probes()[bucket]
    engine_like = type("E", (), {"encoder": enc})
    real = enc.tokenize(prompt_in(engine_like, enc.buckets[bucket]))
    assert probe.run_length == real.run_length
    start, stop = enc.prefix_length, probe.run_length
    for a, b in zip(enc._token_inputs(probe, start, stop), enc._token_inputs(real, start, stop)):
        assert a.shape == b.shape and a.dtype == b.dtype
