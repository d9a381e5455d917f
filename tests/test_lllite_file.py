"""ControlNet-LLLite files: dreamlite-lllite's format as its own save path writes it, kohya's for SD,
the paper's hook counts on DreamLite-mobile's published U-Net layout, one clear line for every
bad file, and a property test of the loader (tools/fuzz_targets/lllite_file.py)."""

from __future__ import annotations

import copy
import importlib.util
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load, save, save_file

from bench.mobile_unet import DREAMLITE_MOBILE_UNET  # DreamLite-mobile's published U-Net layout
from lllite_reference import UpstreamController, save_like_upstream
from node_server.cli import main
from node_server.engine.lllite.adapter import LLLite, plan_hooks
from node_server.errors import ModelLoadError, NodeServerError, ParamError
from node_server.models.lllite_file import lllite_targets, parse_lllite, read_lllite, synth_hooks, write_lllite

H = 64
ROOT = Path(__file__).resolve().parent.parent

@pytest.fixture()
def unet(tiny_bundle):
    return copy.deepcopy(tiny_bundle.unet)


@pytest.fixture()
def upstream(unet, tmp_path):
    ctrl = UpstreamController(unet, cond_image_size=H, sample_size=H // 8).randomize(2)
    path = tmp_path / "lllite_canny_step000100.safetensors"
    save_like_upstream(ctrl, path, {"cond_type": "canny"})
    return ctrl, path


def test_a_file_saved_by_dreamlite_lllite_reads_back_tensor_for_tensor(unet, upstream):
    ctrl, path = upstream
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["cond_emb_dim"] == "32" and f.metadata()["mlp_dim"] == "64"
        assert all(k.startswith("modules_dict.") for k in f.keys())
    hooks = read_lllite(path, unet)
    assert [h.path for h in hooks] == list(lllite_targets(unet))  # every target, in the U-Net's order
    state = ctrl.state_dict()
    for h in hooks:
        assert h.fmt == "dreamlite" and h.name == h.path.replace(".", "__")
        for k, v in h.tensors.items():
            assert v.dtype == torch.float32 and torch.equal(v, state[f"modules_dict.{h.name}.{k}"])
        assert len(h.tensors) == sum(1 for k in state if k.startswith(f"modules_dict.{h.name}."))


def test_what_we_write_is_what_dreamlite_lllite_loads(unet, tmp_path):
    """Our writer's keys, shapes and dtypes are exactly the controller's state dict (what its
    `load_state_dict(strict=True)` requires), and its metadata keys are the training scripts'."""
    hooks = synth_hooks(unet, blocks="all")
    write_lllite(tmp_path / "ours.safetensors", hooks, {"cond_emb_dim": 32, "mlp_dim": 64, "step": 0})
    ctrl = UpstreamController(unet, cond_image_size=H, sample_size=H // 8)
    flat = load((tmp_path / "ours.safetensors").read_bytes())
    want = {k: (tuple(v.shape), v.dtype) for k, v in ctrl.state_dict().items()}
    assert {k: (tuple(v.shape), v.dtype) for k, v in flat.items()} == want
    ctrl.load_state_dict(flat, strict=True)
    assert all(torch.count_nonzero(m.up[0].weight) > 0 for m in ctrl.modules_dict.values())  # not a no-op


def test_dreamlite_mobile_layout_has_108_modules_and_38_on_the_down_blocks():
    """dreamlite-lllite's README: 108 modules (72 self-attention q/k/v, 36 cross-attention q) on
    DreamLite-mobile; the paper's runtime hooks the 38 of its down blocks."""
    import diffusers

    with torch.device("meta"):
        mobile = diffusers.DreamLiteUNetModel(**DREAMLITE_MOBILE_UNET)
    assert round(sum(p.numel() for p in mobile.parameters()) / 1e9, 2) == 0.39
    hooks = synth_hooks(mobile, blocks="all")
    assert len(hooks) == len(lllite_targets(mobile)) == 108
    kinds = {}
    for h in hooks:
        kind = h.path.rsplit(".", 2)[-2] + "." + h.path.rsplit(".", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == {"attn1.to_q": 24, "attn1.to_k": 24, "attn1.to_v": 24, "attn2.to_q": 36}  # 72 + 36 (README)
    plans, cond_hw = plan_hooks(mobile, hooks, (512, 512), edit_layout=True, blocks="down")
    assert len(plans) == 38 and cond_hw == (512, 512)  # the released file's 512 conditioning images
    assert {p.grid for p in plans} == {(64, 64), (32, 32), (16, 16)}
    assert {(p.level, p.hook.strides) for p in plans} == {(0, (4, 2)), (1, (4, 4)), (2, (4, 4, 2))}


# -- one clear line for every bad file ----------------------------------------------------------
def _rewrite(path, edit, metadata=None):
    flat = load(path.read_bytes())
    with safe_open(str(path), "pt") as f:
        md = dict(f.metadata() or {})
    edit(flat)
    md.update(metadata or {})
    save_file(flat, str(path), md)


def _first(flat, suffix):
    return next(k for k in sorted(flat) if k.endswith(suffix))


@pytest.mark.parametrize("case,match", [
    ("truncated", "not a readable .safetensors file"),
    ("huge header", "not a readable .safetensors file"),
    ("unknown key", "'modules_dict.+' is not a ControlNet-LLLite tensor|not a ControlNet-LLLite key"),
    ("stray key", "'optimizer.step' is not a ControlNet-LLLite key"),
    ("missing tensor", "lacks mid.0.bias"),
    ("wrong shape", r"up.0.weight has shape \(32, 7\), but .* needs \(32, 64\)"),
    ("unknown module", "names no ControlNet-LLLite target"),
    ("int tensor", "holds torch.int32"),
    ("metadata dims", r"mid.0.weight has shape \(64, 96\), but .* needs \(64, 80\)"),
    ("metadata not a number", "cond_emb_dim is 'thirty-two'"),
    ("cond_image_size", "cond_image_size 100 is not a multiple of .* block size"),
    ("empty", "holds no tensors"),
])
def test_bad_files_fail_with_one_clear_line(unet, upstream, tmp_path, case, match):
    _, path = upstream
    data = path.read_bytes()
    if case == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif case == "huge header":
        path.write_bytes(struct.pack("<Q", 2 ** 63 + 5) + data[8:])
    elif case == "unknown key":
        _rewrite(path, lambda f: f.update({"modules_dict.x.down.0.weight.extra": torch.zeros(1)}))
    elif case == "stray key":
        _rewrite(path, lambda f: f.update({"optimizer.step": torch.zeros(1)}))
    elif case == "missing tensor":
        _rewrite(path, lambda f: f.pop(_first(f, "mid.0.bias")))
    elif case == "wrong shape":
        _rewrite(path, lambda f: f.update({_first(f, "up.0.weight"): torch.zeros(32, 7)}))
    elif case == "unknown module":
        _rewrite(path, lambda f: f.update({"modules_dict.down_blocks__9__attn1__to_q.up.0.bias": torch.zeros(4)}))
    elif case == "int tensor":
        _rewrite(path, lambda f: f.update({_first(f, "down.0.bias"): torch.zeros(64, dtype=torch.int32)}))
    elif case == "metadata dims":
        _rewrite(path, lambda f: None, {"cond_emb_dim": "16"})
    elif case == "metadata not a number":
        _rewrite(path, lambda f: None, {"cond_emb_dim": "thirty-two"})
    elif case == "cond_image_size":
        _rewrite(path, lambda f: None, {"cond_image_size": "100"})
    elif case == "empty":
        save_file({}, str(path))
    with pytest.raises(ModelLoadError, match=match) as info:
        read_lllite(path, unet)
    assert "\n" not in str(info.value)


def test_a_file_for_another_u_net_names_the_module_and_both_shapes(unet, tmp_path):
    import diffusers

    from node_server.models.synthetic import unet_config

    wider = diffusers.DreamLiteUNetModel(**dict(unet_config("tiny"), block_out_channels=(48, 96)))
    ctrl = UpstreamController(wider, cond_image_size=H, sample_size=H // 8).randomize(0)
    save_like_upstream(ctrl, tmp_path / "wider.safetensors")
    with pytest.raises(ModelLoadError, match=r"module down_blocks__0__attentions__0__transformer_blocks__0__attn2__to_q: "
                                             r"down.0.weight has shape \(64, 48\), but down_blocks.0.attentions.0."
                                             r"transformer_blocks.0.attn2.to_q of this U-Net .* needs \(64, 32\)"):
        read_lllite(tmp_path / "wider.safetensors", unet)


def test_placing_errors_name_the_cause(unet):
    hooks = synth_hooks(unet, blocks="all")
    with pytest.raises(ParamError, match="frame size 40x40 is not a multiple of 16"):
        plan_hooks(unet, hooks, (40, 40), edit_layout=True)
    odd = copy.copy(hooks[0])  # a level-0 hook whose CNN downsamples by 16: needs a 128 image, the rest 64
    odd.tensors = dict(hooks[0].tensors, **{"conditioning1.2.weight": torch.zeros(32, 16, 4, 4)})
    with pytest.raises(ParamError, match="disagree on the conditioning image: .* needs 128x128"):
        LLLite(unet, [odd] + hooks[1:], (H, H), edit_layout=True, max_rows=2)
    assert not any(type(m).__name__ == "LLLiteProjection" for m in unet.modules())


def test_commands_refuse_a_bad_file_in_one_line_before_loading(tmp_path, capsys):
    bad = tmp_path / "half.safetensors"
    good = save({"modules_dict.a.up.0.weight": torch.zeros(4, 4)})
    bad.write_bytes(good[: len(good) - 9])
    for argv in (["render", str(tmp_path), str(tmp_path / "o"), "--prompt", "x", "--lllite", str(bad)],
                 ["serve", "--model", "synthetic:tiny", "--lllite", str(bad)]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "not a readable .safetensors file" in err, err


# -- property test (the fuzz target, bounded, structural cases) ---------------------------------
def _fuzz_target():
    spec = importlib.util.spec_from_file_location("lllite_fuzz_target", ROOT / "tools/fuzz_targets/lllite_file.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FUZZ = _fuzz_target()
SEEDS = FUZZ.seed_inputs()


def test_the_fuzz_seeds_load_and_build():
    from node_server.models.lllite_file import parse_lllite as parse

    (dreamlite_unet, _), (sd_unet, _) = FUZZ._unets()
    assert len(LLLite(dreamlite_unet, parse(SEEDS[0], dreamlite_unet), (64, 64), edit_layout=True,
                      max_rows=1).modules) == 19
    assert len(parse(SEEDS[1], sd_unet)) > 0


def _mutate(data: bytes, how: int, at: int, value: int) -> bytes:
    """Structural damage: truncation, a header length that is huge, negative (as a signed
    u64), zero or past the end, and header bytes overwritten."""
    n = len(data)
    if how == 0:
        return data[: at % (n + 1)]
    if how == 1:
        return struct.pack("<Q", value % 2 ** 64) + data[8:]
    if how == 2:
        return struct.pack("<q", -(value % 2 ** 63) - 1) + data[8:]
    if how == 3:
        header = int.from_bytes(data[:8], "little")
        i = 8 + at % max(1, header)
        return data[:i] + bytes([value % 256]) + data[i + 1:]
    return struct.pack("<Q", n + value % 1000) + data[8:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1), how=st.integers(0, 4), at=st.integers(0, 2 ** 20), value=st.integers(0, 2 ** 64))
def test_damaged_bytes_never_escape_as_anything_but_a_clear_error(seed, how, at, value):
    FUZZ.fuzz_one(_mutate(SEEDS[seed], how, at, value))


_TENSOR_NAMES = st.sampled_from(["conditioning1.0.weight", "conditioning1.0.bias", "conditioning1.2.weight",
                                 "conditioning1.4.weight", "conditioning1.1.weight", "conditioning1.9.bias",
                                 "down.0.weight", "down.1.weight", "mid.0.bias", "up.0.weight", "up.0.bias"])
# up to two dims, then maybe a kernel's two (at most ~120k elements: the loader's work, not memory)
_SHAPES = st.tuples(st.lists(st.integers(0, 70), max_size=2),
                    st.sampled_from([(), (1, 1), (2, 2), (3, 3), (4, 4), (5, 4)])).map(lambda p: tuple(p[0]) + p[1])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_edited_tensors_and_metadata_load_or_fail_clearly(data):
    """Keys removed, added or renamed, tensors reshaped or retyped, metadata rewritten: the loader
    either accepts a file whose every shape fits, or says what is wrong in one line."""
    (unet, _), _ = FUZZ._unets()
    flat = load(SEEDS[0])
    keys = sorted(flat)
    edits = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=4))
    for edit in edits:
        key = data.draw(st.sampled_from(keys))
        if edit == 0 and key in flat:
            del flat[key]
        elif edit == 1:
            shape = data.draw(_SHAPES)
            flat[key] = torch.zeros(shape, dtype=data.draw(st.sampled_from([torch.float32, torch.float16,
                                                                            torch.bfloat16, torch.int64])))
        elif edit == 2:
            module = key.split(".")[1]
            flat[f"modules_dict.{module}.{data.draw(_TENSOR_NAMES)}"] = torch.zeros(data.draw(_SHAPES))
        elif edit == 3:
            flat[data.draw(st.text(min_size=1, max_size=30))] = torch.zeros(1)
        else:
            module = data.draw(st.sampled_from([k.split(".")[1] for k in keys]))
            for k in [k for k in flat if k.startswith(f"modules_dict.{module}.")]:
                del flat[k]
    metadata = data.draw(st.dictionaries(st.sampled_from(["cond_emb_dim", "mlp_dim", "cond_image_size", "kind"]),
                                         st.one_of(st.text(max_size=12), st.integers(-5, 10 ** 12).map(str)),
                                         max_size=3))
    blob = save(flat, metadata=metadata)
    FUZZ.fuzz_one(blob)
    try:
        hooks = parse_lllite(blob, unet)
    except NodeServerError as exc:
        assert "\n" not in str(exc)
        return
    # accepted: every hook's tensors are exactly what the module it hooks needs (builds without error)
    for h in hooks:
        assert h.path in lllite_targets(unet)
    if hooks:
        try:
            LLLite(unet, hooks, (64, 64), edit_layout=True, max_rows=1).detach()
        except ParamError:
            pass
