"""ControlNet-LLLite in the U-Net's module tree: equal to dreamlite-lllite's forward (an independent
eager re-implementation, tests/lllite_reference.py) and to kohya's for SD, one graph with no breaks,
no recompiles on strength or conditioning changes, the edit layout, block subsets, the runner."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from lllite_reference import ReferenceLLLite, UpstreamController, save_like_upstream
from node_server.engine.dreamlite.denoiser import Denoiser
from node_server.engine.lllite.adapter import LLLite, LLLiteProjection
from node_server.errors import ParamError
from node_server.models.lllite_file import read_lllite, synth_hooks, write_lllite

H = W = 64  # frame size; the edit U-Net's input is H x 2W latents' worth


@pytest.fixture()
def den(tiny_bundle):
    """A denoiser over a private copy of the tiny U-Net (tests attach adapters to it)."""
    unet = copy.deepcopy(tiny_bundle.unet)
    return Denoiser(unet, tiny_bundle.vae, (H, W), torch.float32)


def step_inputs(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, 4, H // 8, W // 8, generator=g)
    src = torch.randn(n, 4, H // 8, W // 8, generator=g)
    emb = torch.randn(n, 8, 64, generator=g)
    mask = torch.ones(n, 8, dtype=torch.bool)
    mask[:, 6:] = False
    return lat, src, emb, mask


def call(den, fn, inputs):
    lat, src, emb, mask = inputs
    with torch.no_grad():
        return fn(lat, src, emb, mask, den.time_ids(lat.shape[0], "cpu"), torch.tensor(700.0), torch.tensor(-0.7))


def cond_image(n: int = 2, seed: int = 1, size: int = H) -> torch.Tensor:
    """A square conditioning image in [-1, 1] (dreamlite-lllite's `set_cond_image` input)."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def upstream_file(unet, path, seed: int = 0, up_std: float = 0.05, **kw):
    """A file exactly as dreamlite-lllite saves one, from the reference controller (not attached)."""
    ctrl = UpstreamController(unet, cond_image_size=H, sample_size=H // 8, **kw).randomize(seed, up_std)
    save_like_upstream(ctrl, path)
    return ctrl


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_in_tree_lllite_equals_the_upstream_forward(den, tmp_path, compiled):
    ctrl = upstream_file(den.unet, tmp_path / "a.safetensors")
    inputs, image = step_inputs(), cond_image()
    plain = call(den, den.unet_step, inputs)

    ctrl.set_cond_image(image)
    ctrl.set_multiplier(0.7)
    ctrl.attach()
    with torch.no_grad():
        expected = call(den, den.unet_step, inputs)
    ctrl.remove()
    assert (expected - plain).abs().mean() > 1e-2, "the adapter must change the step for this test to mean anything"

    hooks = read_lllite(tmp_path / "a.safetensors", den.unet)
    assert len(hooks) == len(ctrl.modules_dict) == 19  # every target of the tiny U-Net
    adapter = LLLite(den.unet, hooks, (H, W), edit_layout=True, max_rows=4)
    adapter.refresh(image)
    adapter.set_strength(0.7)
    fn = torch.compile(den.unet_step, backend="aot_eager", fullgraph=True) if compiled else den.unet_step
    got = call(den, fn, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    adapter.detach()
    torch.testing.assert_close(call(den, den.unet_step, inputs), plain, rtol=0, atol=0)


def test_the_embedding_covers_the_target_half_and_is_zero_on_the_source_half(den):
    hooks = synth_hooks(den.unet, blocks="all")
    adapter = LLLite(den.unet, hooks, (H, W), edit_layout=True, max_rows=2)
    image = cond_image()
    adapter.refresh(image)
    for m in adapter.modules:
        level = 0 if m.path.startswith("down_blocks.0.") or m.path.startswith("up_blocks.1.") else 1
        h = H // (8 * 2 ** level)
        grid = m.emb[:2].view(2, h, 2 * h, -1)  # rows of target then source tokens
        assert torch.count_nonzero(grid[:, :, h:]) == 0, m.path
        want = m.conditioning1(image).permute(0, 2, 3, 1)  # [n, h, w, c]
        torch.testing.assert_close(grid[:, :, :h], want)
        assert torch.count_nonzero(grid[:, :, :h]) > 0


def test_unet_plus_adapter_is_one_graph_with_no_breaks(den):
    hooks = synth_hooks(den.unet, blocks="all")
    adapter = LLLite(den.unet, hooks, (H, W), edit_layout=True, max_rows=4)
    adapter.refresh(cond_image())
    lat, src, emb, mask = step_inputs()
    explained = torch._dynamo.explain(den.unet_step)(
        lat, src, emb, mask, den.time_ids(2, "cpu"), torch.tensor(700.0), torch.tensor(-0.7))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    assert len(adapter.modules) == len(hooks) > 0


def test_strength_and_refresh_change_the_output_without_recompiling(den):
    adapter = LLLite(den.unet, synth_hooks(den.unet, blocks="all", up_std=0.1), (H, W), edit_layout=True, max_rows=4)
    counter = CompileCounter()
    compiled = torch.compile(den.unet_step, backend=counter, fullgraph=True)
    inputs = step_inputs()
    outs = []
    adapter.refresh(cond_image(seed=1))
    outs.append(call(den, compiled, inputs))
    adapter.set_strength(0.25)
    outs.append(call(den, compiled, inputs))
    adapter.refresh(cond_image(seed=2))
    outs.append(call(den, compiled, inputs))
    assert counter.frame_count == 1, "a strength or conditioning change recompiled the U-Net"
    for a, b in zip(outs, outs[1:]):
        assert (a - b).abs().max() > 1e-4, "the compiled graph did not read the new buffer contents"
    torch.testing.assert_close(outs[-1], call(den, den.unet_step, inputs), rtol=1e-4, atol=1e-5)


def test_a_batch_reads_the_first_rows_of_the_buffers(den):
    adapter = LLLite(den.unet, synth_hooks(den.unet, blocks="down"), (H, W), edit_layout=True, max_rows=4)
    adapter.refresh(cond_image(n=4))
    lat, src, emb, mask = step_inputs(n=4)
    four = call(den, den.unet_step, (lat, src, emb, mask))
    two = call(den, den.unet_step, (lat[:2], src[:2], emb[:2], mask[:2]))
    torch.testing.assert_close(two, four[:2], rtol=1e-4, atol=1e-5)


def test_blocks_subset_hooks_only_those_blocks(den):
    hooks = synth_hooks(den.unet, blocks="all")
    assert {h.group for h in hooks} == {"down", "mid", "up"}
    for spelling in ("down", "down_blocks"):  # ours, and the paper runtime's --lllite_blocks value
        adapter = LLLite(den.unet, hooks, (H, W), edit_layout=True, max_rows=2, blocks=spelling)
        hooked = [p for p, m in den.unet.named_modules() if isinstance(m, LLLiteProjection)]
        assert sorted(hooked) == sorted(h.path for h in hooks if h.group == "down") and hooked
        adapter.detach()
    with pytest.raises(ParamError, match="hooks none"):
        LLLite(den.unet, [h for h in hooks if h.group == "down"], (H, W), edit_layout=True, max_rows=2, blocks="up")
    with pytest.raises(ParamError, match="lllite_blocks"):
        LLLite(den.unet, hooks, (H, W), edit_layout=True, max_rows=2, blocks="middle")


def test_each_format_only_on_its_own_u_net(den, tmp_path):
    from node_server.models import build_synthetic_sd

    kohya = synth_hooks(den.unet, fmt="kohya")
    with pytest.raises(ParamError, match="kohya-format .* for SD-class"):
        LLLite(den.unet, kohya, (H, W), edit_layout=True, max_rows=2)
    sd_unet = build_synthetic_sd("sd-turbo-tiny", seed=0).unet
    dreamlite = synth_hooks(sd_unet, fmt="dreamlite")
    with pytest.raises(ParamError, match="dreamlite-lllite .* DreamLite edit U-Net"):
        LLLite(sd_unet, dreamlite, (H, W), edit_layout=False, max_rows=2)
    assert not any(isinstance(m, LLLiteProjection) for m in den.unet.modules())


def test_kohya_adapter_on_sd_equals_kohya_forward(tmp_path):
    """kohya's layout stays for SD-class U-Nets: the CNN sees the frame, no padding."""
    from node_server.models import build_synthetic_sd

    unet = build_synthetic_sd("sd-turbo-tiny", seed=0).unet
    hooks = read_lllite(write_lllite(tmp_path / "k.safetensors", synth_hooks(unet, up_std=0.2)), unet)
    assert all(h.fmt == "kohya" and h.name.startswith(("lllite_unet_input_blocks_", "lllite_unet_middle_block_",
                                                       "lllite_unet_output_blocks_")) for h in hooks)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 64, generator=g)
    image = cond_image()

    def run():
        with torch.no_grad():
            return unet(x, torch.tensor(500.0), encoder_hidden_states=text, return_dict=False)[0]

    plain = run()
    ref = ReferenceLLLite(unet, hooks, image)
    expected = run()
    ref.remove()
    assert (expected - plain).abs().mean() > 1e-3
    adapter = LLLite(unet, hooks, (H, W), edit_layout=False, max_rows=2)
    adapter.refresh(image)
    torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-5)
    adapter.detach()


def test_sd_engine_runs_a_kohya_named_adapter(tmp_path):
    from node_server.engine.sd.engine import SDStreamEngine
    from node_server.models import build_synthetic_sd

    bundle = build_synthetic_sd("sd-turbo-tiny", seed=0)
    hooks = synth_hooks(bundle.unet, blocks="down,mid", up_std=0.2)
    assert all(h.name.startswith(("lllite_unet_input_blocks_", "lllite_unet_middle_block_")) for h in hooks)
    path = write_lllite(tmp_path / "sd.safetensors", hooks)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]

    def render(params=None, **options):
        with SDStreamEngine(bundle, size=64, progress=False, **options) as engine:
            engine.set_params(prompt="a cat", batch_size=2, **(params or {}))
            return [o.image.astype(int) for o in engine.step(frames, [0, 1])]

    plain = render()
    adapted = render(lllite=path, lllite_source="frame")
    off = render(lllite=path, lllite_source="frame", params={"lllite_strength": 0.0})
    assert np.abs(adapted[0] - plain[0]).mean() > 0.5
    assert all(np.array_equal(a, b) for a, b in zip(off, plain))
    assert not any(isinstance(m, LLLiteProjection) for m in bundle.unet.modules()), "close() must detach"


