"""bench.run's levers for the GPU session (variants, time limit, Inductor settings, SM partition,
encoder device) exercised on the CPU with the tiny model; figures from it mean nothing."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bench.kernel_profile import format_profile, kind_of
from bench.run import Variant, main, variants


def _args(**kw):
    base = dict(compile="default", encoder_size="512", encoder_device="same", encoder_sms="all", channels_last=False,
                unet_compile_mode=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_variants_are_every_combination_with_a_label_each():
    vs = variants(_args(compile="default,graphs+cl", encoder_size="512,256", encoder_device="same,cuda:1",
                        encoder_sms="all,33", unet_compile_mode="max-autotune-no-cudagraphs"))
    assert len(vs) == 16
    assert vs[0] == Variant("default", False, 512, None, None, "max-autotune-no-cudagraphs")
    assert vs[0].label == "default unet=max-autotune-no-cudagraphs"
    assert Variant("graphs", True, 256, "cuda:1", 33).label == "graphs+cl encdev=cuda:1 sms=33"
    assert {v.channels_last for v in vs if v.compile == "graphs"} == {True}
    assert variants(_args(channels_last=True))[0].channels_last
    opts = Variant("default", encoder_size=256, encoder_device="cuda:1").engine_options()
    assert opts == dict(compile="default", encoder_image_size=256, encoder_device="cuda:1", unet_compile_mode=None)


def test_attention_and_fp8_levers_combine_and_reach_the_engine():
    vs = variants(_args(attention="fold,pad", fp8="off,on"))
    assert [(v.attention, v.fp8) for v in vs] == [("fold", False), ("fold", True), ("pad", False), ("pad", True)]
    assert [v.label for v in vs] == ["default", "default fp8", "default attn=pad", "default attn=pad fp8"]
    assert vs[3].engine_options()["attention"] == "pad" and vs[3].engine_options()["fp8"] is True
    assert "fp8" not in vs[0].engine_options() and "attention" not in vs[0].engine_options()


COMMON = ["--model", "synthetic:tiny", "--frames", "2", "--device", "cpu", "--compile", "off", "--no-breakdown",
          "--size", "64", "--encoder-size", "64", "--compare", "none"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))


def _rows(folder):
    [path] = folder.glob("*.json")
    return json.loads(path.read_text())


def test_time_limit_stops_new_points_and_keeps_the_file(tmp_path, capsys):
    assert main(COMMON + ["--points", "I,S", "--time-limit", "0.001", "--out", str(tmp_path)]) == 0
    assert "time limit reached" in capsys.readouterr().out
    assert _rows(tmp_path)["rows"] == []


def test_encoder_device_and_sm_partition_rows(tmp_path, capsys):
    assert main(COMMON + ["--points", "I", "--encoder-device", "cpu", "--encoder-sms", "8", "--out", str(tmp_path)]) == 0
    [row] = _rows(tmp_path)["rows"]
    assert row["compile"] == "off encdev=cpu sms=8" and row["frames"] == 2
    assert row["encoder_sm_partition"] == "not a CUDA device"  # the CPU keeps its plain stream


def test_inductor_settings_are_applied_and_recorded(tmp_path):
    import torch._inductor.config as config

    # saved and put back by hand: monkeypatch's undo would delete the settings from the config module
    saved = config.freezing, config.coordinate_descent_tuning
    try:
        assert main(COMMON + ["--points", "I", "--inductor", "freezing=true", "--inductor",
                              "coordinate_descent_tuning=1", "--out", str(tmp_path)]) == 0
        assert config.freezing is True and config.coordinate_descent_tuning == 1
        meta = _rows(tmp_path)["meta"]
        assert meta["inductor.freezing"] is True and meta["inductor_cache"] == str((tmp_path / "cache").resolve())
        with pytest.raises(SystemExit, match="no 'no_such_knob'"):
            main(COMMON + ["--points", "I", "--inductor", "no_such_knob=1", "--out", str(tmp_path / "x")])
        with pytest.raises(SystemExit, match="KEY=VALUE"):
            main(COMMON + ["--points", "I", "--inductor", "freezing", "--out", str(tmp_path / "y")])
    finally:
        config.freezing, config.coordinate_descent_tuning = saved


def test_kernel_kinds_and_the_printed_profile():
    assert kind_of("void cutlass::Kernel<cutlass_80_wmma_tensorop_bf16_s161616gemm>") == "matmul"
    assert kind_of("fmha_cutlassF_bf16_aligned_64x64_rf_sm80") == "attention"
    assert kind_of("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kind_of("triton_per_fused_native_group_norm_silu_3") == "norm (triton)"
    assert kind_of("triton_poi_fused_add_mul_7") == "triton fused"
    assert kind_of("Memcpy DtoD (Device -> Device)") == "copy / cast"
    assert kind_of("some_kernel") == "other"
    text = format_profile("U-Net step, batch 1", {"kernel_ms_per_call": 5.1, "kinds": {"convolution": 0.5, "other": 0.5},
                                                   "top": [["k1", 1.0, 0.2]]})
    assert text.splitlines()[0] == "U-Net step, batch 1: 5.1 ms of kernels per call; by kind: convolution 50%, other 50%"
    assert "k1" in text.splitlines()[1]
