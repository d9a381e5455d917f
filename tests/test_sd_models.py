"""SD-class models: synthetic builds with SD-Turbo's real shapes, the offline CLIP tokenizer,
`synth-model` folders that load back offline (ours and diffusers' StableDiffusionPipeline)."""

from __future__ import annotations

import json

import pytest
import torch

from node_server.errors import ModelLoadError
from node_server.models import SDBundle, build_synthetic_sd, load_model
from node_server.models.sd import build_clip_tokenizer, is_sd_folder


def test_sd_turbo_has_the_published_shapes():
    bundle = build_synthetic_sd("sd-turbo", device="meta")
    counts = bundle.parameter_counts()
    assert counts["unet"] == 865_910_724  # SD 2.1 base / sd-turbo U-Net
    assert counts["text_encoder"] == 340_387_840  # OpenCLIP ViT-H text tower, 23 layers
    te, unet = bundle.text_encoder.config, bundle.unet.config
    assert (te.hidden_size, te.num_hidden_layers, te.num_attention_heads, te.intermediate_size) == (1024, 23, 16, 4096)
    assert (te.hidden_act, te.max_position_embeddings, te.vocab_size) == ("gelu", 77, 49408)
    assert unet.cross_attention_dim == 1024 and list(unet.attention_head_dim) == [5, 10, 20, 20]
    assert unet.use_linear_projection and list(unet.block_out_channels) == [320, 640, 1280, 1280]
    assert type(bundle.vae).__name__ == "AutoencoderTiny"  # TAESD shape: library defaults
    assert list(bundle.vae.config.encoder_block_out_channels) == [64, 64, 64, 64]
    assert type(bundle.scheduler).__name__ == "EulerDiscreteScheduler"
    assert bundle.scheduler.config.timestep_spacing == "trailing"
    kl = build_synthetic_sd("sd-turbo-kl", device="meta")
    assert type(kl.vae).__name__ == "AutoencoderKL" and kl.vae.config.scaling_factor == 0.18215


def test_same_seed_same_weights_and_different_seed_differs():
    a, b, c = (build_synthetic_sd("sd-turbo-tiny", seed=s) for s in (0, 0, 1))
    wa, wb, wc = (next(x.unet.parameters()) for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_clip_tokenizer_pads_to_77_and_round_trips():
    tok = build_clip_tokenizer()
    ids = tok(["a neon city at night", "x"], padding="max_length", max_length=77, truncation=True).input_ids
    assert all(len(row) == 77 for row in ids)
    assert ids[0][0] == tok.bos_token_id and tok.eos_token_id in ids[0]
    assert ids[0] != ids[1]
    assert tok.decode(ids[0], skip_special_tokens=True).strip() == "a neon city at night"


def test_load_model_synthetic_sd_is_the_sd_family():
    bundle = load_model("synthetic:sd-turbo-tiny", device="cpu", progress=False)
    assert isinstance(bundle, SDBundle) and bundle.family == "sd" and bundle.dtype == torch.float32
    with pytest.raises(ModelLoadError, match="synthetic:sd-turbo"):
        load_model("synthetic:sd-nope", device="cpu", progress=False)


def test_synth_model_folder_loads_back_offline(tmp_path, capsys, monkeypatch):
    from node_server.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / "sdt"
    assert main(["synth-model", str(target), "--size", "sd-turbo-tiny", "--seed", "3"]) == 0
    assert "load it with: --model" in capsys.readouterr().out
    assert is_sd_folder(target)
    index = json.loads((target / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["vae"] == ["diffusers", "AutoencoderTiny"]
    loaded = load_model(str(target), device="cpu", progress=False)
    built = build_synthetic_sd("sd-turbo-tiny", seed=3)
    assert isinstance(loaded, SDBundle)
    for name, module in built.modules().items():
        mine = dict(loaded.modules()[name].state_dict())
        for key, value in module.state_dict().items():
            assert torch.equal(mine[key], value), f"{name}.{key}"
    assert loaded.tokenizer("a cat").input_ids == built.tokenizer("a cat").input_ids
    # the same folder is a diffusers pipeline folder
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(target, local_files_only=True)
    assert type(pipe.vae).__name__ == "AutoencoderTiny"


def test_incomplete_sd_folder_is_explained(tmp_path):
    from node_server.models.sd import write_sd_model_folder

    target = tmp_path / "broken"
    write_sd_model_folder(target, "sd-turbo-tiny")
    import shutil

    shutil.rmtree(target / "unet")
    with pytest.raises(ModelLoadError, match="missing the component subfolder"):
        load_model(str(target), device="cpu", progress=False)


def test_an_sd_folder_takes_its_node_server_json_defaults_and_max_strength(tmp_path, caplog):
    """An SD folder's node_server.json works as a DreamLite folder's does: parameter defaults, and a
    max_strength that a higher request runs at (said once, in the log)."""
    import logging

    import numpy as np

    from node_server.engine.factory import build_engine
    from node_server.models.sd import write_sd_model_folder

    target = tmp_path / "sdt"
    write_sd_model_folder(target, "sd-turbo-tiny")
    (target / "node_server.json").write_text(json.dumps({"defaults": {"strength": 0.5}, "max_strength": 0.7}))
    bundle = load_model(str(target), device="cpu", progress=False)
    assert bundle.defaults == {"strength": 0.5} and bundle.max_strength == 0.7
    frame = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    outs = {}
    with build_engine(bundle, size=64) as eng:
        assert eng.params.strength == 0.5  # the folder's default
        eng.set_params(prompt="a cat")
        for strength in (0.7, 0.4, 1.0):
            with caplog.at_level(logging.INFO, logger="node_server.engine"):
                caplog.clear()
                eng.set_params(strength=strength)
                assert ("above this model's max_strength 0.7" in caplog.text) == (strength > 0.7)
                assert eng.params.strength == min(strength, 0.7)  # the value shown is the one that runs
            for _ in range(3):  # past the first conditioning
                outs[strength] = eng.step([frame], [0])[0].image.astype(int)
    assert np.array_equal(outs[1.0], outs[0.7])
    assert np.abs(outs[0.4] - outs[0.7]).mean() > 0.5