def _engine_frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def test_temporal_refresh_runs_every_n_batches_on_the_warped_previous_output(tiny_bundle):
    """Refresh on batches 0, 3, 6; buffers untouched in between; a refresh's conditioning image is
    the previous batch's last output warped (by flow between the input frames) toward each frame,
    alone (the source half of the embedding stays zero)."""
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.engine.frames import to_device_batch
    from node_server.engine.lllite.runner import _flow_for

    bundle = copy.copy(tiny_bundle)
    bundle.unet = copy.deepcopy(tiny_bundle.unet)
    hooks = synth_hooks(bundle.unet, blocks="down", up_std=0.1)
    engine = StreamEngine(bundle, size=H, progress=False, lllite=hooks, lllite_source="temporal")
    engine.set_params(prompt="a cat", batch_size=2, lllite_refresh=3)
    runner = engine.lllite
    module = runner.lllite.modules[0]
    snapshots, outputs, inputs = [], [], []
    for b in range(7):
        frames = _engine_frames(2, seed=b)
        outs = engine.step(frames, [2 * b, 2 * b + 1])
        inputs.append(frames)
        outputs.append([o.image for o in outs])
        snapshots.append(module.emb[:2].clone())
    assert runner.refreshes == 3
    for b in range(1, 7):
        same = torch.equal(snapshots[b], snapshots[b - 1])
        assert same == (b % 3 != 0), f"batch {b}: buffers {'unchanged' if same else 'changed'}"

    # batch 3's conditioning, computed independently from what the engine returned
    x = to_device_batch(inputs[3], (H, W), "cpu")
    prev_in = to_device_batch(inputs[2][-1:], (H, W), "cpu")
    prev_out = torch.from_numpy(outputs[2][-1]).permute(2, 0, 1)[None].float() / 255
    warped = _flow_for((H, W))(x, prev_in, prev_out)
    torch.testing.assert_close(snapshots[3], module.embed(warped * 2 - 1), rtol=1e-4, atol=1e-5)
    # ... and it is not what the frame itself (the first batch's source) would give
    assert (snapshots[3] - module.embed(x * 2 - 1)).abs().max() > 1e-3
    engine.close()
    assert not any(isinstance(m, LLLiteProjection) for m in bundle.unet.modules())


