"""ControlNet-LLLite in the U-Net's module tree: equal to a plain eager LLLite, one graph with no
breaks, no recompiles on strength or conditioning changes, kohya file names, block subsets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from lllite_reference import ReferenceLLLite
from node_server.engine.denoiser import Denoiser
from node_server.engine.lllite import LLLite, LLLiteProjection
from node_server.errors import ModelLoadError, ParamError
from node_server.models.lllite_file import module_names, read_lllite, synth_hooks, write_lllite

H = W = 64  # frame size; the edit U-Net's input stands for H x 2W


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


def cond_image(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, H, 2 * W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_in_tree_lllite_equals_the_eager_reference(den, compiled):
    hooks = synth_hooks(den.unet, blocks="all", up_std=0.1)
    inputs, image = step_inputs(), cond_image()
    plain = call(den, den.unet_step, inputs)

    ref = ReferenceLLLite(den.unet, hooks, image, multiplier=0.7)
    expected = call(den, den.unet_step, inputs)
    ref.remove()
    assert (expected - plain).abs().mean() > 1e-2, "the adapter must change the step for this test to mean anything"

    adapter = LLLite(den.unet, hooks, (H, 2 * W), max_rows=4)
    adapter.refresh(image)
    adapter.set_strength(0.7)
    fn = torch.compile(den.unet_step, backend="aot_eager", fullgraph=True) if compiled else den.unet_step
    got = call(den, fn, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    adapter.detach()
    torch.testing.assert_close(call(den, den.unet_step, inputs), plain, rtol=0, atol=0)


def test_unet_plus_adapter_is_one_graph_with_no_breaks(den):
    hooks = synth_hooks(den.unet, blocks="all")
    adapter = LLLite(den.unet, hooks, (H, 2 * W), max_rows=4)
    adapter.refresh(cond_image())
    lat, src, emb, mask = step_inputs()
    explained = torch._dynamo.explain(den.unet_step)(
        lat, src, emb, mask, den.time_ids(2, "cpu"), torch.tensor(700.0), torch.tensor(-0.7))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    assert len(adapter.modules) == len(hooks) > 0


def test_strength_and_refresh_change_the_output_without_recompiling(den):
    adapter = LLLite(den.unet, synth_hooks(den.unet, blocks="all", up_std=0.1), (H, 2 * W), max_rows=4)
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
    adapter = LLLite(den.unet, synth_hooks(den.unet, blocks="down"), (H, 2 * W), max_rows=4)
    image = cond_image(n=4)
    adapter.refresh(image)
    lat, src, emb, mask = step_inputs(n=4)
    four = call(den, den.unet_step, (lat, src, emb, mask))
    two = call(den, den.unet_step, (lat[:2], src[:2], emb[:2], mask[:2]))
    torch.testing.assert_close(two, four[:2], rtol=1e-4, atol=1e-5)


def test_blocks_subset_hooks_only_those_blocks(den):
    hooks = synth_hooks(den.unet, blocks="all")
    assert {h.group for h in hooks} == {"down", "mid", "up"}
    adapter = LLLite(den.unet, hooks, (H, 2 * W), max_rows=2, blocks="down")
    hooked = [p for p, m in den.unet.named_modules() if isinstance(m, LLLiteProjection)]
    assert hooked and all(p.startswith("down_blocks.") for p in hooked)
    assert sorted(hooked) == sorted(h.path for h in hooks if h.group == "down")
    adapter.detach()
    with pytest.raises(ParamError, match="hooks none"):
        LLLite(den.unet, [h for h in hooks if h.group == "down"], (H, 2 * W), max_rows=2, blocks="up")
    with pytest.raises(ParamError, match="lllite_blocks"):
        LLLite(den.unet, hooks, (H, 2 * W), max_rows=2, blocks="middle")


def test_file_round_trip_and_errors(den, tmp_path, tiny_bundle):
    hooks = synth_hooks(den.unet, blocks="down,mid", seed=3)
    path = write_lllite(tmp_path / "a.safetensors", hooks)
    back = read_lllite(path, den.unet)
    assert [h.path for h in back] == sorted(h.path for h in hooks)
    by_name = {h.name: h for h in hooks}
    for h in back:
        for k, v in h.tensors.items():
            assert torch.equal(v, by_name[h.name].tensors[k])

    with pytest.raises(ModelLoadError, match="not found"):
        read_lllite(tmp_path / "missing.safetensors", den.unet)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="readable"):
        read_lllite(junk, den.unet)

    from node_server.models import build_synthetic_sd

    sd_unet = build_synthetic_sd("sd-turbo-tiny", seed=0).unet
    foreign = write_lllite(tmp_path / "sd.safetensors", synth_hooks(sd_unet, ldm_names=True))
    with pytest.raises(ModelLoadError, match="another model"):
        read_lllite(foreign, den.unet)

    wrong = copy.copy(hooks[0])  # a level-0 hook given a depth-2 conditioning CNN
    wrong.tensors = dict(hooks[0].tensors, **{"conditioning1.2.weight": torch.zeros(32, 16, 4, 4)})
    with pytest.raises(ParamError, match="depth"):
        LLLite(den.unet, [wrong], (H, 2 * W), max_rows=2)


def test_kohya_ldm_names_resolve_to_the_diffusers_modules():
    """kohya's SD files name modules by the original LDM layout; the SD 1.5 U-Net's known pairs."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel()  # the library defaults are SD 1.5's layout
    names = module_names(unet)
    pairs = {
        "input_blocks_1_1_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "input_blocks_2_1_transformer_blocks_0_attn1_to_k": "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_k",
        "input_blocks_4_1_transformer_blocks_0_attn2_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q",
        "input_blocks_8_1_transformer_blocks_0_attn1_to_v": "down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_v",
        "middle_block_1_transformer_blocks_0_attn1_to_q": "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
        "output_blocks_3_1_transformer_blocks_0_attn1_to_q": "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "output_blocks_11_1_transformer_blocks_0_attn2_to_q": "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_q",
    }
    for ldm, path in pairs.items():
        assert names["lllite_unet_" + ldm] == path
    assert names["lllite_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_q"] == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q"
    with torch.device("meta"):  # per-block layer counts: no LDM numbering, diffusers names only
        per_block = UNet2DConditionModel(layers_per_block=[2, 2, 2, 2])
    names = module_names(per_block)
    assert not any(n.startswith("lllite_unet_input_blocks_") for n in names)
    assert "lllite_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names


