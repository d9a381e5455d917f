"""Building (running, closing) an engine never changes the model bundle it was given.

The engine works on its own views of the bundle's modules (engine/module_view.py): its attention
processors, LLLite projections and any move or cast land there. Weights it does not convert are
shared with the bundle, not copied.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from node_server.engine.dreamlite import attention
from node_server.engine.dreamlite.attention import AlignedHeadAttnProcessor
from node_server.engine.module_view import module_view
from node_server.engine.params import Params


def _snapshot(bundle) -> dict:
    """Everything about the bundle's modules an engine could change: the module tree (objects and
    types), attention processors, hooks, modes, and every parameter and buffer (object, storage,
    device, dtype, layout and value)."""
    snap = {}
    for component, module in bundle.modules().items():
        tree = []
        for name, sub in module.named_modules():
            processor = getattr(sub, "processor", None)
            tree.append((name, id(sub), type(sub).__name__, type(processor).__name__, id(processor),
                         len(sub._forward_hooks), len(sub._forward_pre_hooks), sub.training))
        tensors = {}
        for name, t in list(module.named_parameters(remove_duplicate=False)) + list(
                module.named_buffers(remove_duplicate=False)):
            tensors[name] = (id(t), t.data_ptr(), t.device, t.dtype, t.stride(), t.requires_grad, t.detach().clone())
        snap[component] = (tree, tensors)
    return snap


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for component in before:
        tree0, tensors0 = before[component]
        tree1, tensors1 = after[component]
        assert tree0 == tree1, f"{component}: module tree or processors changed"
        assert tensors0.keys() == tensors1.keys(), f"{component}: parameters or buffers added or removed"
        for name, a in tensors0.items():
            b = tensors1[name]
            assert a[:6] == b[:6], f"{component}.{name} was moved, cast, replaced or re-laid out"
            assert torch.equal(a[6], b[6]), f"{component}.{name} changed value"


def _frames(n: int, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _storage(module) -> set[int]:
    return {p.data_ptr() for p in module.parameters()}


def test_dreamlite_engine_leaves_the_bundle_as_it_was(tiny_bundle, tmp_path, monkeypatch):
    """With padded heads (the GPU path, switched on for the CPU), an LLLite adapter spliced into
    the U-Net and a cast to another dtype: the bundle is untouched while the engine lives and after."""
    from node_server.engine.dreamlite.engine import StreamEngine
    from node_server.models.lllite_file import synth_hooks, write_lllite

    monkeypatch.setattr(attention, "PAD_ON_CPU", True)
    adapter = write_lllite(tmp_path / "a.safetensors", synth_hooks(tiny_bundle.unet, blocks="down"))
    before = _snapshot(tiny_bundle)
    params = Params().replace(prompt="oil painting", batch_size=2)
    with StreamEngine(tiny_bundle, params, size=64, encoder_image_size=64, lllite=adapter,
                      lllite_blocks="down", lllite_source="frame") as eng:
        eng.step(_frames(2), [0, 1])
        processors = [m.processor for m in eng.unet.modules() if hasattr(m, "processor")]
        padded = [p for p in processors if isinstance(p, AlignedHeadAttnProcessor)]
        assert padded and all(p.pad_on_cpu for p in padded)  # the engine's own view was changed
        assert eng.lllite is not None
        _assert_same(before, _snapshot(tiny_bundle))
        # nothing converted: the views hold the bundle's own weight storage (plus the adapter's), not a copy
        assert _storage(eng.unet) >= _storage(tiny_bundle.unet)
        assert _storage(eng.text_encoder) == _storage(tiny_bundle.text_encoder)
    _assert_same(before, _snapshot(tiny_bundle))

    with StreamEngine(tiny_bundle, Params().replace(prompt="ink"), size=64, encoder_image_size=64,
                      dtype=torch.bfloat16) as cast:
        assert next(cast.unet.parameters()).dtype == torch.bfloat16
        assert next(cast.text_encoder.parameters()).dtype == torch.bfloat16
        cast.step(_frames(1), [0])
    _assert_same(before, _snapshot(tiny_bundle))
    assert next(tiny_bundle.unet.parameters()).dtype == torch.float32


def test_sd_engine_leaves_the_bundle_as_it_was(tmp_path):
    from node_server.engine.sd.engine import SDStreamEngine
    from node_server.models import build_synthetic_sd
    from node_server.models.lllite_file import synth_hooks, write_lllite

    bundle = build_synthetic_sd("sd-turbo-tiny", seed=0)
    adapter = write_lllite(tmp_path / "sd.safetensors", synth_hooks(bundle.unet, blocks="down", ldm_names=True))
    before = _snapshot(bundle)
    with SDStreamEngine(bundle, Params().replace(prompt="a cat"), size=64, progress=False, lllite=adapter,
                        lllite_source="frame") as eng:
        eng.step(_frames(1), [0])
        _assert_same(before, _snapshot(bundle))
        assert _storage(eng.unet) >= _storage(bundle.unet)
    _assert_same(before, _snapshot(bundle))
    with SDStreamEngine(bundle, Params().replace(prompt="a dog"), size=64, progress=False,
                        dtype=torch.bfloat16) as cast:
        cast.step(_frames(1), [0])
    _assert_same(before, _snapshot(bundle))


def test_module_view_shares_storage_keeps_ties_and_converts_only_itself():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10), torch.nn.BatchNorm1d(10))
    net[1].weight = torch.nn.Parameter(torch.randn(10, 4))
    net[0].weight = net[1].weight  # tied, as Qwen's embeddings and output head are
    net.eval()
    view = module_view(net)
    assert view is not net and all(a is not b for a, b in zip(view.modules(), net.modules()))
    assert view[0].weight is view[1].weight  # the tie survives
    assert view[1].weight is not net[1].weight and view[1].weight.data_ptr() == net[1].weight.data_ptr()
    assert view[2].running_mean.data_ptr() == net[2].running_mean.data_ptr()
    view[2].register_forward_hook(lambda *a: None)
    assert not net[2]._forward_hooks
    cast = module_view(net, dtype=torch.float64)
    assert cast[1].weight.dtype == torch.float64 and cast[0].weight is cast[1].weight
    assert net[1].weight.dtype == torch.float32 and net[2].running_mean.dtype == torch.float32
    x = torch.tensor([[1, 2]])
    torch.testing.assert_close(cast(x.view(-1)).float(), net(x.view(-1)))