def test_an_adapter_trained_at_another_conditioning_size_gets_its_own_size(den, tmp_path):
    """dreamlite-lllite lets `cond_image_size` differ from the frame (stride = size / block); the
    conditioning image is resized to stride x block grid, the only size its CNN maps onto the grid."""
    from node_server.engine.lllite.runner import LLLiteRunner

    ctrl = UpstreamController(den.unet, cond_image_size=2 * H, sample_size=H // 8).randomize(0)
    save_like_upstream(ctrl, tmp_path / "big.safetensors")
    hooks = read_lllite(tmp_path / "big.safetensors", den.unet)
    assert {h.stride for h in hooks} == {16, 32}
    adapter = LLLite(den.unet, hooks, (H, W), edit_layout=True, max_rows=2)
    assert adapter.cond_hw == (2 * H, 2 * W)
    runner = LLLiteRunner(adapter, (H, W), source="frame")
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        runner.before(x, 1.0, 1)
        big = torch.nn.functional.interpolate(x, size=(2 * H, 2 * W), mode="bilinear", align_corners=False)
        ctrl.set_cond_image(big * 2 - 1)
    for m in adapter.modules:
        torch.testing.assert_close(m.emb[:2], ctrl.modules_dict[m.name].cond_emb, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_cuda_compiled_graph_with_adapter_equals_eager(tiny_bundle, tmp_path):
    """On a GPU: the compiled, graph-captured engine with a dreamlite-lllite file (down blocks, as
    the paper runs it) gives the eager engine's frames, through strength changes and temporal
    refreshes, with one capture and no recompile."""
    from node_server.engine.dreamlite.engine import StreamEngine

    upstream_file(tiny_bundle.unet, tmp_path / "t.safetensors", up_std=0.1)
    results = {}
    for mode in ("off", "default"):
        bundle = copy.copy(tiny_bundle)
        bundle.unet = copy.deepcopy(tiny_bundle.unet).cuda()
        bundle.vae = copy.deepcopy(tiny_bundle.vae).cuda()
        bundle.text_encoder = copy.deepcopy(tiny_bundle.text_encoder).cuda()
        engine = StreamEngine(bundle, size=H, device="cuda", dtype=torch.float32, compile=mode, progress=False,
                              lllite=str(tmp_path / "t.safetensors"), lllite_blocks="down", lllite_source="temporal")
        assert len(engine.lllite.lllite.modules) == 5  # the tiny U-Net's down-block targets
        engine.set_params(prompt="a cat", batch_size=2, lllite_refresh=2)
        engine.warmup(progress=False)
        outs = []
        for b in range(6):
            if b == 3:
                engine.set_params(lllite_strength=0.3)
            outs.append(np.stack([o.image for o in engine.step(_engine_frames(2, seed=b), [2 * b, 2 * b + 1])]))
        if mode == "default":
            assert engine.graphed.captured == [(2, 1)]
        results[mode] = outs
        engine.close()
    for b, (eager, graphed) in enumerate(zip(results["off"], results["default"])):
        diff = np.abs(eager.astype(int) - graphed.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 8, f"batch {b}: mean {diff.mean():.3f} max {diff.max()}"


def test_warm_up_compiles_both_conditioning_paths_so_live_refreshes_never_compile(den):
    """A compile on a live refresh stalls the show (seconds); the warm-up must have done them all."""
    from node_server.engine.lllite.runner import LLLiteRunner

    adapter = LLLite(den.unet, synth_hooks(den.unet, blocks="down"), (H, W), edit_layout=True, max_rows=4)
    counter = CompileCounter()
    runner = LLLiteRunner(adapter, (H, W), source="temporal", compile=counter)
    with torch.enable_grad():  # the warm-up runs outside the engine step's no_grad
        runner.compile_ahead(2)
    assert counter.frame_count == 2  # the first-batch path and the temporal path
    for b in range(5):
        # frames as the ingest makes them: an NHWC upload seen as NCHW (channels-last strides)
        x = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(b)).permute(0, 3, 1, 2)
        out = (torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(10 + b)) * 255).to(torch.uint8)
        with torch.no_grad():  # as in the engine's step
            runner.before(x, 1.0, 2)
            runner.after(x, out, 2)
    assert runner.refreshes == 3
    assert counter.frame_count == 2, "a live refresh compiled again"


def test_engine_warm_up_leaves_no_compile_for_live_refreshes(tiny_bundle):
    """The same through the engine's own warm-up and steps (its ingest layout and grad mode)."""
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.engine.lllite.runner import LLLiteRunner

    bundle = copy.copy(tiny_bundle)
    bundle.unet = copy.deepcopy(tiny_bundle.unet)
    engine = StreamEngine(bundle, size=H, progress=False, lllite=synth_hooks(bundle.unet, blocks="down"))
    engine.set_params(prompt="a cat", batch_size=2, lllite_refresh=2)
    counter = CompileCounter()
    engine.lllite = LLLiteRunner(engine.lllite.lllite, (H, W), compile=counter)
    engine.warmup(progress=False)
    compiled = counter.frame_count
    for b in range(6):
        engine.step(_engine_frames(2, seed=b), [2 * b, 2 * b + 1])
    assert engine.lllite.refreshes >= 4
    assert counter.frame_count == compiled, "a live refresh compiled again"
    engine.close()