def test_sd_engine_runs_a_kohya_named_adapter(tmp_path):
    from node_server.engine.sd_engine import SDStreamEngine
    from node_server.models import build_synthetic_sd

    bundle = build_synthetic_sd("sd-turbo-tiny", seed=0)
    hooks = synth_hooks(bundle.unet, blocks="down,mid", ldm_names=True, up_std=0.2)
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
    the previous batch's last output warped (by flow between the input frames) toward each frame."""
    from node_server.engine.engine import StreamEngine
    from node_server.engine.frames import to_device_batch
    from node_server.engine.lllite_runner import _flow_for

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
    image = torch.cat([warped, x], dim=3) * 2 - 1
    torch.testing.assert_close(snapshots[3], module.embed(image), rtol=1e-4, atol=1e-5)
    # ... and it is not what the frame itself (the first batch's source) would give
    plain = module.embed(torch.cat([x, x], dim=3) * 2 - 1)
    assert (snapshots[3] - plain).abs().max() > 1e-3
    engine.close()
    assert not any(isinstance(m, LLLiteProjection) for m in bundle.unet.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_cuda_compiled_graph_with_adapter_equals_eager(tiny_bundle):
    """On a GPU: the compiled, graph-captured engine with a temporal adapter gives the eager
    engine's frames, through strength changes and refreshes, without a second capture."""
    from node_server.engine.engine import StreamEngine

    hooks = synth_hooks(tiny_bundle.unet, blocks="down,mid", up_std=0.1)
    results = {}
    for mode in ("off", "default"):
        bundle = copy.copy(tiny_bundle)
        bundle.unet = copy.deepcopy(tiny_bundle.unet).cuda()
        bundle.vae = copy.deepcopy(tiny_bundle.vae).cuda()
        bundle.text_encoder = copy.deepcopy(tiny_bundle.text_encoder).cuda()
        engine = StreamEngine(bundle, size=H, device="cuda", dtype=torch.float32, compile=mode, progress=False,
                              lllite=hooks, lllite_source="temporal")
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
    from node_server.engine.lllite_runner import LLLiteRunner

    adapter = LLLite(den.unet, synth_hooks(den.unet, blocks="down"), (H, 2 * W), max_rows=4)
    counter = CompileCounter()
    runner = LLLiteRunner(adapter, (H, W), edit_layout=True, source="temporal", compile=counter)
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
    from node_server.engine.engine import StreamEngine
    from node_server.engine.lllite_runner import LLLiteRunner

    bundle = copy.copy(tiny_bundle)
    bundle.unet = copy.deepcopy(tiny_bundle.unet)
    engine = StreamEngine(bundle, size=H, progress=False, lllite=synth_hooks(bundle.unet, blocks="down"))
    engine.set_params(prompt="a cat", batch_size=2, lllite_refresh=2)
    counter = CompileCounter()
    engine.lllite = LLLiteRunner(engine.lllite.lllite, (H, W), edit_layout=True, compile=counter)
    engine.warmup(progress=False)
    compiled = counter.frame_count
    for b in range(6):
        engine.step(_engine_frames(2, seed=b), [2 * b, 2 * b + 1])
    assert engine.lllite.refreshes >= 4
    assert counter.frame_count == compiled, "a live refresh compiled again"
    engine.close()
